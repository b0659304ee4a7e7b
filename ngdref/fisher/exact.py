"""Plain gradient descent (G = I) and exact NGD (G = F + ρI, Eq. 8–9)."""

from __future__ import annotations

import numpy as np

from ..backend import namespace_of, to_host
from ..errors import ConfigError
from ..jacobian import vjp
from ..linalg import damped_solve
from ..ntk import structured_ntk
from .base import FisherApproximation


def ntk_from_signals(signals, signals_prime=None):
    """Θ(x′, x) = Σ_l Θ_l(x′, x) from signals (S.68)."""
    sp = signals if signals_prime is None else signals_prime
    return structured_ntk(sp, signals)


class GradientDescent(FisherApproximation):
    """G = I: Δθ = ∇_θL (Eq. 4) and Θ̄ = Θ, the NTK (Eq. 5–6). Not isotropic; no α."""

    name = "gd"
    summary = "plain gradient descent, G = I (the NTK dynamics, Eq. 5)"
    equation = "Eq. 4-6"

    def __init__(self, network, damping: float = 0.0, rtol=None):
        if damping:
            raise ConfigError("gd uses G = I; damping does not apply (use --damping 0)")
        super().__init__(network, 0.0, rtol)

    def alpha_note(self) -> str:
        return "GD is not isotropic; its learning rate comes from λ_max(Θ) (LeCun et al.)"

    def precondition(self, signals, v):
        return vjp(signals, v / signals.n)  # scale the CN vector, not P parameters

    def coefficient(self, signals, signals_prime=None):
        return ntk_from_signals(signals, signals_prime)

    def explicit_metric(self, params, x, signals=None):
        return np.eye(self.network.n_params)


class ExactFisher(FisherApproximation):
    """Exact NGD, G = JᵀJ/N + ρI (Eq. 8); ρ = 0 is the pseudo-inverse NGD of Eq. 9.

    Structured path by the push-through identity (Jᵀ J/N + ρI)⁻¹ Jᵀ = Jᵀ (J Jᵀ/N + ρI)⁻¹
    (Eq. 9, S.91): Δθ = Jᵀ (Θ + ρI)⁻¹ (f − y)/N and Θ̄(x′, x) = Θ(x′, x)(Θ + ρI)⁻¹,
    which at ρ = 0 is Eq. 13 (α = 1).
    """

    name = "exact"
    summary = "exact Fisher F = JᵀJ/N (+ρI); ρ = 0: pseudo-inverse NGD"
    equation = "Eq. 8-9, 13"
    supports_cross_entropy = True

    def analytic_alpha(self, n_samples):
        return 1.0

    def precondition(self, signals, v):
        xp = namespace_of(v)
        c, n = v.shape
        theta = ntk_from_signals(signals)
        vec = xp.reshape(v, (c * n, 1))
        if self.output_metric is not None:
            # cross-entropy (S.159): (JᵀΛ̃J/N + ρI)⁻¹Jᵀ = Jᵀ(Λ̃Θ + ρI)⁻¹; ρ = 0: Θ⁺Λ̃⁻¹
            w = self.output_metric
            if self.damping > 0:
                z = xp.linalg.solve(w @ theta + self.damping * xp.eye(c * n, dtype=theta.dtype), vec)
            else:
                z = damped_solve(theta, xp.linalg.solve(w, vec), 0.0, self.rtol)
        else:
            z = damped_solve(theta, vec, self.damping, self.rtol)
        return vjp(signals, xp.reshape(z, (c, n)) / n)

    def coefficient(self, signals, signals_prime=None):
        theta = ntk_from_signals(signals)
        cross = theta if signals_prime is None else ntk_from_signals(signals, signals_prime)
        xp = namespace_of(theta)
        rhs = xp.linalg.matrix_transpose(cross)
        # Θ(x′,x)(Θ+ρI)⁻¹ = [(Θ+ρI)⁻¹ Θ(x,x′)]ᵀ, Θ symmetric
        return xp.linalg.matrix_transpose(damped_solve(theta, rhs, self.damping, self.rtol))

    def explicit_metric(self, params, x, signals=None):
        self._check_explicit()
        j = self._explicit_jacobian(params, x, signals)
        w = np.eye(j.shape[0]) if self.output_metric is None else np.asarray(to_host(self.output_metric))
        return j.T @ w @ j / x.shape[0] + self.damping * np.eye(j.shape[1])
