"""Entry-wise Fisher approximations of Fig. 3: the diagonal FIM and Ollivier's quasi-diagonal FIM.

Neither is isotropic (Section 5, "Comparison with entry-wise FIMs"): Θ̄ keeps a
condition number > 1 at any width, so no α is claimed (``analytic_alpha`` is None).

Diagonal FIM (``"diag"``; LeCun, Bottou, Orr & Müller, "Efficient backprop", 1998,
paper ref. [21])
    G_ij = (F_ii + ρ) δ_ij with F = JᵀJ/N. With the layer signals (S.64), for layer l

        F_l = Σ_k (δ_l^{(k)} ∘ δ_l^{(k)})ᵀ (a_{l−1} ∘ a_{l−1}) / N       (M_l × fan, θ_l-shaped),

    a GEMM, no Jacobian. Δθ = (Jᵀv/N) / G_ii entry-wise.

    At ρ = 0 (the pseudo-inverse G⁺, the zero-damping limit of Section 3.2; Fig. 3 itself
    uses ρ = 1e-12, App. C.3.1)
    an entry gets inverse 0 only when it is zero: G_ii <= τ = tiny/eps of the dtype
    (:func:`ngdref.linalg.sum_of_squares_floor`: 9.9e-32 in float32, 1.0e-292 in float64).
    F_ii = Σ_n J_ni²/N is a sum of non-negative terms (the GEMM of δ² and a², both >= 0): no
    cancellation, so it is accurate to a few eps *relative to itself* however small it is
    next to max F, and 1/F_ii is then as accurate. The entries that are exactly 0 — a unit
    dead on every sample (δ ≡ 0), a blank input pixel or a dead unit's output (a ≡ 0), i.e.
    a Jacobian column ≡ 0 — are the ones the pseudo-inverse exists for. The floor τ only adds
    underflow: below it the terms were subnormal or flushed to 0 (each off by up to ``tiny``),
    the entry has no relative accuracy left and its inverse would overflow float32; such an
    entry is treated as 0 (float64, where it is still normal, inverts it: the two dtypes differ
    on those entries only, by design). NumPy's ``pinv`` rule P·eps·max F is *not* used: it
    guards eigenvalues computed together with the largest one, which a diagonal's entries
    are not, and with P ~ 1e7 it exceeds max F in float32 (every entry cut, Δθ ≡ 0) and drops
    most of the first layer's entries in float64 (faint pixels). An explicit ``rtol`` restores
    a relative cut rtol·max F at ρ = 0 (a first pass over the layers for max F). For ρ > τ
    (any damping in use) G_ii >= ρ and nothing is cut.

Quasi-diagonal FIM (``"quasi-diag"``; Y. Ollivier, "Riemannian metrics for neural networks I:
feedforward networks", Information and Inference: A Journal of the IMA 4(2):108–153, 2015,
arXiv:1303.0818 — its quasi-diagonal reduction of a metric — paper ref. [6]; implemented
from the same data as RMSProp in G. Marceau-Caron & Y. Ollivier, "Practical Riemannian
neural networks", arXiv:1602.08007, 2016)
    Per unit θ_i^{(l)} = (w_1, …, w_m, b) (weights, then the bias: the last column of θ_l)
    keep only the diagonal entries G_jj = F_jj + ρ, G_bb = F_bb + ρ and the bias–weight
    couplings G_bj = F_bj, and take Ollivier's quasi-diagonal gradient step, a 2×2 solve
    in (b, w_j) for each incoming weight followed by the bias correction:

        Δw_j = (G_bb g_j − G_bj g_b) / (G_bb G_jj − G_bj²),
        Δb   = g_b / G_bb − Σ_j (G_bj / G_bb) Δw_j,                   g = ∇_θ L = Jᵀv/N.

    This is the update of the authors' own implementation (Marceau-Caron & Ollivier,
    ``nnx.QDRiemaNNLinear`` in torch/nnx: numerator g_j M_00 − M_0j g_0 over
    M_jj M_00 − M_0j², then the bias (g_0 − Σ_j M_0j Δw_j)/M_00), checked line by line.

    The map g ↦ Δθ is linear, symmetric, and is the *exact inverse* of the metric

        G_qd = diag(D_1, …, D_m, 0) + u uᵀ / G_bb,   u = (G_b1, …, G_bm, G_bb),
        D_j = G_jj − G_bj² / G_bb,

    which has the same diagonal (G_jj, G_bb) and bias couplings (G_bj) as G and
    couples two weights of a unit by G_bj G_bk / G_bb: "a rough approximation of the
    unit-wise FIM in which a certain 1-rank matrix is added to the diagonal entries"
    (Karakida & Osawa, Section 5). ρ enters the diagonal once. The tests build G_qd literally (P×P,
    ``tests/oracles.py``) and invert it, so the structured step is checked against an
    independent computation.

    At ρ = 0, where Ollivier's formula divides by zero (a dead unit, G_bb <= τ; a
    weight whose 2×2 block is singular, D_j <= rtol_pair·G_jj (rtol_pair = ``rtol`` or
    8·N·eps: sin² of the angle between the two Jacobian columns), e.g. a ReLU unit
    alive on a single sample, or a blank input, G_jj <= τ), the step is the pseudo-inverse
    G_qd⁺ g. The two cut-offs follow the accuracy of what they test: G_bb and G_jj are
    sums of squares, cut only at the floor τ of the diagonal FIM (dead unit, blank input,
    underflow); D_j = G_jj − G_bj²/G_bb *is* a cancellation (G_bj = Σ_n e_n a_nj σ_b has
    signed terms, off by ~N·eps·√(G_jj G_bb)), so its cut is relative to its own G_jj —
    a few N·eps, never to P or to max F. G_qd⁺ g is computed in
    closed form: with V = {j : D_j > rtol_pair·G_jj} and the remaining coordinates Z
    (the bias and the degenerate weights), G_qd restricted to span(e_V, ẑ),
    ẑ = u_Z/ν, ν = ‖u_Z‖, is again "diagonal + rank one" and

        Δ = μ ∘ g − r (ẑ·g) − ẑ (r·g) + κ ẑ (ẑ·g),
        μ_j = 1/D_j, r_j = u_j/(ν D_j) (j ∈ V; 0 on Z),
        κ = G_bb/ν² + Σ_{j∈V} u_j²/(ν² D_j),

    which is Ollivier's formula when V holds every weight (ẑ = e_b, ν = G_bb). A unit
    with G_bb <= τ is treated as decoupled (diagonal; dead at ρ = 0, every entry of its F
    is 0). With σ_b = 0 there is no bias and the quasi-diagonal FIM is the diagonal FIM.

Coefficient matrix (Eq. 11) without the Jacobian: for a per-unit map M_i = diag(μ_i) +
(low rank in r_i, ẑ_i),

    Θ̄_l(x′, x)[(k,s),(k′,t)] = Σ_i δ′_{k,s,i} δ_{k′,t,i} (a′_s M_i a_tᵀ) / N,

the diagonal part Σ_j a′_{sj} a_{tj} μ_ij is one GEMM (a′_s ∘ a_t)_{(s,t)} @ μᵀ per block of
sample pairs — N′N·fan·M_l flops per layer, no shortcut exists since μ = 1/F is the
entry-wise inverse of a rank-N matrix — and the low-rank part is a few (CN′ × CN)
GEMMs. On the training set only the pairs s <= t are computed (Θ̄ is symmetric).
Sample-pair blocks are chunked so that one working array stays below max(P/8, 2^20)
elements, and the maps are built for blocks of units (max(P/32, 2^18) elements), so the
peak extra memory stays about 2× the parameters.
"""

