"""The shared interface of every Fisher approximation G (Eq. 7–8, 11).

Every approximation offers two paths that must agree:

* the **structured path** (:meth:`FisherApproximation.precondition`,
  :meth:`direction`, :meth:`coefficient`) that works from the signals δ_l, a_{l−1}
  (S.64–S.68) with N×N or CN×CN matrices and never forms G (P×P) nor the full
  Jacobian J (CN×P);
* the **explicit oracle** (:meth:`explicit_metric`, :meth:`explicit_direction`,
  :meth:`explicit_coefficient`) that builds G literally from the explicit Jacobian
  and applies the formula: ``G⁺`` (``numpy.linalg.pinv``) at zero damping, a
  linear solve with ``G`` otherwise. Tiny networks only; it refuses (clear
  :class:`~ngdref.errors.MemoryLimitError`) before allocating what won't fit.

Conventions: the MSE loss L = ‖y − f‖²/(2N) (Eq. 3), so ∇_θL = Jᵀ(f − y)/N; the
natural-gradient direction is Δθ = G⁻¹∇_θL (Eq. 7) and the coefficient matrix
Θ̄(x′, x) = J(x′) G⁻¹ J(x)ᵀ / N (Eq. 11). Function-space vectors are (C, N)
arrays (output-major when flattened). ``damping`` ρ ≥ 0 enters G exactly once, as
in Eq. 8 (G = F + ρI) or as the paper's definition of the approximation says
(K-FAC, Eq. 20); ρ = 0 is the pseudo-inverse (zero-damping limit) with the
cut-off of :mod:`ngdref.linalg`.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from ..backend import namespace_of, to_host
from ..errors import ConfigError
from ..jacobian import jacobian, jvp
from ..memory import check_alloc
from ..network import Network, Signals


class FisherApproximation:
    """Base class. Subclasses implement :meth:`precondition`, :meth:`coefficient` and :meth:`explicit_metric`."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    #: equation of the approximation in the paper
    equation: ClassVar[str] = ""

    def __init__(self, network: Network, damping: float = 0.0, rtol: float | None = None):
        damping = float(damping)
        if not math.isfinite(damping) or damping < 0:
            raise ConfigError(f"damping must be a finite number >= 0, got {damping}")
        self.network = network
        self.damping = damping
        self.rtol = rtol
        #: Λ̃ = Λ(σ) + ρ̃I (CN × CN) for the cross-entropy FIM (S.159, S.164); None for MSE
        self.output_metric = None

    #: whether the approximation supports the cross-entropy FIM (Appendix D)
    supports_cross_entropy: ClassVar[bool] = False

    def set_output_metric(self, metric) -> None:
        """Use G = Jᵀ Λ̃ J/N + ρI (S.159) instead of the MSE FIM, with Λ̃ given as a (CN × CN) array."""
        if not self.supports_cross_entropy:
            raise ConfigError(
                f"'{self.name}' is implemented for the MSE loss only; the cross-entropy FIM "
                "(Appendix D) is available for exact and layer-wise approximations"
            )
        self.output_metric = metric

    # ---- description -------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"name": self.name, "damping": self.damping, "equation": self.equation, "summary": self.summary}

    def analytic_alpha(self, n_samples: int) -> float | None:
        """α of the isotropic condition Θ̄ = αI (Eq. 12) from the paper, or ``None`` where none is given."""
        return None

    def alpha_note(self) -> str:
        return ""

    # ---- structured path ---------------------------------------------------------------
    def precondition(self, signals: Signals, v) -> list:
        """G⁻¹ Jᵀ v / N for a function-space vector v of shape (C, N); per-layer θ_l-shaped arrays.

        The arrays returned are new (no views of signals or of cached state): callers such as
        :func:`ngdref.train.train` scale and apply them in place."""
        raise NotImplementedError

    def direction(self, params, x, y, signals: Signals | None = None) -> list:
        """Δθ = G⁻¹ ∇_θ L = G⁻¹ Jᵀ (f − y)/N (Eq. 7), per layer; ``y`` is (N, C)."""
        s = signals if signals is not None else self.network.signals(params, x)
        return self.precondition(s, (s.f - y).T)

    def coefficient(self, signals: Signals, signals_prime: Signals | None = None):
        """Θ̄(x′, x) = J(x′) G⁻¹ J(x)ᵀ / N (Eq. 11), (CN′, CN); x′ = x when ``signals_prime`` is None."""
        return self._coefficient_by_columns(signals, signals_prime)

    def coefficient_matrix(self, params, x, x_prime=None):
        """Convenience: Θ̄(x′, x) from parameters and inputs."""
        s = self.network.signals(params, x)
        sp = None if x_prime is None else self.network.signals(params, x_prime)
        return self.coefficient(s, sp)

    def _coefficient_by_columns(self, signals: Signals, signals_prime: Signals | None):
        """Generic Θ̄ from CN preconditioned columns: Θ̄[:, j] = J(x′) G⁻¹ J(x)ᵀ e_j / N."""
        sp = signals if signals_prime is None else signals_prime
        xp = namespace_of(signals.f)
        c, n = signals.f.shape[1], signals.n
        cols = []
        for j in range(c * n):
            e = xp.reshape(xp.astype(xp.arange(c * n) == j, signals.f.dtype), (c, n))
            cols.append(xp.reshape(jvp(sp, self.precondition(signals, e)), (-1,)))
        return xp.stack(cols, axis=1)

    # ---- explicit oracle ---------------------------------------------------------------
    def explicit_metric(self, params, x, signals: Signals | None = None):
        """G (P×P) built literally, damping included (host NumPy float64)."""
        raise NotImplementedError

    def _check_explicit(self) -> None:
        p = self.network.n_params
        check_alloc((p, p), 8, f"explicit metric G of '{self.name}'", count=3)

    def _explicit_jacobian(self, params, x, signals=None) -> np.ndarray:
        return np.asarray(to_host(jacobian(self.network, params, x, signals)), dtype=np.float64)

    def explicit_inverse(self, params, x, signals: Signals | None = None) -> np.ndarray:
        """G⁻¹ (ρ > 0) or G⁺ (ρ = 0), literally."""
        g = self.explicit_metric(params, x, signals)
        if self.damping > 0:
            return np.linalg.inv(g)
        rtol = self.rtol if self.rtol is not None else g.shape[0] * np.finfo(np.float64).eps
        return np.linalg.pinv(g, rtol=rtol, hermitian=True)

    def explicit_direction(self, params, x, y) -> np.ndarray:
        """G⁻¹ ∇_θ L as a flat host vector, from the explicit G and J."""
        s = self.network.signals(params, x)
        j = self._explicit_jacobian(params, x, s)
        resid = np.asarray(to_host(s.f - y), dtype=np.float64).T.reshape(-1)
        grad = j.T @ resid / s.n
        return self.explicit_inverse(params, x, s) @ grad

    def explicit_coefficient(self, params, x, x_prime=None) -> np.ndarray:
        """Θ̄(x′, x) = J(x′) G⁻¹ J(x)ᵀ / N, literally."""
        s = self.network.signals(params, x)
        j = self._explicit_jacobian(params, x, s)
        jp = j if x_prime is None else self._explicit_jacobian(params, x_prime)
        return jp @ self.explicit_inverse(params, x, s) @ j.T / s.n


def stack_layers(xp, blocks):
    """Concatenate per-layer parameter arrays into one flat vector (network order)."""
    return xp.concat([xp.reshape(b, (-1,)) for b in blocks])
