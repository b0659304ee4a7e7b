"""K-FAC (Eq. 20, Section 4.3, B.3): one Kronecker-factored block per layer.

G_K-FAC,l = (B*_l + ρI) ⊗ (A*_{l−1} + ρI), with (S.95)

    A*_l = σ_w² h_lᵀ h_l / (N M_l) = āᵀā / N,      ā = σ_w h / √M   (N × M_l),
    B*_l = δ_lᵀ δ_l / N  (l < L),                  B*_L = I_C / N,

where δ_l is stacked over the C outputs (CN × M_l; for C = 1 exactly the paper's
N × M_l). The per-sample average in A*, B* is what makes α = NL (S.107) rather
than L. The output layer's B*_L = 1/N is the paper's convention (S.95).

Biases (σ_b > 0), two choices (B.3.3):

* ``bias="separate"`` (default, S.123): weights by K-FAC, biases by the usual FIM
  block ∇_{b_l}fᵀ∇_{b_l}f / N² + ρI per layer. Θ̄ is then *not* isotropic: the
  output-layer bias adds a rank-one 11ᵀ term (for C = 1), so no α is claimed;
* ``bias="folded"``: the bias is the last column of the Kronecker factor,
  ā = [σ_w h/√M, σ_b] (S.123, first paragraph: A_l → σ_w²A_l + σ_b²11ᵀ).

Structured path (S.96–S.103): with the dual Gram matrices B_l = δ_l δ_lᵀ (CN × CN) and
Ã_{l−1} = ā ā ᵀ (N × N) and the push-through identity,

    ΔW_l = δ_lᵀ (B_l/N + ρI)⁻¹ E_v (Ã_{l−1}/N + ρI)⁻¹ ā / N,     E_v = [diag(v_1); …; diag(v_C)],
    Θ̄_l(x′, x) = [B_l(x′,x)(B_l/N + ρI)⁻¹] ⊙ [1_C1_Cᵀ ⊗ Ã(x′,x)(Ã/N + ρI)⁻¹] / N,

(for the output layer δ_L(B*_L+ρ)⁻¹ is used directly), which at ρ = 0 is
N Σ_l 𝓑_l ⊙ 𝒜_{l−1} (S.105).

When α holds (C = 1, no separate bias blocks): α = NL needs d >= N first-layer input
dimensions (d = M0, or M0 + 1 with the bias folded; S.107). For d < N the first-layer factor
is the projection P′P⁺ (S.108) and Θ̄ is not isotropic (S.109) — unless the training inputs
are Forster-transformed (B.3.1(ii), :func:`ngdref.data.forster_transform`) and the network
has no bias, when α = N(L − 1) + M0 (S.110–S.111). The object cannot see its inputs, so it is
told: ``forster=True`` (``ngdref train --forster``) declares Forster-transformed inputs.
Without it :meth:`KFAC.analytic_alpha` is ``None`` for d < N and training refuses η = c/α
(:meth:`KFAC.step_needs_learning_rate`). C = 1 is what the paper covers; for C > 1 this is
the natural generalisation and no isotropy is claimed (α = None).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import linalg as sla

from ..backend import LINALG_ERRORS, namespace_of
from ..errors import ConfigError, NgdrefError
from ..kernels import check_pair, right_solve, spd_factor
from ..linalg import damped_inverse
from ..threads import map_on_threads
from . import cost
from .base import FisherApproximation, factor_product
from .spec import FisherOption, FisherSpec, register

BIAS_MODES = ("separate", "folded")


def kfac_alpha(n_train: int, depth: int, input_dim: int | None = None, bias: bool = False, forster: bool = False) -> float:
    """α of K-FAC (C = 1) on the training set.

    α = N L when the first-layer inputs have d >= N dimensions (d = M0, or M0 + 1 with the
    bias folded into the Kronecker factor, S.123): S.107. With Forster-transformed inputs,
    no bias and M0 < N: α = N(L − 1) + M0 (S.111). Otherwise (d < N without Forster) Θ̄ is
    not isotropic (S.109): NgdrefError. ``input_dim=None`` assumes d >= N.
    """
    n, L = int(n_train), int(depth)
    if n < 1:
        raise ConfigError(f"n_train must be positive, got {n_train}")
    if input_dim is None:
        return float(n * L)
    d = int(input_dim) + int(bool(bias))
    if d >= n:
        return float(n * L)
    if not forster or bias:
        raise NgdrefError(
            f"K-FAC with {d} first-layer input dimensions < N = {n} is not isotropic (S.109); "
            "use Forster-transformed inputs without bias (S.110–S.111)"
        )
    return float(n * (L - 1) + int(input_dim))


# --------------------------------------------------------------------------------------
# Infinite width (S.104–S.111, S.123)
# --------------------------------------------------------------------------------------
def _first_layer_factor(cross, train, with_bias: bool, forster: bool):
    """𝒜_0 = P′ P⁺ with P the first-layer inputs a_0 of the training set (rows), P′ of x′.

    This is a_0(x′)ᵀ (A*_0)⁺ a_0(x) / N, i.e. the ρ → 0 limit of the damped K-FAC factor:
    for N <= d (d = number of columns of P) it is Ã_0(x′, x) Ã_0⁻¹ (S.104); for N > d it is
    P′ (PᵀP)⁻¹ Pᵀ (S.108), which for Forster-transformed inputs (X̄ᵀX̄ = (N/M0) I, no
    bias) is (M0/N) X′ X̄ᵀ (S.110).
    """
    net = train.network
    n, m0 = train.n, net.input_dim

    def feats(x):
        a = net.sigma_w * x / math.sqrt(m0)
        return np.concatenate([a, np.full((x.shape[0], 1), net.sigma_b)], axis=1) if with_bias else a

    p, p_test = feats(train.x1), feats(cross.x1)
    if forster:
        if with_bias:
            raise ConfigError(
                "the Forster form S.110 is for networks without bias (σ_b² = 0); with the bias folded "
                "into the Kronecker factor the first-layer inputs are [σ_w x/√M0, σ_b] (S.123)"
            )
        if n <= m0:
            raise ConfigError(f"the Forster form S.110 is for M0 < N, got M0 = {m0} >= N = {n}")
        x = train.x1
        dev = np.max(np.abs(x.T @ x * (m0 / n) - np.eye(m0)))
        if dev > 1e-8:
            raise ConfigError(
                "training inputs are not Forster-transformed (need X̄ᵀX̄ = (N/M0) I with unit rows, "
                f"max deviation {dev:.2g}); pass X̄ = ngdref.data.forster_transform(x) as the training inputs"
            )
        return (m0 / n) * cross.x1 @ x.T  # S.110
    # ρ → 0 limit of the damped factor in every case: P′P⁺, which is Ã_0(x′,x)Ã_0⁻¹ for N <= d
    # with independent inputs (S.104) and P′(PᵀP)⁻¹Pᵀ for N > d (S.108). The pseudo-inverse
    # (SciPy's default cut-off max(N, d)·eps·σ_max) also covers inputs that are dependent or do
    # not span the input space (MNIST's always-zero border pixels), as the structured K-FAC does.
    return p_test @ sla.pinv(p)


def _gram_inverse_left(x, q, dual, c: float, rho: float):
    """(c QᵀQ + ρI)⁻¹ X (ρ > 0) or (c QᵀQ)⁺ X (ρ = 0) from the dual ``dual`` (see :meth:`KFAC.inverse_matvec`)."""
    qx = q @ x
    if rho > 0:
        out = q.T @ (-c * (dual @ qx))  # (X − c QᵀDQX)/ρ in place: no second X-sized temporary
        out += x
        out /= rho
        return out
    return q.T @ (c * (dual @ (dual @ qx)))


def _gram_inverse_right(x, q, dual, c: float, rho: float):
    """X (c QᵀQ + ρI)⁻¹ (ρ > 0) or X (c QᵀQ)⁺ (ρ = 0), the transpose of :func:`_gram_inverse_left`."""
    xq = x @ q.T
    if rho > 0:
        out = (-c * (xq @ dual)) @ q
        out += x
        out /= rho
        return out
    return (c * ((xq @ dual) @ dual)) @ q


def _kfac_layer_flops(s: cost.Shape, l: int, with_left: bool) -> float:
    """One K-FAC layer: δ-Gram + pinv (CN), ā-Gram + pinv (N)."""
    cn, n, fan, m = s.cn, s.n, s.fan(l), s.m(l)
    left = (2.0 * cn**2 * m + cost.pinv(cn)) if with_left else 0.0
    return left + 2.0 * n**2 * fan + cost.pinv(n)


def _flops(s: cost.Shape, damping: float) -> dict:
    cn, n, L = s.cn, s.n, s.depth
    direction = coefficient = 0.0
    for l in s.layers:
        fan, m = s.fan(l), s.m(l)
        grams = _kfac_layer_flops(s, l, l < L)
        # (Ã/N)⁺ ā, (B/N)⁺E_v · right, δᵀ (…)
        direction += grams + 2.0 * n**2 * fan + 2.0 * cn * n * fan + 2.0 * cn * m * fan
        coefficient += grams + 2.0 * cn**3 + 2.0 * n**3 + cn**2
    return cost.model(
        (direction, "per layer: δ-Gram + pinv(CN) + ā-Gram + pinv(N) + products of S.96–S.103"),
        (coefficient, "per layer: Grams + pinvs + two N³ products"),
    )


@register
class KFAC(FisherApproximation):
    spec = FisherSpec(
        name="kfac", title="K-FAC", summary="K-FAC (B*+ρI)⊗(A*+ρI) per layer (S.95); biases by the FIM block (S.123)",
        equations="Eq. 20-21, S.95-S.124", multi_output_alpha=False, flops=_flops,
        options=(FisherOption("bias", "bias handling: 'separate' FIM blocks (S.123) or 'folded' into the Kronecker "
                              "factor", choices=BIAS_MODES),
                 FisherOption("forster", "'yes': the training inputs are Forster-transformed (B.3.1(ii), S.110), "
                              "so α = N(L−1)+M0 for M0 < N without bias (S.111)", parse=lambda v: v == "yes",
                              choices=("yes", "no"))),
    )

    def __init__(self, network, damping: float | None = None, rtol=None, bias: str = "separate", forster: bool = False):
        super().__init__(network, damping, rtol)
        if bias not in BIAS_MODES:
            raise ConfigError(f"unknown K-FAC bias handling {bias!r}; choose one of {', '.join(BIAS_MODES)}")
        self.bias = bias
        if not isinstance(forster, (bool, np.bool_)):
            raise ConfigError(f"forster must be True or False (the inputs are Forster-transformed or not), got {forster!r}")
        self.forster = bool(forster)

    def to_dict(self):
        return {**super().to_dict(), "bias": self.bias, "forster": self.forster}

    @property
    def _separate_bias(self) -> bool:
        return self.network.has_bias and self.bias == "separate"

    @property
    def _first_layer_dims(self) -> int:
        """d, the columns of the first-layer Kronecker factor ā_0: M0, plus 1 with the bias folded (S.123)."""
        return self.network.input_dim + int(self.network.has_bias and self.bias == "folded")

    def _not_isotropic(self, n_samples: int) -> str | None:
        """Why the first-layer factor makes Θ̄(x, x) non-isotropic for N = ``n_samples`` (S.109), or None:
        d >= N (S.104, S.107), or Forster-transformed inputs without bias (S.110–S.111)."""
        d, n = self._first_layer_dims, int(n_samples)
        if d >= n or (self.forster and not self.network.has_bias):
            return None
        if self.forster:
            return (f"K-FAC with Forster-transformed inputs is isotropic only without bias (S.110–S.111; "
                    f"σ_b² = {self.network.sigma_b2:g}: pass --sigma-b2 0)")
        return (f"K-FAC with d = {d} first-layer input dimensions < N = {n} is not isotropic (S.109) unless the "
                "inputs are Forster-transformed and the network has no bias (S.110–S.111: pass --forster "
                "with --sigma-b2 0)")

    def analytic_alpha(self, n_samples):
        """α = NL for d >= N (S.107); N(L−1) + M0 for M0 < N with Forster-transformed inputs (declared by
        ``forster=True``) and no bias (S.111); ``None`` otherwise: C > 1, separate bias blocks (S.123:
        the output bias adds 11ᵀ), or d < N without the Forster transform (S.109)."""
        net = self.network
        if net.n_outputs != 1 or self._separate_bias or self._not_isotropic(n_samples):
            return None
        try:
            return kfac_alpha(n_samples, net.depth, net.input_dim, bias=net.has_bias, forster=self.forster)
        except NgdrefError:  # N < 1
            return None

    def step_needs_learning_rate(self, n_samples: int | None = None) -> str | None:
        """C > 1: no isotropic condition. d < N first-layer input dimensions without Forster-transformed
        inputs (or with a bias): Θ̄ is not isotropic (S.109) and its mean diagonal is no usable α —
        η = c/α from it diverges — so a learning rate must be given."""
        if self.network.n_outputs != 1:
            return "K-FAC with C > 1 has no isotropic condition (Section 4.3 covers C = 1)"
        if n_samples is not None:
            return self._not_isotropic(n_samples)
        return None

    def alpha_note(self) -> str:
        if self.network.n_outputs != 1:
            return "K-FAC with C > 1: natural generalisation, no isotropy claimed"
        if self._separate_bias:
            return "K-FAC with separate bias blocks (S.123) is not isotropic: the output bias adds 11ᵀ"
        if self.forster:
            return ("Forster-transformed inputs: α = N(L-1)+M0 for M0 < N without bias (S.111), NL for M0 >= N "
                    "(S.107)")
        return ("α = NL needs d >= N first-layer input dimensions (d = M0, +1 with the bias folded; S.107) and "
                "full-rank N × N Gram matrices of each layer's δ_l and ā_l (dead ReLU units at small widths M, "
                "e.g. with biases at M = 16, break it: Θ̄ is then not isotropic); for d < N Θ̄ is not isotropic "
                "(S.109) unless the inputs are Forster-transformed (S.111, forster=True)")

    # ---- pieces -----------------------------------------------------------------------
    def _damped_inverse(self, k, factor: str):
        """:func:`~ngdref.linalg.damped_inverse` of a factor's N × N dual; a factor that is singular to
        working precision at ρ > 0 (ρ below round-off of the Gram matrix, e.g. ρ = 1e-12 with a layer
        narrower than N) is a :class:`~ngdref.errors.ConfigError` saying what to use, not a raw LinAlgError."""
        try:
            return damped_inverse(k, self.damping, self.rtol)
        except LINALG_ERRORS:  # NumPy's LinAlgError on every backend (ngdref.backend.LINALG_ERRORS)
            raise ConfigError(f"K-FAC's factor {factor} is numerically singular at ρ = {self.damping:g}: use ρ = 0 "
                              "(its pseudo-inverse) or a larger --damping") from None

    def _abar(self, signals, layer):
        a = signals.a[layer - 1]
        if self._separate_bias:
            return a[:, : self.network.widths[layer - 1]]
        return a

    def _left(self, signals, layer, b_gram=None):
        """(B_l/N + ρI)⁻¹ (dual, CN × CN) for l < L; for l = L the scalar 1/(1/N + ρ).

        ``b_gram``: δ_l δ_lᵀ when the caller already has it."""
        n = signals.n
        if layer == self.network.depth:
            return 1.0 / (1.0 / n + self.damping)
        if b_gram is None:
            d = signals.delta_matrix(layer)
            b_gram = d @ d.T
        return self._damped_inverse(b_gram / n, f"B_l/N + ρI (l = {layer}, the output-side factor)")

    def _right(self, abar, n, a_gram=None):
        """(Ā/N + ρI)⁻¹ (dual, N × N), Ā = ā āᵀ (``a_gram`` when the caller already has it)."""
        return self._damped_inverse((abar @ abar.T if a_gram is None else a_gram) / n,
                                    "A_l + ρI (a layer's input-side factor)")

    def _bias_inverse(self, signals, layer, b_gram=None, left=None):
        """(σ_b² B_l/N² + ρI)⁻¹ (S.123's bias block, dual); ``left`` = (B_l/N)⁺ when already known.

        At ρ = 0 the two pseudo-inverses share one spectrum: (σ_b² B/N²)⁺ = (N/σ_b²)(B/N)⁺
        (the relative cut-off keeps the same eigenvalues), so no second ``eigh`` is needed.
        """
        n = signals.n
        if self.damping == 0 and left is not None and not isinstance(left, float):
            return left * (n / self.network.sigma_b2)
        if b_gram is None:
            d = signals.delta_matrix(layer)
            b_gram = d @ d.T
        return self._damped_inverse(self.network.sigma_b2 * b_gram / n**2,
                                    f"σ_b² B_l/N² + ρI (l = {layer}, the bias block)")

    # ---- structured path ---------------------------------------------------------------
    def precondition(self, signals, v, output_metric=None):
        return factor_product(self.precondition_factors(signals, v, output_metric))

    def precondition_factors(self, signals, v, output_metric=None):
        """Per layer (δ_lᵀ, small): δ_lᵀ (M_l, CN) — a view of the signals — and the CN-row matrix
        small = (B*+ρ)⁻¹E_v (Ā/N+ρ)⁻¹ā /N (with S.123's bias column), whose product is Eq. 20's Δθ_l."""
        xp = namespace_of(v)
        c, n = v.shape
        vec = xp.reshape(v, (c * n,))
        out = []
        for l in range(1, self.network.depth + 1):
            d = signals.delta_matrix(l)  # (CN, M_l)
            abar = self._abar(signals, l)
            right = self._right(abar, n) @ abar  # (Ã/N+ρ)⁻¹ ā, (N, fan)
            left = self._left(signals, l)
            # Everything is assembled on the small CN-row side, to be multiplied by δᵀ once (by
            # precondition or a block of rows at a time by the caller), so the only parameter-sized
            # array is the (M_l, fan_l) product (1/N and the bias column folded in before it).
            if isinstance(left, float):  # output layer: (B*_L + ρ)⁻¹ = 1/(1/N + ρ)
                mid = (left / n) * xp.reshape(v, (c, n, 1))  # E_v applied below
                small = xp.reshape(mid * xp.reshape(right, (1, n, right.shape[1])), (c * n, right.shape[1]))
            else:
                # (B/N+ρ)⁻¹ E_v: column n' = Σ_k L[:, (k, n')] v_k[n']
                le = xp.sum(xp.reshape(left, (c * n, c, n)) * xp.reshape(v, (1, c, n)), axis=1)  # (CN, N)
                small = le @ right
                small /= float(n)
            if self._separate_bias:
                bias_inv = self._bias_inverse(signals, l, left=left)
                col = (self.network.sigma_b / n) * (bias_inv @ xp.reshape(vec, (c * n, 1)))  # (CN, 1)
                small = xp.concat([small, col], axis=1)
            out.append((d.T, small))
        return out

    # ---- matrix-free G v and G⁻¹ v (ngdref.fisher.operators) ---------------------------------
    def _operator_factor(self, signals, layer):
        """ā of the Kronecker factor, as wide as θ_l: with S.123's separate bias blocks its bias column is 0,
        so V ā ᵀ ā acts on the weights only and the bias column is written separately (no slice of V
        and no concatenation: one θ_l-sized result per layer)."""
        a = signals.a[layer - 1]
        if not self._separate_bias:
            return a
        xp = namespace_of(a)
        return a * xp.concat([xp.ones((1, a.shape[1] - 1), dtype=a.dtype), xp.zeros((1, 1), dtype=a.dtype)], axis=1)

    def fisher_matvec(self, signals, v, cache=None):
        """G v per layer, (B*+ρI) V_w (A*+ρI) = vec_row⁻¹((B*+ρI)⊗(A*+ρI) vec_row V_w) (Eq. 20, S.95)
        with B* V = δᵀ(δV)/N and V A* = (Vāᵀ)ā/N (no M_l × M_l factor is formed; B*_L = I_C/N), and
        S.123's bias block σ_b² δᵀ(δ v_b)/N² + ρv_b."""
        n, rho = float(signals.n), self.damping
        out = []
        for l in range(1, self.network.depth + 1):
            d, abar, vl = signals.delta_matrix(l), self._operator_factor(signals, l), v[l - 1]
            x = (vl @ abar.T) @ abar
            x /= n
            if rho > 0:
                x += rho * vl
            if l == self.network.depth:
                y = x
                y *= 1.0 / n + rho
            else:
                y = d.T @ (d @ x)
                y /= n
                if rho > 0:
                    y += rho * x
            if self._separate_bias:  # the bias column: S.123's block (B* acts column by column)
                vb = vl[:, -1:]
                yb = (self.network.sigma_b2 / n**2) * (d.T @ (d @ vb))
                if rho > 0:
                    yb += rho * vb
                y[:, -1:] = yb
            out.append(y)
        return out

    def inverse_matvec(self, signals, v, cache=None):
        """G⁻¹ v per layer, (B*+ρI)⁻¹ V_w (A*+ρI)⁻¹: the inverse of Eq. 20's Kronecker product with the
        factors of S.95, (B⊗A)⁻¹ = B⁻¹⊗A⁻¹ (Eq. 21 is K-FAC's Θ̄, not this inverse), each factor by
        push-through on its dual Gram matrix (δδᵀ/N, CN × CN; āāᵀ/N, N × N — those of
        :meth:`precondition`): for H = c QᵀQ + ρI with dual D = (cQQᵀ + ρI)⁻¹ (ρ > 0) or (cQQᵀ)⁺ (ρ = 0),

            H⁻¹X = (X − c Qᵀ D Q X)/ρ,      H⁺X = c Qᵀ D D Q X;

        B*_L = I_C/N gives 1/(1/N + ρ); S.123's bias block is H with Q = δ, c = σ_b²/N²."""
        cache = {} if cache is None else cache
        n, rho = signals.n, self.damping
        out = []
        for l in range(1, self.network.depth + 1):
            d, abar, vl = signals.delta_matrix(l), self._operator_factor(signals, l), v[l - 1]
            key = f"kfac:{l}"
            if key not in cache:
                left = self._left(signals, l)
                bias = self._bias_inverse(signals, l, left=left) if self._separate_bias else None
                cache[key] = (left, self._right(self._abar(signals, l), n), bias)
            left, right, bias = cache[key]
            # the zero bias column of ``abar`` leaves the Gram matrix āāᵀ of the weights unchanged
            y = _gram_inverse_right(vl, abar, right, 1.0 / n, rho)
            if isinstance(left, float):
                y *= left
            else:
                y = _gram_inverse_left(y, d, left, 1.0 / n, rho)
            if self._separate_bias:
                y[:, -1:] = _gram_inverse_left(vl[:, -1:], d, bias, self.network.sigma_b2 / n**2, rho)
            out.append(y)
        return out

    def _theta_bar(self, signals, signals_prime):
        """Θ̄(x′, x) = Σ_l [B_l(x′,x)(B_l/N + ρI)⁻¹] ⊙ [1_C1_Cᵀ ⊗ Ã(x′,x)(Ã/N + ρI)⁻¹] / N (module docstring).

        Each layer's term is two Gram matrices and two N × N (pseudo-)inverses — at N ≈ 100 small
        LAPACK calls, which run faster on one BLAS thread than on several (and far slower when a
        neighbour keeps the other cores busy: OpenBLAS's threads spin). On the NumPy backend the
        layers' terms are therefore computed side by side on a small thread pool with BLAS held at
        one thread (:func:`ngdref.threads.map_on_threads`); the terms are summed in layer order, so the
        result does not depend on the number of threads."""
        sp = signals if signals_prime is None else signals_prime
        xp = namespace_of(signals.f)
        c, n = signals.f.shape[1], signals.n
        same = signals_prime is None or signals_prime is signals

        def layer_term(l):
            d, dp = signals.delta_matrix(l), sp.delta_matrix(l)
            abar, abar_p = self._abar(signals, l), self._abar(sp, l)
            # each Gram once: B = δδᵀ and Ā = āāᵀ serve the inverses and, when x′ = x, the cross terms
            b_gram, a_gram = d @ d.T, abar @ abar.T
            b_cross = b_gram if same else dp @ d.T
            a_cross = a_gram if same else abar_p @ abar.T
            left = self._left(signals, l, b_gram)
            p = b_cross * left if isinstance(left, float) else b_cross @ left
            q = a_cross @ self._right(abar, n, a_gram)
            term = p * xp.tile(q, (c, c)) / n
            if self._separate_bias:
                term = term + self.network.sigma_b2 * (b_cross @ self._bias_inverse(signals, l, b_gram, left)) / n
            return term

        total = None
        for term in map_on_threads(layer_term, range(1, self.network.depth + 1), signals.f, "ngdref-kfac"):
            total = term if total is None else total + term
        return total

    def analytic_theta_bar(self, cross, train, forster=None):
        """K-FAC (Eq. 20–21, C = 1): Θ̄(x′, x) = N Σ_l 𝓑_l ⊙ 𝒜_{l−1} (S.105).

        𝓑_l = B_l(x′, x) B_l⁻¹ for l < L and 𝓑_L = 11ᵀ (S.106 and Eq. 21 print
        ``B_l(x′,x)⁻¹ B_l``; S.100 shows the inverse is on the training kernel). The factor N
        follows the paper's convention B*_L = 1/N for the output layer (S.95).

        * σ_b = 0: 𝒜_l = A_l(x′, x) A_l⁻¹ (l >= 1); α = N L for M0 >= N (S.107).
        * σ_b > 0 with ``bias="folded"`` (S.123 first paragraph, a_l = [σ_w h_l/√M_l; σ_b]):
          𝒜_l = Ã_l(x′, x) Ã_l⁻¹ with Ã_l = σ_w² A_l + σ_b² 11ᵀ; α = N L for M0 + 1 >= N.
          With ``bias="separate"`` (S.123–S.124) the output-layer bias term 𝓑_L = 11ᵀ is rank
          one, Θ̄ is not isotropic, and no analytic Θ̄ is given here (NgdrefError).
        * First layer with d first-layer input dimensions (M0, or M0 + 1 with bias): for N <= d,
          𝒜_0 = Ã_0(x′, x) Ã_0⁻¹ (S.104); for N > d the ρ → 0 limit P′P⁺ (S.108), not isotropic
          (S.109); ``forster=True`` (σ_b = 0, M0 < N, training inputs Forster-transformed,
          X̄ᵀX̄ = (N/M0) I with unit rows) uses 𝒜_0 = (M0/N) X′X̄ᵀ (S.110), α = N(L − 1) + M0 (S.111);
          ``forster=None`` takes the object's own ``forster``.
        """
        forster = self.forster if forster is None else forster
        check_pair(cross, train)
        net = train.network
        if self.network.n_outputs != 1 or net.n_outputs != 1:
            c = max(self.network.n_outputs, net.n_outputs)
            raise NgdrefError(f"K-FAC's Θ̄ is derived for C = 1 only (Section 4.3), got C = {c}")
        if self._separate_bias:
            raise NgdrefError("K-FAC with separate bias blocks (S.123-S.124) has no isotropic analytic Θ̄ "
                              "(the output bias adds 11ᵀ); use bias='folded'")
        fold = net.has_bias
        a_cal = [_first_layer_factor(cross, train, fold, forster)]
        for l in range(1, net.depth):
            cf = spd_factor(train.feature_gram(l + 1), f"the K-FAC factor Ã_{l}")
            a_cal.append(right_solve(cross.feature_gram(l + 1), cf))
        b_cal = []
        for l in range(1, net.depth):
            cf = spd_factor(train.B[l - 1], f"B_{l}")
            b_cal.append(right_solve(cross.B[l - 1], cf))
        b_cal.append(np.ones_like(cross.B[-1]))
        return train.n * sum(b * a for b, a in zip(b_cal, a_cal))  # S.105
