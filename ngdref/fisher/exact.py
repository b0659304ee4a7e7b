"""Plain gradient descent (G = I, Eq. 4–6) and exact NGD (G = F + ρI, Eq. 8–9, 13).

Exact NGD's structured path is the push-through identity
(JᵀJ/N + ρI)⁻¹ Jᵀ = Jᵀ (JJᵀ/N + ρI)⁻¹ (Eq. 9, S.91): Δθ = Jᵀ (Θ + ρI)⁻¹ (f − y)/N and
Θ̄(x′, x) = Θ(x′, x)(Θ + ρI)⁻¹, which at ρ = 0 is Eq. 13 (α = 1). With the cross-entropy
output metric Λ̃ (S.159): (JᵀΛ̃J/N + ρI)⁻¹Jᵀ = Jᵀ(Λ̃Θ + ρI)⁻¹; at ρ = 0, with J̃ = Λ̃^{1/2}J and
Θ̃ = Λ̃^{1/2}ΘΛ̃^{1/2}, G⁺Jᵀ = J̃ᵀΘ̃⁺Λ̃^{-1/2}·N/N = JᵀΛ̃^{1/2}Θ̃⁺Λ̃^{-1/2} (push-through holds for
the pseudo-inverse), which is S.165's Θ⁺Λ̃⁻¹ only when Θ is invertible.
"""

from __future__ import annotations

from ..backend import namespace_of
from ..dynamics import gd_learning_rate
from ..jacobian import jvp, vjp, vjp_factors
from ..kernels import check_pair, kernel_inverse_operator, right_solve
from ..linalg import damped_inverse, damped_solve, spd_sqrt
from ..ntk import structured_ntk
from . import cost
from .base import FisherApproximation, factor_product
from .spec import FisherSpec, register


def _gd_flops(s: cost.Shape, damping: float) -> dict:
    return cost.model((cost.vjp(s), "vjp"), (cost.layer_kernels(s), "kernels (Θ̄ = Θ)"))


def _exact_flops(s: cost.Shape, damping: float) -> dict:
    inv, cn = cost.inverse(damping), s.cn
    return cost.model(
        (cost.layer_kernels(s) + inv(cn) + 2.0 * cn**2 + cost.vjp(s), "kernels + pinv(CN) + matvec + vjp"),
        (cost.layer_kernels(s) + cost.pinv(cn) + 2.0 * cn**3, "kernels + pinv(CN) + Θ·Θ⁺"),
    )


@register
class GradientDescent(FisherApproximation):
    """G = I: Δθ = ∇_θL (Eq. 4) and Θ̄ = Θ, the NTK (Eq. 5–6). Not isotropic; no α."""

    spec = FisherSpec(
        name="gd", title="gradient descent", summary="plain gradient descent, G = I (the NTK dynamics, Eq. 5)",
        equations="Eq. 4-6", damping="none", isotropic=False, multi_output_alpha=False, flops=_gd_flops,
    )

    def alpha_note(self) -> str:
        return "GD is not isotropic; its learning rate comes from λ_max(Θ) (LeCun et al.)"

    def learning_rate(self, lr_scale, alpha, theta_bar):
        return lr_scale * gd_learning_rate(theta_bar), "c / λ_max(Θ) (LeCun et al.)"

    def precondition_factors(self, signals, v, output_metric=None):
        return vjp_factors(signals, v / signals.n)  # scale the CN vector, not P parameters

    def precondition(self, signals, v, output_metric=None):
        return factor_product(self.precondition_factors(signals, v, output_metric))

    def fisher_matvec(self, signals, v, cache=None):
        """G v = v (G = I, Eq. 4)."""
        return [1.0 * x for x in v]

    def inverse_matvec(self, signals, v, cache=None):
        """G⁻¹ v = v."""
        return [1.0 * x for x in v]

    def _theta_bar(self, s, s_prime):
        return structured_ntk(s if s_prime is None else s_prime, s)

    def analytic_theta_bar(self, cross, train, forster=False):
        """Θ̄(x′, x) = Θ(x′, x), the analytic NTK (S.169–S.170); its t → ∞ prediction
        Θ(x′, x)Θ⁻¹y (Eq. 5) equals exact NGD's."""
        check_pair(cross, train)
        return cross.ntk.copy()


