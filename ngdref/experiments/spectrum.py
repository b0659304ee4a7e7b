"""Top eigenvalues of G, G⁻¹F or Θ̄ for one approximation (``ngdref spectrum``; Eq. 11–12).

The parameter-space view of the isotropic condition: G⁻¹F (F = JᵀJ/N, MSE) and Θ̄(x, x) =
J G⁻¹ Jᵀ/N share their nonzero eigenvalues, so Θ̄ = αI (Eq. 12) says that the nonzero spectrum
of G⁻¹F is α·1 (condition number 1). Its top-k eigenvalues come from Lanczos/Arnoldi on the
matrix-free operator (:mod:`ngdref.fisher.operators`, never forming G or J); ``of="theta-bar"``
takes the CN × CN matrix Θ̄ from ``coefficient`` instead, ``of="G"`` the damped G itself.
"""

from __future__ import annotations

import time

import numpy as np

from ..backend import Backend, to_device
from ..diagnostics import eigenvalues
from ..errors import ConfigError
from ..fisher import fisher_class
from ..fisher.operators import FisherOperator, max_eigenvalues, top_eigenvalues
from ..network import Network

#: what ``spectrum`` can measure
SPECTRA = ("G-inverse-F", "G", "theta-bar")

STATEMENT = ("for an isotropic approximation (Eq. 12, Θ̄(x, x) = αI) the nonzero spectrum of G⁻¹F, which is "
             "that of Θ̄(x, x) (Eq. 11), is α·1: condition number 1")


#: eigenvalues reported when ``top`` is not given (at most CN for G⁻¹F and Θ̄)
DEFAULT_TOP = 5

#: ARPACK's relative tolerance on the Ritz values: 1e-10 is far below the 1e-8 at which the statement is
#: judged (λ/α = 1) and needs ~3.5× fewer operator products than machine precision (tol = 0): bd at M = 512,
#: N = 100, top 5: 32 products instead of 113 (each G⁻¹F product runs the structured ``precondition``)
ARNOLDI_TOL = 1e-10

#: most eigenvalues asked of Lanczos/Arnoldi (``of`` = G, G-inverse-F): ARPACK's cost grows like k²·P
#: plus ~2k operator products per restart, so k = 1000 at the paper's width runs for many minutes
MAX_LANCZOS_TOP = 200


def check_request(network: Network, n_samples: int, of: str, top: int | None) -> int:
    """The number of eigenvalues to compute (``top``; ``None``: :data:`DEFAULT_TOP`, at most CN where the
    nonzero spectrum has CN values); ConfigError before any work for an unknown ``of`` or a ``top``
    Lanczos cannot give."""
    if of not in SPECTRA:
        raise ConfigError(f"--of must be one of {', '.join(SPECTRA)}, got {of!r}")
    cn = network.n_outputs * int(n_samples)
    if top is None:
        return DEFAULT_TOP if of == "G" else min(DEFAULT_TOP, cn)
    if top < 1:
        raise ConfigError(f"--top must be >= 1, got {top}")
    if of != "G" and top > cn:
        raise ConfigError(f"--top {top} exceeds the CN = {cn} nonzero eigenvalues of {of} (C = "
                          f"{network.n_outputs}, N = {n_samples}); use --top {cn} or fewer")
    most = max_eigenvalues(network.n_params)
    if of != "theta-bar" and top > most:  # both Lanczos kinds (G and G⁻¹F) act on P-vectors
        how = f"P − 2 = {most}" if most < network.n_params else f"P = {most}"
        raise ConfigError(f"--top {top}: at most {how} eigenvalues of {of} exist to compute; use --top {most} or "
                          f"fewer" + ("" if of == "G" else " or --of theta-bar"))
    if of != "theta-bar" and top > MAX_LANCZOS_TOP:
        hint = "" if of == "G" else " or --of theta-bar for the whole nonzero spectrum (eigh of the CN × CN Θ̄)"
        raise ConfigError(f"--top {top}: Lanczos/Arnoldi for more than {MAX_LANCZOS_TOP} eigenvalues runs for many "
                          f"minutes at this size; use --top {MAX_LANCZOS_TOP} or fewer{hint}")
    return int(top)


def eigenvalues_over_alpha(eigenvalues, alpha: float | None) -> list:
    """λ_k/α for each eigenvalue (None entries without an analytic α)."""
    return [None if not alpha else float(v) / float(alpha) for v in eigenvalues]


def spectrum_report(network: Network, fim_name: str, x_host: np.ndarray, seed: int, backend: Backend,
                    of: str = "G-inverse-F", top: int | None = None, damping: float | None = None,
                    fim_options: dict | None = None) -> dict:
    """The ``top`` eigenvalues of largest magnitude of ``of`` (descending) on the training inputs, with
    α (analytic where the paper gives one), λ/α, max|λ/α − 1| and ``top_ratio`` = λ₁/λ_k of the k computed.
    ``condition_number`` (λ_max/λ_min of the nonzero spectrum) only when k = CN, the whole nonzero spectrum
    of G⁻¹F or Θ̄ (None otherwise: the top k cannot bound the smallest nonzero eigenvalue; ask for
    ``top`` = CN, or ``of="theta-bar"``, for the condition number)."""
    n = int(x_host.shape[0])
    top = check_request(network, n, of, top)
    fim = fisher_class(fim_name)(network, damping, **(fim_options or {}))
    params = network.init(seed, backend)
    t0 = time.perf_counter()
    signals = network.signals(params, to_device(x_host, backend))
    if of == "theta-bar":
        ev = eigenvalues(fim.coefficient(signals))
        ev = ev[np.argsort(-np.abs(ev), kind="stable")][:top]
        method = "eigh of Θ̄(x, x) from coefficient (CN × CN)"
    else:
        op = FisherOperator(fim, signals, of)
        ev = top_eigenvalues(op, top, tol=ARNOLDI_TOL, seed=seed)
        method = "Lanczos (scipy eigsh) on the matrix-free G" if of == "G" else \
            "Arnoldi (scipy eigs) on the matrix-free G⁻¹F (not symmetric)"
    seconds = time.perf_counter() - t0
    ev = np.sort(np.asarray(ev, dtype=np.float64))[::-1]
    alpha = fim.analytic_alpha(n) if of != "G" else None
    lo, hi = float(ev[-1]), float(ev[0])
    whole = of != "G" and top == network.n_outputs * n
    record = {
        "fim": fim.name,
        "of": of,
        "width": network.widths[1],
        "depth": network.depth,
        "n_params": network.n_params,
        "n_samples": n,
        "damping": fim.damping,
        "top": int(top),
        "eigenvalues": [float(v) for v in ev],
        # λ₁/λ_k of the k computed: the condition number only when they are the whole nonzero spectrum
        # (k = CN); with k < CN the smallest nonzero eigenvalue is not computed, so it is not claimed
        "top_ratio": hi / lo if lo > 0 else float("inf"),
        "condition_number": (hi / lo if lo > 0 else float("inf")) if whole else None,
        "eigenvalues_over_alpha": eigenvalues_over_alpha(ev, alpha),
        "method": method,
        "tolerance": ARNOLDI_TOL if of != "theta-bar" else None,
        "alpha_analytic": alpha,
        "max_relative_deviation_from_alpha": (float(np.max(np.abs(ev / alpha - 1.0))) if alpha else None),
        "isotropic_in_paper": bool(fim.spec.isotropic and alpha is not None),
        "alpha_note": fim.alpha_note(),
        "seconds": seconds,
    }
    if of != "G":
        record["statement"] = STATEMENT
        record["whole_nonzero_spectrum"] = bool(whole)
    return record