from __future__ import annotations

import numpy as np

from ..backend import backend_of, dtype_name_of, namespace_of, to_device, to_float, to_host
from ..linalg import eps, sum_of_squares_floor
from ..threads import map_on_threads
from . import cost
from .base import FisherApproximation
from .spec import FisherSpec, register

class _LayerArrays:
    """One layer's training-set signals as the maps need them: δ_l (C, N, M), a_{l−1} (N, fan)
    and a∘a — the whole layer, or its training support (:func:`_training_support`)."""

    __slots__ = ("d", "a", "a2", "n")

    def __init__(self, d, a):
        self.d, self.a, self.a2, self.n = d, a, a * a, int(a.shape[0])

    @classmethod
    def of(cls, signals, layer: int) -> "_LayerArrays":
        return cls(signals.delta[layer - 1], signals.a[layer - 1])


class _LayerMap:
    """Per-layer map M_i = diag(μ_i) − r_i ẑ_iᵀ − ẑ_i r_iᵀ + κ_i ẑ_i ẑ_iᵀ (rows i = units)."""

    __slots__ = ("mu", "r", "z", "kappa")

    def __init__(self, mu, r=None, z=None, kappa=None):
        self.mu, self.r, self.z, self.kappa = mu, r, z, kappa

    @property
    def low_rank(self) -> bool:
        return self.r is not None

    def apply(self, g):
        """M_i g_i for every unit (row) of the θ_l-shaped gradient g."""
        out = self.mu * g
        if not self.low_rank:
            return out
        xp = namespace_of(g)
        zg = xp.sum(self.z * g, axis=1, keepdims=True)
        rg = xp.sum(self.r * g, axis=1, keepdims=True)
        return out - self.r * zg - self.z * rg + self.z * (self.kappa * zg)