@register
class ExactFisher(FisherApproximation):
    """Exact NGD, G = JᵀJ/N + ρI (Eq. 8); ρ = 0 is the pseudo-inverse NGD of Eq. 9."""

    spec = FisherSpec(
        name="exact", title="exact NGD", summary="exact Fisher F = JᵀJ/N (+ρI); ρ = 0: pseudo-inverse NGD",
        equations="Eq. 8-9, 13", cross_entropy=True, flops=_exact_flops,
    )

    def analytic_alpha(self, n_samples):
        return 1.0

    def precondition(self, signals, v, output_metric=None):
        return factor_product(self.precondition_factors(signals, v, output_metric))

    def precondition_factors(self, signals, v, output_metric=None):
        """Jᵀz/N per layer as :func:`~ngdref.jacobian.vjp_factors`, z = (Θ + ρI)⁻¹v (S.91; S.159 with Λ̃)."""
        xp = namespace_of(v)
        c, n = v.shape
        theta = structured_ntk(signals)
        vec = xp.reshape(v, (c * n, 1))
        if output_metric is not None:  # cross-entropy (S.159)
            w = output_metric
            if self.damping > 0:
                z = xp.linalg.solve(w @ theta + self.damping * xp.eye(c * n, dtype=theta.dtype), vec)
            else:  # G⁺: Λ̃^{1/2} Θ̃⁺ Λ̃^{-1/2}, exact also for a singular Θ
                half, inv_half = spd_sqrt(w)
                z = half @ damped_solve(half @ theta @ half, inv_half @ vec, 0.0, self.rtol)
        else:
            z = damped_solve(theta, vec, self.damping, self.rtol)
        return vjp_factors(signals, xp.reshape(z, (c, n)) / n)

    def fisher_matvec(self, signals, v, cache=None):
        """G v = Jᵀ(J v)/N + ρv (Eq. 8): one jvp and one vjp, no P×P matrix."""
        out = vjp(signals, jvp(signals, v) / float(signals.n))
        if self.damping > 0:
            for o, x in zip(out, v):
                o += self.damping * x
        return out

    def inverse_matvec(self, signals, v, cache=None):
        """G⁻¹ v on any v by the push-through / Woodbury identities with the N-sized Θ = JJᵀ/N:

        ρ > 0:  (JᵀJ/N + ρI)⁻¹ v = (v − Jᵀ(Θ + ρI)⁻¹ J v / N) / ρ;
        ρ = 0:  (JᵀJ/N)⁺ v = N J⁺J⁺ᵀ v = Jᵀ Θ⁺Θ⁺ J v / N   (J⁺ = Jᵀ(JJᵀ)⁺, JJᵀ = NΘ),

        Θ⁺ with the cut-off of :func:`ngdref.linalg.psd_pinv` (the one :meth:`precondition` uses).
        (Θ + ρI)⁻¹ or Θ⁺ is computed once per ``cache``."""
        xp = namespace_of(signals.f)
        cache = {} if cache is None else cache
        if "exact:dual" not in cache:
            cache["exact:dual"] = damped_inverse(structured_ntk(signals), self.damping, self.rtol)
        dual = cache["exact:dual"]
        u = jvp(signals, v)
        c, n = u.shape
        z = dual @ xp.reshape(u, (c * n, 1))
        if self.damping == 0:
            z = dual @ z
        out = vjp(signals, xp.reshape(z, (c, n)) / float(n))
        if self.damping == 0:
            return out
        return [(x - o) / self.damping for o, x in zip(out, v)]

    def _theta_bar(self, s, s_prime):
        theta = structured_ntk(s)
        cross = theta if s_prime is None else structured_ntk(s_prime, s)
        xp = namespace_of(theta)
        rhs = xp.linalg.matrix_transpose(cross)
        # Θ(x′,x)(Θ+ρI)⁻¹ = [(Θ+ρI)⁻¹ Θ(x,x′)]ᵀ, Θ symmetric
        return xp.linalg.matrix_transpose(damped_solve(theta, rhs, self.damping, self.rtol))

    def analytic_theta_bar(self, cross, train, forster=False):
        """Θ̄(x′, x) = Θ(x′, x) Θ⁻¹ (Eq. 13), α = 1, from the analytic NTK (Θ factored once per
        training set, :meth:`ngdref.kernels.AnalyticKernels.factor`)."""
        check_pair(cross, train)
        return right_solve(cross.ntk, train.factor())

    def analytic_theta_bar_train(self, train):
        """Θ̄(x, x) = Θ Θ⁻¹ (Eq. 13; = I up to rounding) as an operator v ↦ Θ(Θ⁻¹v), O(N²) per vector."""
        check_pair(train, train)
        return kernel_inverse_operator([(1.0, train.ntk, train.factor())], train.n)

    def analytic_theta_bar_operator(self, cross, train):
        """Θ̄(x′, x) = Θ(x′, x)Θ⁻¹ (Eq. 13) as r ↦ Θ(x′, x)(Θ⁻¹r): O(N² + N′N) per vector from Θ's factor,
        instead of the 2N²N′ triangular solves that form it (:meth:`analytic_theta_bar`)."""
        check_pair(cross, train)
        return kernel_inverse_operator([(1.0, cross.ntk, train.factor())], (cross.x1.shape[0], train.n))
