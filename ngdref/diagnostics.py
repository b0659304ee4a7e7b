"""Spectral diagnostics of kernels and coefficient matrices (isotropic condition, Eq. 12).

Θ̄ = αI holds exactly when all eigenvalues equal α; Fig. 3 measures the degree of
isotropy by the condition number λ_max/λ_min. Eigenvalues are computed on the
host after symmetrisation (the matrices are CN × CN, small).
"""

from __future__ import annotations

import numpy as np

from .backend import to_host


def eigenvalues(matrix) -> np.ndarray:
    """Ascending eigenvalues of the symmetric part of ``matrix`` (host float64)."""
    m = np.asarray(to_host(matrix), dtype=np.float64)
    return np.linalg.eigvalsh((m + m.T) / 2.0)


def isotropy(matrix, alpha: float | None = None) -> dict:
    """Eigenvalue summary of Θ̄(x, x): λ_min, λ_max, condition number, mean diagonal, ‖Θ̄/α − I‖₂.

    ``alpha`` defaults to the mean diagonal (the measured α).
    """
    m = np.asarray(to_host(matrix), dtype=np.float64)
    ev = eigenvalues(m)
    mean_diag = float(np.mean(np.diag(m)))
    ref = mean_diag if alpha is None else float(alpha)
    lam_min, lam_max = float(ev[0]), float(ev[-1])
    cond = lam_max / lam_min if lam_min > 0 else float("inf")
    dev = float(np.max(np.abs(ev / ref - 1.0))) if ref != 0 else float("inf")
    return {
        "lambda_min": lam_min,
        "lambda_max": lam_max,
        "condition_number": cond,
        "mean_diagonal": mean_diag,
        "alpha_reference": ref,
        "deviation_from_alpha_I": dev,
        "eigenvalues": ev,
    }