def _flops(quasi: bool):
    """F_l = Σ_k(δ∘δ)ᵀ(a∘a)/N (2N·M_l·fan_l), the gradient (a vjp) and the O(P) map; quasi-diag
    adds the bias coupling F_bj (another 2N·M_l·fan_l) and ≈ 10 O(P) element-wise operations (the fused
    step of :func:`_quasi_block`: σ_b·, +ρ, D_j (3), min, g − G_bj β, /D, Σ G_bj Δw (2); ≈ 20 for the maps
    of Θ̄). Θ̄: the maps, then per
    layer the sample-pair GEMM (a′_s∘a_t) μᵀ on the N(N+1)/2 pairs (2·fan·M_l each), forming the
    pairs (fan each), and the δ′δ contraction (≈ 3·M_l per pair and output pair); quasi-diag adds
    the low-rank part (four N×fan×M_l products and three (CN)²·M_l products)."""

    def model(s: cost.Shape, damping: float) -> dict:
        per = sum(2.0 * s.n * s.m(l) * s.fan(l) for l in s.layers)
        maps = 2.0 * per + 10.0 * s.n_params if quasi else per + 3.0 * s.n_params
        pairs = s.n * (s.n + 1) / 2.0
        theta = maps + 10.0 * s.n_params if quasi else maps  # Θ̄ builds the maps of _quasi_pieces: ≈ 20P
        for l in s.layers:
            m, fan = s.m(l), s.fan(l)
            theta += pairs * (2.0 * fan * m + fan + 3.0 * s.c**2 * m)
            if quasi:
                theta += 8.0 * s.n * fan * m + 6.0 * s.cn**2 * m
        direction = ("2 squared-signal GEMMs (F_ii, F_bj) + vjp + ≈10P element-wise" if quasi
                     else "squared-signal GEMM (δ²)ᵀ(a²) + vjp + O(P) element-wise")
        return cost.model((maps + cost.vjp(s), direction),
                          (theta, "maps + sample-pair GEMM N(N+1)/2·2·fan·M_l + pair contraction (+ low rank)"))

    return model


@register
class DiagonalFisher(FisherApproximation):
    """Entry-wise diagonal FIM G = diag(F_ii + ρ) (Fig. 3; LeCun et al. 1998). Not isotropic."""

    spec = FisherSpec(
        name="diag", title="diagonal",
        summary="entry-wise diagonal FIM G_ii = F_ii + ρ (LeCun et al. 1998; Fig. 3); not isotropic",
        equations="Fig. 3 (G_ij = (F_ii + ρ)δ_ij)", aliases=("diagonal",), isotropic=False,
        multi_output_alpha=False, flops=_flops(False),
    )

    def alpha_note(self) -> str:
        return (
            "entry-wise FIMs do not satisfy the isotropic condition (Fig. 3): cond(Θ̄) stays > 1 at "
            "large width (smaller than cond(NTK)); no α — choose the learning rate from λ_max(Θ̄)"
        )

    # ---- the map M (Δθ = M ∇L), built block of units by block of units ---------------------------
    def _row_blocks(self, lay: _LayerArrays) -> list[slice]:
        """Unit ranges whose (rows × fan) temporaries stay below max(P/32, 2^18) elements."""
        m_out, fan = lay.d.shape[2], lay.a.shape[1]
        rows = max(1, max(self.network.n_params // 32, 1 << 18) // fan)
        return [slice(i, min(m_out, i + rows)) for i in range(0, m_out, rows)]

    @staticmethod
    def _squared_delta(lay: _LayerArrays, rows: slice):
        """e = Σ_k δ_k ∘ δ_k / N for the units ``rows``, (N, rows)."""
        d = lay.d[:, :, rows]
        return namespace_of(d).sum(d * d, axis=0) / float(lay.n)

    def _fisher_rows(self, lay: _LayerArrays, rows: slice):
        """F for the units ``rows``, (rows, fan): (Σ_k δ_k∘δ_k / N)ᵀ (a∘a).

        1/N is applied to the (N, rows) factor, so the product is the only (rows, fan) array."""
        return self._squared_delta(lay, rows).T @ lay.a2

    def _cut(self, signals) -> float:
        """Absolute cut-off on G_ii: entries <= it get inverse 0 (the pseudo-inverse at ρ = 0).

        τ = tiny/eps of the dtype (:func:`ngdref.linalg.sum_of_squares_floor`): only entries that
        are 0 or underflowed are cut, each F_ii being accurate relative to itself (module
        docstring). With an explicit ``rtol`` and ρ = 0: max(τ, rtol·max F) (one more pass)."""
        floor = sum_of_squares_floor(dtype_name_of(signals.f))
        if self.damping > 0 or self.rtol is None:
            return floor
        xp = namespace_of(signals.f)
        top = 0.0
        for l in range(1, self.network.depth + 1):
            lay = _LayerArrays.of(signals, l)
            for rows in self._row_blocks(lay):
                top = max(top, to_float(xp.max(self._fisher_rows(lay, rows))))
        return max(floor, float(self.rtol) * top)

    def _inverse_diagonal(self, g_diag, cut: float):
        """1/G_ii, with 0 where G_ii <= cut (ρ = 0 pseudo-inverse: G_ii = 0 or underflowed)."""
        xp = namespace_of(g_diag)
        keep = g_diag > cut
        safe = xp.where(keep, g_diag, xp.ones_like(g_diag))
        return xp.where(keep, 1.0 / safe, xp.zeros_like(g_diag))

    def _map_rows(self, lay: _LayerArrays, rows: slice, cut: float) -> _LayerMap:
        """M_i for the units ``rows`` (diagonal FIM: μ = 1/(F + ρ))."""
        return _LayerMap(self._inverse_diagonal(self._fisher_rows(lay, rows) + self.damping, cut))

    def layer_map(self, signals, layer: int) -> _LayerMap:
        """The whole layer's map M_i (Δθ_{l,i} = M_i ∇_{θ_i^{(l)}} L), for inspection and tests."""
        cut = self._cut(signals)
        lay = _LayerArrays.of(signals, layer)
        return _concat_maps([self._map_rows(lay, r, cut) for r in self._row_blocks(lay)])

    # ---- structured path -----------------------------------------------------------------
    def precondition(self, signals, v, output_metric=None):
        """Δθ_ij = g_ij / (F_ij + ρ) with g = Jᵀv/N (0 where F_ij + ρ <= cut: ρ = 0 and F_ij = 0).

        Per layer the gradient is formed whole and divided in place, one block of units at a
        time, by F + ρ with the cut entries set to +inf (g/inf = 0): the gradient GEMM's output
        is the only parameter-sized array.
        """
        xp = namespace_of(v)
        c, n = v.shape
        cut = self._cut(signals)
        out = []
        for l in range(1, self.network.depth + 1):
            lay = _LayerArrays.of(signals, l)
            weights = xp.sum(xp.reshape(v, (c, n, 1)) * lay.d, axis=0) / n  # (N, M_l)
            g = weights.T @ lay.a  # ∇_{θ_l} L, (M_l, fan)
            for rows in self._row_blocks(lay):
                # a no-op copy where ``g[rows, :]`` is a view that was updated in place (NumPy, CuPy)
                g[rows, :] = self._precondition_rows(lay, rows, cut, g[rows, :])
            out.append(g)
        return out

    def _precondition_rows(self, lay: _LayerArrays, rows: slice, cut: float, g_rows):
        """M_i g_i for the units ``rows`` (may update ``g_rows`` in place): g / (F + ρ), cut → 0."""
        xp = namespace_of(g_rows)
        f = self._fisher_rows(lay, rows)
        if self.damping > 0:
            f += self.damping
        g_rows /= xp.where(f > cut, f, xp.inf)
        return g_rows

    # ---- matrix-free G v and G⁻¹ v (ngdref.fisher.operators) ---------------------------------
    def fisher_matvec(self, signals, v, cache=None):
        """G v entry by entry (diag: (F_ii + ρ) v_i; quasi-diag: G_qd per unit), block of units by block."""
        xp = namespace_of(signals.f)
        cut = self._cut(signals)
        out = []
        for l in range(1, self.network.depth + 1):
            lay = _LayerArrays.of(signals, l)
            out.append(xp.concat([self._fisher_matvec_rows(lay, rows, cut, v[l - 1][rows, :])
                                  for rows in self._row_blocks(lay)], axis=0))
        return out

    def _fisher_matvec_rows(self, lay: _LayerArrays, rows: slice, cut: float, v_rows):
        """(F + ρ) ∘ v for the units ``rows``."""
        f = self._fisher_rows(lay, rows)
        if self.damping > 0:
            f += self.damping
        return f * v_rows

    def inverse_matvec(self, signals, v, cache=None):
        """G⁻¹ v (G⁺ v at ρ = 0, with the cut-offs of :meth:`precondition`): the map M_i of
        :meth:`precondition` applied to v instead of the gradient."""
        cut = self._cut(signals)
        out = []
        for l in range(1, self.network.depth + 1):
            lay = _LayerArrays.of(signals, l)
            g = 1.0 * v[l - 1]  # a new array, preconditioned in place block by block
            for rows in self._row_blocks(lay):
                g[rows, :] = self._precondition_rows(lay, rows, cut, g[rows, :])
            out.append(g)
        return out

    def _theta_bar(self, s, s_prime):
        """Θ̄(x′, x) = Σ_l Σ_i J_{l,i}(x′) M_i J_{l,i}(x)ᵀ / N on each layer's training support.

        Units with δ ≡ 0 and inputs with a ≡ 0 on the training set contribute exactly 0 to every
        term (their F, G_bj and every term of M_i vanish or meet a zero factor of J(x)), so the
        map and the pair products are built on the support only (:func:`_training_support`)."""
        xp = namespace_of(s.f)
        cut = self._cut(s)
        sp = s if s_prime is None else s_prime
        symmetric = s_prime is None
        total = None
        for l in range(1, self.network.depth + 1):
            lay = _LayerArrays.of(s, l)
            a_p, d_p = sp.a[l - 1], sp.delta[l - 1]
            support = _training_support(lay)
            if support is not None:
                iu, jf = support
                lay = _LayerArrays(xp.take(lay.d, iu, axis=2), xp.take(lay.a, jf, axis=1))
                a_p, d_p = xp.take(a_p, jf, axis=1), xp.take(d_p, iu, axis=2)
            if symmetric:
                a_p, d_p = lay.a, lay.d
            mu, low = [], []
            for rows in self._row_blocks(lay):
                m = self._map_rows(lay, rows, cut)
                mu.append(m.mu)
                if m.low_rank:
                    low.append(_low_rank_factors(a_p, lay.a, m, symmetric))
            mu = mu[0] if len(mu) == 1 else xp.concat(mu, axis=0)
            term = _diagonal_part(a_p, lay.a, d_p, lay.d, mu, symmetric, self._budget())
            if low:
                factors = [xp.concat([f[i] for f in low], axis=-1) for i in range(5)]
                term = term + _low_rank_part(d_p, lay.d, *factors)
            total = term if total is None else total + term
        return total / s.n

    def _budget(self) -> int:
        """Elements per working array of the pair-block GEMM (P/8, at least 2^20)."""
        return max(self.network.n_params // 8, 1 << 20)


@register
class QuasiDiagonalFisher(DiagonalFisher):
    """Ollivier's quasi-diagonal FIM (2015, paper ref. [6]; Fig. 3): diagonal + bias couplings per unit."""

    spec = FisherSpec(
        name="quasi-diag", title="quasi-diagonal",
        summary="Ollivier's quasi-diagonal FIM (diag + bias–weight couplings per unit, a rank-one "
                "completion of the diagonal; Fig. 3, ref. [6]); not isotropic",
        equations="Fig. 3; Ollivier (2015) quasi-diagonal reduction", aliases=("quasidiag", "quasi-diagonal"),
        isotropic=False, multi_output_alpha=False, flops=_flops(True),
    )

    def _pair_rtol(self, dtype_name: str, n: int) -> float:
        """Cut-off on sin² = D_j/G_jj (the 2×2 block (b, w_j) is singular below it) at ρ = 0.

        D_j = G_jj − G_bj²/G_bb cancels: G_bj's signed N-term sum is off by ~N·eps·√(G_jj G_bb),
        so D_j is known to ~N·eps·G_jj — the cut is relative to the weight's own G_jj (8·N·eps,
        a margin of 8), independent of P and of the other entries."""
        if self.damping > 0:
            return 0.0
        return float(self.rtol) if self.rtol is not None else 8.0 * max(n, 1) * eps(dtype_name)

    def precondition(self, signals, v, output_metric=None):
        """Δθ_i = G_qd,i⁻¹ g_i per unit (Ollivier's update, module docstring), g = Jᵀv/N.

        Fused and cache-blocked: for a block of units small enough that its (rows × fan) arrays stay
        in cache (:data:`_CACHE_BLOCK` elements each), the gradient block, F and σ_b F_bj come from two
        GEMMs (N-row left factors), the update is applied there in a few element-wise passes
        (:func:`_quasi_block`) and the block is written once into the layer's result — instead of
        ≈ 20 passes over parameter-sized arrays in main memory. A block with a degenerate weight
        (ρ = 0: a coupled weight whose 2×2 block is singular) takes the general pseudo-inverse
        (:func:`_quasi_pieces`) on the same block arrays. Without biases: the diagonal FIM's step.
        """
        net = self.network
        if not net.has_bias:
            return super().precondition(signals, v, output_metric)
        xp = namespace_of(v)
        c, n = v.shape
        cut = self._cut(signals)
        out = []
        for l in range(1, net.depth + 1):
            lay = _LayerArrays.of(signals, l)
            weights = xp.sum(xp.reshape(v, (c, n, 1)) * lay.d, axis=0) / n  # (N, M_l): g = weightsᵀ a
            e = xp.sum(lay.d * lay.d, axis=0) / float(lay.n)  # (N, M_l): F = eᵀ (a∘a)
            pair_rtol = self._pair_rtol(dtype_name_of(lay.a), lay.n)
            m_out, fan = weights.shape[1], lay.a.shape[1]
            result = xp.empty((m_out, fan), dtype=weights.dtype)
            rows = max(1, _CACHE_BLOCK // fan)

            def block(i, lay=lay, e=e, weights=weights, result=result, pair_rtol=pair_rtol, rows=rows):
                blk = slice(i, min(m_out, i + rows))
                k = blk.stop - blk.start
                both = xp.concat([e[:, blk], weights[:, blk]], axis=1).T @ lay.a  # (2k, fan)
                cpl, g = both[:k, :], both[k:, :]
                cpl *= net.sigma_b  # σ_b F_bj (its last column is not used)
                f = e[:, blk].T @ lay.a2
                if self.damping > 0:
                    f += self.damping
                if not _quasi_block(xp, f, cpl, g, self.damping, cut, pair_rtol):
                    # a degenerate weight somewhere in the block (ρ = 0): the closed form where it holds,
                    # the pseudo-inverse pieces on the few sub-blocks of _SUB_BLOCK units that need them
                    for j in range(0, k, _SUB_BLOCK):
                        sub = slice(j, min(k, j + _SUB_BLOCK))
                        fs, cs, gs = f[sub, :], cpl[sub, :], g[sub, :]
                        if not _quasi_block(xp, fs, cs, gs, self.damping, cut, pair_rtol):
                            _apply_quasi_pieces(xp, _quasi_pieces(xp, fs, cs[:, :-1], cut, pair_rtol), gs)
                        g[sub, :] = gs  # a no-op where ``gs`` is a view updated in place (NumPy, CuPy)
                result[blk, :] = g

            # blocks side by side (NumPy: a thread per CPU, BLAS at one thread; NumPy's element-wise passes
            # are single-threaded): each writes its own rows, so the result does not depend on the count
            map_on_threads(block, range(0, m_out, rows), v, "ngdref-qdiag")
            out.append(result)
        return out

    def _precondition_rows(self, lay: _LayerArrays, rows: slice, cut: float, g_rows):
        """M_i g_i by the closed form of :func:`_quasi_pieces` (the diagonal FIM's without biases)."""
        if not self.network.has_bias:
            return super()._precondition_rows(lay, rows, cut, g_rows)
        _apply_quasi_pieces(namespace_of(g_rows), self._pieces(lay, rows, cut), g_rows)
        return g_rows

    def _fisher_matvec_rows(self, lay: _LayerArrays, rows: slice, cut: float, v_rows):
        """G_qd v per unit (module docstring): with s = Σ_j G_bj v_j + G_bb v_b,
        (G_qd v)_j = D_j v_j + G_bj s/G_bb and (G_qd v)_b = s; a unit with G_bb <= cut is diagonal."""
        if not self.network.has_bias:
            return super()._fisher_matvec_rows(lay, rows, cut, v_rows)
        xp = namespace_of(v_rows)
        e = self._squared_delta(lay, rows)
        g_diag = e.T @ lay.a2
        if self.damping > 0:
            g_diag += self.damping
        coupling = (e.T @ lay.a[:, :-1]) * self.network.sigma_b  # G_bj
        gw, gb = g_diag[:, :-1], g_diag[:, -1:]
        vw, vb = v_rows[:, :-1], v_rows[:, -1:]
        alive = gb > cut
        inv_gb = xp.where(alive, 1.0 / xp.where(alive, gb, xp.ones_like(gb)), xp.zeros_like(gb))
        s = xp.sum(coupling * vw, axis=1, keepdims=True) + gb * vb
        out_w = xp.where(alive, (gw - coupling * coupling * inv_gb) * vw + coupling * (s * inv_gb), gw * vw)
        out_b = xp.where(alive, s, gb * vb)
        return xp.concat([out_w, out_b], axis=1)

    def _pieces(self, lay: _LayerArrays, rows: slice, cut: float) -> tuple:
        """The quasi-diagonal map of the units ``rows``; the bias is a's last column."""
        e = self._squared_delta(lay, rows)  # (N, rows), divided by N
        fisher = e.T @ lay.a2
        if self.damping > 0:
            fisher += self.damping
        coupling = e.T @ lay.a[:, :-1]
        coupling *= self.network.sigma_b  # G_bj = F_bj, (rows, m)
        pair_rtol = self._pair_rtol(dtype_name_of(lay.a), lay.n)
        return _quasi_pieces(namespace_of(lay.a), fisher, coupling, cut, pair_rtol)

    def _map_rows(self, lay: _LayerArrays, rows: slice, cut: float) -> _LayerMap:
        net = self.network
        if not net.has_bias:
            return super()._map_rows(lay, rows, cut)
        inv_d, r_w, z_w, z_b, kappa = self._pieces(lay, rows, cut)
        xp = namespace_of(lay.a)
        zero_b = xp.zeros_like(z_b)
        return _LayerMap(
            xp.concat([inv_d, zero_b], axis=1),
            xp.concat([r_w, zero_b], axis=1),
            xp.concat([z_w, z_b], axis=1),
            kappa,
        )


def _quasi_pieces(xp, g_diag, coupling, cut: float, pair_rtol: float) -> tuple:
    """Closed-form (pseudo-)inverse of G_qd for a block of units (see the module docstring).

    ``g_diag``: (rows, m+1) diagonal of G (bias last); ``coupling``: (rows, m) G_bj. ``cut``:
    the absolute floor on the sums of squares G_bb, G_jj (τ; a weight with G_jj <= cut is
    degenerate, a zero input); ``pair_rtol``: the relative cut on D_j/G_jj. A dead unit
    (G_bb <= cut) gets c = 0, hence D_j = G_jj and the diagonal pseudo-inverse.
    Returns (1/D on the weights, r_w, z_w, z_b, κ): M_i = diag(μ) − r ẑᵀ − ẑ rᵀ + κ ẑ ẑᵀ with
    μ = [1/D, 0], r = [r_w, 0], ẑ = [z_w, z_b].
    """
    gw, gb = g_diag[:, :-1], g_diag[:, -1:]  # (rows, m), (rows, 1)
    alive = gb > cut
    inv_gb = xp.where(alive, 1.0 / xp.where(alive, gb, xp.ones_like(gb)), xp.zeros_like(gb))
    c = coupling * xp.astype(alive, coupling.dtype)
    c2 = c * c
    dvec = gw - c2 * inv_gb  # D_j (dead unit: G_jj)
    regular = (dvec > pair_rtol * gw) & (gw > cut)  # V
    inv_d = xp.where(regular, 1.0 / xp.where(regular, dvec, xp.ones_like(dvec)), xp.zeros_like(dvec))
    c_z = xp.where(regular, xp.zeros_like(c), c)  # couplings of the degenerate weights
    nu2 = xp.sum(c_z * c_z, axis=1, keepdims=True) + gb * gb  # ν² = ‖u_Z‖²
    inv_nu = xp.where(alive, 1.0 / xp.sqrt(xp.where(alive, nu2, xp.ones_like(nu2))), xp.zeros_like(nu2))
    kappa = (gb + xp.sum(c2 * inv_d, axis=1, keepdims=True)) * (inv_nu * inv_nu)
    r_w = c * inv_d
    r_w *= inv_nu
    c_z *= inv_nu
    return inv_d, r_w, c_z, gb * inv_nu, kappa


#: elements per (rows × fan) working array of the fused quasi-diagonal step (2 MiB in float64): the
#: block's few arrays stay in the last-level cache while the update is applied, and each block's
#: GEMMs (inner dimension N) are long enough to amortise packing the N × fan right factor (with
#: 2^15 elements, 8 units at fan 4097, the packing doubled the GEMM time)
_CACHE_BLOCK = 1 << 18
#: units per sub-block where a block needs the pseudo-inverse pieces (ReLU at ρ = 0 and N = 100:
#: ≈ 1 % of the units are alive on a single sample, in a third of the 64-unit blocks)
_SUB_BLOCK = 8


def _quasi_block(xp, f, cpl, g, damping: float, cut: float, pair_rtol: float) -> bool:
    """Ollivier's update for a block of units, written into ``g`` (rows, m+1; bias last), when the
    block has no degenerate weight; False (``g`` untouched) otherwise.

    ``f``: diagonal of G (F + ρ, bias last), ``cpl``: σ_b F_bj (its last column is not used). With
    β_i = g_b/G_bb, D_j = G_jj − G_bj²/G_bb (module docstring):

        Δw_j = (g_j − G_bj β_i) / D_j,      Δb = (g_b − Σ_j G_bj Δw_j) / G_bb,

    which is :func:`_quasi_pieces`' closed form whenever ẑ lives on the bias alone (every weight with
    G_bj ≠ 0 is regular). Weights outside V with G_bj = 0 (a blank input, ρ = 0) get Δw_j = 0 (D_j
    replaced by +inf); a dead unit (G_bb <= cut) gets 1/G_bb := 0, hence β = 0, the diagonal step
    g_j / G_jj and Δb = 0, as there."""
    gb = f[:, -1:]
    alive = gb > cut
    inv_gb = xp.where(alive, 1.0 / xp.where(alive, gb, 1.0), 0.0)
    fw, cw, gw = f[:, :-1], cpl[:, :-1], g[:, :-1]
    if fw.shape[1] == 0:
        g[:, -1:] = g[:, -1:] * inv_gb
        return True
    dvec = cw * cw
    dvec *= -inv_gb
    dvec += fw  # D_j = G_jj − G_bj²/G_bb (G_jj on a dead unit)
    if damping > cut and to_float(xp.min(dvec)) > 0.0:
        denom = dvec  # ρ > 0: every G_jj >= ρ > cut and pair_rtol = 0, so V is every weight
    else:
        regular = (dvec > pair_rtol * fw) & (fw > cut)
        if to_float(xp.max(xp.abs(xp.where(regular, 0.0, cw)))) > 0.0:
            return False  # a coupled degenerate weight: ẑ leaves the bias
        denom = xp.where(regular, dvec, xp.inf)
    beta = g[:, -1:] * inv_gb
    t = cw * beta
    gw -= t
    gw /= denom  # Δw
    t = cw * gw
    g[:, :-1] = gw  # a no-op where ``gw`` is a view updated in place (NumPy, CuPy)
    g[:, -1:] = (g[:, -1:] - xp.sum(t, axis=1, keepdims=True)) * inv_gb
    return True


def _apply_quasi_pieces(xp, pieces: tuple, g) -> None:
    """g ← M_i g_i for every row of the (rows, m+1) gradient block ``g``, written into ``g``.

    :meth:`_LayerMap.apply` term by term, with μ_b = r_b = 0 used and the ẑ_w terms skipped
    when no weight is degenerate (the usual case: ẑ lives on the bias only).
    """
    inv_d, r_w, z_w, z_b, kappa = pieces
    gw, gbias = g[:, :-1], g[:, -1:]
    degenerate = to_float(xp.max(xp.abs(z_w))) > 0.0 if z_w.shape[1] else False
    zg = z_b * gbias  # ẑ·g
    if degenerate:
        zg = zg + xp.sum(z_w * gw, axis=1, keepdims=True)
    rg = xp.sum(r_w * gw, axis=1, keepdims=True)  # r·g
    out_w = inv_d * gw
    out_w -= r_w * zg
    if degenerate:
        out_w -= z_w * (rg - kappa * zg)
    g[:, -1:] = z_b * (kappa * zg - rg)
    g[:, :-1] = out_w


# ---- coefficient pieces ---------------------------------------------------------------------
def _diagonal_part(a_p, a, d_p, d, mu, symmetric: bool, budget: int):
    """Σ_i δ′_{k,s,i} δ_{k′,t,i} Σ_j a′_{sj} a_{tj} μ_ij as a (CN′, CN) matrix (not divided by N).

    a′ (N′, fan), a (N, fan), δ′ (C, N′, M), δ (C, N, M), μ (M, fan)."""
    xp = namespace_of(mu)
    c, n_p, m = d_p.shape
    n, fan = a.shape[0], a.shape[1]
    mu_t = mu.T  # (fan, M)
    rows = max(1, budget // max(1, n * max(fan, m)))
    blocks = []
    starts = list(range(0, n_p, rows))
    for s0 in starts:
        s1 = min(n_p, s0 + rows)
        t0 = s0 if symmetric else 0
        nt = n - t0
        pair = xp.reshape(a_p[s0:s1, None, :] * a[None, t0:, :], ((s1 - s0) * nt, fan))
        y = xp.reshape(pair @ mu_t, (s1 - s0, nt, m))  # Σ_j a′_sj a_tj μ_ij
        per_k = []
        for k in range(c):
            w = d_p[k, s0:s1, None, :] * y  # (r, nt, M)
            per_k.append(xp.stack([xp.sum(w * d[kk, None, t0:, :], axis=-1) for kk in range(c)], axis=1))
        blk = xp.stack(per_k, axis=0)  # (C, r, C, nt)
        if t0:
            blk = xp.concat([xp.zeros((c, s1 - s0, c, t0), dtype=blk.dtype), blk], axis=3)
        blocks.append(blk)
    full = xp.reshape(xp.concat(blocks, axis=1), (c * n_p, c * n))
    if not symmetric:
        return full
    # mirror the upper block triangle: Θ̄ = T + Tᵀ − T ∘ [same sample block]
    block_id = np.arange(n) // rows
    same = np.tile((block_id[:, None] == block_id[None, :]).astype(np.float64), (c, c))
    mask = to_device(same, backend_of(full))
    return full + full.T - full * mask


def _training_support(lay: _LayerArrays, threshold: float = 0.9):
    """Indices (units, inputs) of a layer where δ ≢ 0, resp. a ≢ 0, on the training set.

    Every term of Θ̄_{l,i}(x′, x) = Σ_jk δ′_i a′_j (M_i)_jk a_k δ_i carries a factor δ_i(x_t) and,
    for j, k ≠ bias, a_k(x_t) of the training set; for a dead unit (δ_i ≡ 0) or a zero input
    (a_k ≡ 0, whose F, G_bk, 1/D_k-part and r_k, ẑ_k are all 0) the term vanishes whatever
    x′ is. With ReLU on MNIST about half the hidden units are dead on all training samples
    (hence half the next layer's inputs are zero) and 40 % of the pixels are zero on all of
    them, so the map and the pair GEMM shrink about fourfold on a hidden layer. The bias
    column (σ_b ≠ 0) is always kept and stays last. ``None`` when it would remove < 10 %.
    """
    xp = namespace_of(lay.a)
    keep_u = np.asarray(to_host(xp.any(lay.d != 0.0, axis=(0, 1))), dtype=bool)  # (M,)
    keep_f = np.asarray(to_host(xp.any(lay.a != 0.0, axis=0)), dtype=bool)  # (fan,)
    if keep_u.mean() >= threshold and keep_f.mean() >= threshold:
        return None
    backend = backend_of(lay.a)
    return to_device(np.nonzero(keep_u)[0], backend, "int64"), to_device(np.nonzero(keep_f)[0], backend, "int64")


def _low_rank_factors(a_p, a, m: _LayerMap, symmetric: bool) -> tuple:
    """a′ rᵀ, a′ ẑᵀ (N′, rows), a rᵀ, a ẑᵀ (N, rows) and κ (1, rows) for a block of units.

    ẑ lives on the bias (the last column, where a = σ_b) and on the degenerate weights of
    ρ = 0; the weight part is usually empty and its GEMM is skipped. With x′ = x
    (``symmetric``) the x′ factors are the x factors.
    """
    xp = namespace_of(m.mu)
    z_w, z_b = m.z[:, :-1], xp.reshape(m.z[:, -1], (1, -1))
    dense = to_float(xp.max(xp.abs(z_w))) > 0.0 if z_w.shape[1] else False

    def onto_z(feat):
        out = feat[:, -1:] * z_b
        return out + feat[:, :-1] @ z_w.T if dense else out

    p2, z2 = a @ m.r.T, onto_z(a)
    if symmetric:
        return p2, z2, p2, z2, xp.reshape(m.kappa, (1, -1))
    return a_p @ m.r.T, onto_z(a_p), p2, z2, xp.reshape(m.kappa, (1, -1))


def _low_rank_part(d_p, d, p1, z1, p2, z2, kappa):
    """The −r ẑᵀ − ẑ rᵀ + κ ẑ ẑᵀ part of a′_s M_i a_tᵀ summed over units with δ′δ, (CN′, CN)."""
    xp = namespace_of(p1)
    c = d_p.shape[0]
    dp = xp.reshape(d_p, (c * d_p.shape[1], d_p.shape[2]))  # (CN′, M)
    d = xp.reshape(d, (c * d.shape[1], d.shape[2]))  # (CN, M)
    p1, z1, p2, z2 = (xp.tile(t, (c, 1)) for t in (p1, z1, p2, z2))
    left_z = dp * z1
    return -((dp * p1) @ (d * z2).T) - (left_z @ (d * p2).T) + ((left_z * kappa) @ (d * z2).T)


def _concat_maps(maps: list) -> _LayerMap:
    if len(maps) == 1:
        return maps[0]
    xp = namespace_of(maps[0].mu)
    if not maps[0].low_rank:
        return _LayerMap(xp.concat([m.mu for m in maps], axis=0))
    return _LayerMap(*(xp.concat([getattr(m, k) for m in maps], axis=0) for k in ("mu", "r", "z", "kappa")))


__all__ = ["DiagonalFisher", "QuasiDiagonalFisher"]
