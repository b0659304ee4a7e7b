"""Layer-wise Fisher approximations with any symmetric Σ (Eq. 15–16, Section 4, B.1–B.2).

G_layer = Sᵀ (Σ ⊗ I_CN) S / N + ρI, with S = blockdiag(∇_{θ_1}f, …, ∇_{θ_L}f) (CNL × P).
Σ = I is the block-diagonal (BD) approximation (Section 4.1, α = L); the tri-diagonal
Σ of Eq. 19 gives block tri-diagonal NGD (Section 4.2; α from Lemma 4.3); Σ = 11ᵀ
gives exact NGD (S.91).

Structured path (S.72–S.74, S.89): by the push-through identity
(Sᵀ Σ̃ S/N + ρI)⁻¹ Sᵀ = Sᵀ (Ω + ρI)⁻¹ with Ω = Σ̃ S Sᵀ/N, whose (l, m) block is
Σ_lm Θ_m (a CNL × CNL matrix built from the layer kernels Θ_l of S.68). So

    Δθ_l = ∇_{θ_l}fᵀ z_l / N,   z = (Ω + ρI)⁻¹ (1_L ⊗ (f − y)),
    Θ̄(x′, x) = Σ_l Θ_l(x′, x) R_l,   R = (Ω + ρI)⁻¹ (1_L ⊗ I_CN).

At ρ = 0 with Σ nonsingular and every Θ_l invertible, z_l = (Σ⁻¹1_L)_l Θ_l⁻¹ (f − y)
(S.89–S.90) and Θ̄ = Σ_l (Σ⁻¹1)_l Θ_l(x′, x) Θ_l⁻¹ (Eq. 16, α = 1ᵀΣ⁻¹1, Theorem 4.1): the
fast path. With a singular Θ_l (a dead unit, or M_{L−1} + 1 < N) S.89 with Θ_l⁺ is G⁺∇L only
for a diagonal Σ and the MSE metric; otherwise the zero-damping limit G⁺ is computed from the
layer kernels' eigendecompositions (:meth:`LayerWiseFisher._pseudo_inverse_resolvent`, still
CN-sized work). A singular Σ (the tri-diagonal Σ for L = 3s + 2, Lemma 4.3) has no zero-damping
limit: ρ = 0 is refused, ρ > 0 runs with a warning. Σ ∝ 11ᵀ is the exception of
S.91 and is handled as exact NGD.

Infinite width (:meth:`LayerWiseFisher.analytic_theta_bar`): Θ̄(x′, x) =
Σ_l (Σ⁻¹1)_l Θ_l(x′, x) Θ_l⁻¹ from the analytic layer kernels (Eq. 16, S.71).
"""

from __future__ import annotations

import warnings

import numpy as np

from ..backend import backend_of, dtype_name_of, namespace_of, to_device
from ..errors import ConfigError, NgdrefError
from ..jacobian import layer_vjp, layer_vjp_factors
from ..kernels import check_pair, kernel_inverse_operator, layer_projections
from ..linalg import default_rtol, numerically_singular, psd_pinv, small_matrix_rtol, spd_sqrt, symmetric_pinv, symmetrize
from ..ntk import layer_ntks
from . import cost
from .base import FisherApproximation, factor_product
from .exact import ExactFisher
from .spec import FisherOption, FisherSpec, register

__all__ = ["BlockDiagonalFisher", "LayerWiseFisher", "TriDiagonalFisher", "layerwise_alpha", "layerwise_weights",
           "parse_sigma", "tridiagonal_alpha", "tridiagonal_alpha_closed_form", "tridiagonal_sigma"]


# --------------------------------------------------------------------------------------
# Σ and α = 1ᵀΣ⁻¹1 (Theorem 4.1, Lemma 4.3)
# --------------------------------------------------------------------------------------
def _check_depth(L) -> int:
    integral = isinstance(L, (int, np.integer)) or (isinstance(L, float) and L.is_integer())
    if isinstance(L, bool) or not integral or int(L) < 1:
        raise ConfigError(f"depth L must be a positive integer, got {L!r}")
    return int(L)


def tridiagonal_sigma(L: int) -> np.ndarray:
    """Σ of the block tri-diagonal Fisher (Eq. 19): Σ_ij = 1 for |i − j| <= 1, 0 otherwise (L × L)."""
    L = _check_depth(L)
    idx = np.arange(L)
    return (np.abs(idx[:, None] - idx[None, :]) <= 1).astype(np.float64)


def _is_tridiagonal_preset(sigma: np.ndarray) -> bool:
    return sigma.shape[0] >= 1 and np.array_equal(sigma, tridiagonal_sigma(sigma.shape[0]))


def layerwise_weights(sigma, depth: int | None = None) -> np.ndarray:
    """Σ⁻¹ 1_L, the per-layer weights of Eq. 16, for a symmetric nonsingular Σ.

    Theorem 4.1 assumes Σ positive definite; only invertibility is used by the
    derivation (S.72–S.74), and the tri-diagonal Σ of Eq. 19 is nonsingular but
    indefinite (eigenvalues 1 + 2 cos(κπ/(L+1)), S.92). Raises NgdrefError if Σ is
    singular, with the explanation of Lemma 4.3 for the tri-diagonal Σ at L = 3s + 2.
    """
    s = np.asarray(sigma, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] == 0:
        raise ConfigError(f"Σ must be a square L x L matrix, got shape {s.shape}")
    if depth is not None and s.shape[0] != depth:
        raise ConfigError(f"Σ is {s.shape[0]} x {s.shape[0]} but the network has depth L = {depth}")
    _check_symmetric(s)
    L = s.shape[0]
    if _is_singular(s):
        if _is_tridiagonal_preset(s) and L % 3 == 2:
            raise NgdrefError(
                f"the block tri-diagonal Σ (Eq. 19) is singular for L = {L} = 3s + 2 (Lemma 4.3: "
                f"eigenvalue 1 + 2cos(2(s+1)π/(L+1)) = 0), so Theorem 4.1 does not apply and NGD with "
                "ρ -> 0 is unstable; use L = 3s or 3s + 1"
            )
        raise NgdrefError("Σ is singular; Theorem 4.1 needs an invertible Σ (α = 1ᵀΣ⁻¹1)")
    return np.linalg.solve(s, np.ones(L))


def layerwise_alpha(sigma) -> float:
    """α = 1ᵀ Σ⁻¹ 1 (Theorem 4.1) for a symmetric nonsingular Σ."""
    return float(np.sum(layerwise_weights(sigma)))


def tridiagonal_alpha(L: int) -> float:
    """Block tri-diagonal NGD: α = 1ᵀΣ⁻¹1 by a direct solve (NgdrefError for L = 3s + 2)."""
    return layerwise_alpha(tridiagonal_sigma(L))


def tridiagonal_alpha_closed_form(L: int, a: float = 1.0, b: float = 1.0) -> float:
    """1ᵀΣ⁻¹1 for the L × L tri-diagonal Toeplitz Σ (diagonal a, off-diagonal b), S.93–S.94.

    da Fonseca & Petronilho (2001): with r± = (a ± √(a² − 4b²))/(2b),
    σ1 = (Σ⁻¹)_11 = (1/b)(r+^L − r−^L)/(r+^{L+1} − r−^{L+1}) and
    σ2 = (Σ⁻¹)_1L = ((−1)^{L+1}/b)(r+ − r−)/(r+^{L+1} − r−^{L+1}),

        1ᵀΣ⁻¹1 = (L + 2b s)/(a + 2b),   s = (1 + b(σ1 + σ2))/(a + 2b)

    (s is the first column sum of Σ⁻¹). S.93 prints ``σ1 − σ2``; with σ2 = (Σ⁻¹)_1L as in
    S.94 the sum is required (L = 3, a = b = 1: σ1 = 0, σ2 = −1, α = 1; ``σ1 − σ2`` would
    give 13/9). For a = b = 1 (Eq. 19), r± = exp(±iπ/3) and α = s for L = 3s, s + 1 for
    L = 3s + 1 (Lemma 4.3); Σ is singular for L = 3s + 2 (NgdrefError).
    """
    L = _check_depth(L)
    a, b = float(a), float(b)
    if b == 0:
        if a == 0:
            raise NgdrefError("Σ = 0 is singular")
        return L / a
    if a + 2 * b == 0:
        raise NgdrefError("closed form S.93 needs a + 2b != 0")
    disc = complex(a * a - 4 * b * b)
    if abs(disc) <= 1e-14 * (a * a + 4 * b * b):  # repeated root r = a/(2b): the limit of S.94
        r = a / (2 * b)
        det_ratio = (L + 1) * r**L  # (r+^{L+1} − r−^{L+1})/(r+ − r−)
        sigma1 = (L * r ** (L - 1)) / (b * det_ratio)
        sigma2 = (-1) ** (L + 1) / (b * det_ratio)
    else:
        root = np.sqrt(disc)
        rp, rm = (a + root) / (2 * b), (a - root) / (2 * b)
        den = rp ** (L + 1) - rm ** (L + 1)
        if abs(den) <= 1e-12 * max(abs(rp), abs(rm)) ** (L + 1):
            if a == 1 and b == 1:
                raise NgdrefError(
                    f"the tri-diagonal Σ (Eq. 19) is singular for L = {L} = 3s + 2 (Lemma 4.3); "
                    "α = 1ᵀΣ⁻¹1 is undefined"
                )
            raise NgdrefError(f"the tri-diagonal Toeplitz Σ (a={a}, b={b}, L={L}) is singular")
        sigma1 = (rp**L - rm**L) / (b * den)
        sigma2 = (-1) ** (L + 1) * (rp - rm) / (b * den)
    s = (1 + b * (sigma1 + sigma2)) / (a + 2 * b)
    value = (L + 2 * b * s) / (a + 2 * b)
    return float(np.real(value))


def parse_sigma(text: str) -> np.ndarray:
    """Σ from the command line: rows separated by ';', entries by ',' (e.g. "1,0;0,1"). A nonsingular Σ with
    α = 1ᵀΣ⁻¹1 <= 0 (e.g. '1,0;0,-1', α = 0) is refused here, before any work: Θ̄ = αI (Eq. 16) would make
    NGD stand still or climb. Indefinite Σ with α > 0 stay allowed: Theorem 4.1 only inverts Σ, and the
    paper's tri-diagonal Σ (Eq. 19) is indefinite for L >= 3."""
    try:
        rows = [[float(v) for v in row.split(",")] for row in str(text).split(";")]
    except ValueError:
        raise ConfigError(f"Σ must be numbers, rows separated by ';' and entries by ',' (e.g. '1,0;0,1'), got {text!r}") from None
    if len({len(r) for r in rows}) != 1:
        raise ConfigError(f"Σ rows have different lengths: {text!r}")
    sigma = np.asarray(rows, dtype=np.float64)
    if sigma.shape[0] == sigma.shape[1] and np.all(np.isfinite(sigma)) and not _is_singular(sigma):
        alpha = float(np.sum(np.linalg.solve(sigma, np.ones(sigma.shape[0]))))
        if not alpha > small_matrix_rtol(sigma.shape[0]) * float(np.max(np.abs(np.linalg.inv(sigma)))):
            raise ConfigError(f"Σ = {text!r} gives α = 1ᵀΣ⁻¹1 = {alpha:.3g} <= 0 (Eq. 16): Θ̄ = αI is then not a descent "
                              "direction; use a Σ with 1ᵀΣ⁻¹1 > 0, e.g. a positive definite one like '1,0;0,1'")
    return sigma


def _check_symmetric(sigma: np.ndarray) -> None:
    if not np.all(np.isfinite(sigma)):
        raise ConfigError("Σ contains non-finite entries")
    scale = float(np.max(np.abs(sigma)))
    if float(np.max(np.abs(sigma - sigma.T))) > small_matrix_rtol(sigma.shape[0]) * scale:
        raise ConfigError("Σ must be symmetric (Eq. 15)")


def _is_singular(sigma: np.ndarray) -> bool:
    """Σ singular relative to its own scale (a Σ = 1e-9·I is as invertible as I)."""
    return numerically_singular(np.linalg.eigvalsh(0.5 * (sigma + sigma.T)), small_matrix_rtol(sigma.shape[0]))


def _is_all_ones_multiple(sigma: np.ndarray) -> bool:
    """Σ = c·11ᵀ with c > 0 (S.91: exact NGD with F scaled by c), relative to c."""
    c = float(sigma[0, 0])
    return c > 0 and float(np.max(np.abs(sigma - c))) <= small_matrix_rtol(sigma.shape[0]) * c


def _layer_flops(s: cost.Shape, damping: float) -> dict:
    cn, L = s.cn, s.depth
    if damping == 0:
        solve_cost, extra = L * (cost.pinv(cn) + 2.0 * cn**2), L * (cost.pinv(cn) + 2.0 * cn**3)
    else:
        solve_cost, extra = cost.solve(L * cn, cn) + L * 2.0 * cn**2, cost.solve(L * cn, cn) + L * 2.0 * cn**3
    return cost.model(
        (cost.layer_kernels(s) + solve_cost + cost.vjp(s), "kernels + L·pinv(CN) + L matvecs + vjp"),
        (cost.layer_kernels(s) + extra, "kernels + L·(pinv(CN) + Θ_l·R_l)"),
    )


@register
class LayerWiseFisher(FisherApproximation):
    """Layer-wise FIM with a symmetric L×L matrix Σ (Eq. 15)."""

    spec = FisherSpec(
        name="layer", title="layer-wise (Σ)", summary="layer-wise FIM Sᵀ(Σ⊗I)S/N (+ρI) with a user-given symmetric Σ",
        equations="Eq. 15-16", cross_entropy=True, flops=_layer_flops,
        options=(FisherOption("sigma", "Σ, L×L symmetric (rows separated by ';', e.g. '1,0;0,1')", parse=parse_sigma,
                              required=True),),
    )

    def __init__(self, network, damping: float | None = None, rtol=None, sigma=None):
        super().__init__(network, damping, rtol)
        if sigma is None:
            raise ConfigError("layer-wise FIM needs Σ (an L×L symmetric matrix); presets: bd, tridiag")
        sigma = np.asarray(sigma, dtype=np.float64)
        depth = network.depth
        if sigma.shape != (depth, depth):
            raise ConfigError(f"Σ must be {depth}×{depth} for a depth-{depth} network, got shape {sigma.shape}")
        _check_symmetric(sigma)
        self.sigma = sigma
        self.singular = _is_singular(sigma)
        self.is_exact = _is_all_ones_multiple(sigma)
        if self.singular and not self.is_exact:
            if self.damping == 0:
                layerwise_weights(sigma)  # raises the explanation (Lemma 4.3 for the tri-diagonal Σ)
            warnings.warn(
                f"Σ is singular (Lemma 4.3 for the tri-diagonal Σ at L = 3s+2): no zero-damping limit; "
                f"running with ρ = {self.damping}",
                RuntimeWarning,
                stacklevel=2,
            )

    def to_dict(self):
        return {**super().to_dict(), "sigma": self.sigma.tolist()}

    def analytic_alpha(self, n_samples):
        if self.is_exact:
            return 1.0 / float(self.sigma[0, 0])
        if self.singular:
            return None
        return layerwise_alpha(self.sigma)

    def _weights(self):
        """(Σ⁻¹ 1_L)_l of Eq. 16."""
        return layerwise_weights(self.sigma)

    def _exact_equivalent(self):
        # Σ = c·11ᵀ: G = c JᵀJ/N + ρI, i.e. exact NGD with F scaled by c (S.91)
        return ExactFisher(self.network, self.damping / float(self.sigma[0, 0]), self.rtol)

    def _resolvent(self, kernels, metric=None):
        """(Ω + ρI)⁻¹ (1_L ⊗ I_CN) split into L blocks R_l (each CN × CN); at ρ = 0 the blocks
        with Σ_l J_lᵀR_l = G⁺Jᵀ (so Δθ_l = J_lᵀR_l(f − y)/N and Θ̄(x′, x) = Σ_l Θ_l(x′, x)R_l).

        With a cross-entropy output metric Λ̃ (S.164) the blocks of Ω are Σ_lk Λ̃ Θ_k and
        at ρ = 0 with every Θ_l invertible, R_l = (Σ⁻¹1)_l Θ_l⁻¹ Λ̃⁻¹ (S.165–S.167).
        """
        xp = namespace_of(kernels[0])
        depth, m = len(kernels), kernels[0].shape[0]
        if self.damping == 0 and not self.singular:
            w = self._weights()
            blocks, full_rank = [], True
            for l in range(depth):
                pinv, rank = psd_pinv(kernels[l], self.rtol, with_rank=True)
                blocks.append(float(w[l]) * pinv)
                full_rank = full_rank and int(rank) == m
            # S.89 is G⁺ when every Θ_l is invertible (S.90), and for a diagonal Σ with the MSE metric
            # (G block diagonal: (J_lᵀJ_l)⁺J_lᵀ = J_lᵀ(J_lJ_lᵀ)⁺); otherwise the general limit
            if full_rank or (metric is None and not np.count_nonzero(self.sigma - np.diag(np.diag(self.sigma)))):
                if metric is None:
                    return blocks
                inv_metric = xp.linalg.inv(metric)
                return [b @ inv_metric for b in blocks]
            return self._pseudo_inverse_resolvent(kernels, metric)
        sig = to_device(self.sigma, backend_of(kernels[0]))
        if metric is not None:
            kernels = [metric @ k for k in kernels]
        rows = [xp.concat([sig[l, k] * kernels[k] for k in range(depth)], axis=1) for l in range(depth)]
        omega = xp.concat(rows, axis=0)  # block (l, k) = Σ_lk Θ_k
        rhs = xp.concat([xp.eye(m, dtype=omega.dtype)] * depth, axis=0)
        r = _damped_nonsym_solve(omega, rhs, self.damping)
        return [r[l * m : (l + 1) * m, :] for l in range(depth)]

    def _pseudo_inverse_resolvent(self, kernels, metric=None):
        """The blocks R_l of G⁺ at ρ = 0 for a nonsingular Σ and singular layer kernels Θ_l.

        Derivation (MSE first). Let J_l = ∇_{θ_l}f (CN × P_l) and Θ_l = J_lJ_lᵀ/N = U_l Λ_l U_lᵀ
        with U_l the r_l = rank Θ_l eigenvectors of nonzero eigenvalue (S.68). Then
        J_l = U_l D_l V_lᵀ with D_l = (NΛ_l)^{1/2} and V_l = J_lᵀU_lD_l⁻¹ (P_l × r_l,
        V_lᵀV_l = I): the thin SVD of J_l from an N-sized eigendecomposition. Block (l, m) of
        G = Sᵀ(Σ ⊗ I_CN)S/N (Eq. 15, S.72) is Σ_lm J_lᵀJ_m/N = V_l K_lm V_mᵀ with

            K_lm = Σ_lm D_l U_lᵀU_m D_m/N = Σ_lm W_lᵀW_m,   W_l = U_l Λ_l^{1/2}  (Θ_l = W_lW_lᵀ),

        i.e. G = V K Vᵀ, V = blockdiag(V_l) with orthonormal columns and K = (WᵀW) ∘ (Σ expanded
        to the r_l × r_m blocks), W = [W_1 … W_L] (CN × Σ r_l). Hence G⁺ = V K⁺ Vᵀ (the
        Moore–Penrose conditions carry over through V), and the nonzero spectrum of G is K's.
        With ∇L = Jᵀe/N (e = f − y), Vᵀ∇L has blocks D_lU_lᵀe/N = W_lᵀe/√N, so

            Δθ_l = V_l (K⁺Wᵀe)_l/√N = J_lᵀ R_l e/N,   R_l = U_lΛ_l^{-1/2} (K⁺Wᵀ)_l

        ((K⁺Wᵀ)_l: the r_l rows of layer l; U_lΛ_l^{-1/2} = (W_lᵀ)⁺; the √N cancel). J_l never
        appears: Δθ_l = layer_vjp(R_l e)/N. In the same basis J_l(x′)V_l = NΘ_l(x′, x)U_lD_l⁻¹ and
        V_mᵀJ_m(x)ᵀ = D_mU_mᵀ, so Θ̄(x′, x) = J(x′)G⁺J(x)ᵀ/N = Σ_l Θ_l(x′, x) R_l with the same R_l
        (Eq. 11). With every Θ_l invertible, K = Ŵᵀ(Σ ⊗ I)Ŵ (Ŵ = blockdiag(W_l) square) and
        R_l = (Σ⁻¹1)_l Θ_l⁻¹: S.89–S.90, the fast path of :meth:`_resolvent`. With a singular Θ_l
        the per-layer pseudo-inverse of S.89 is not this unless Σ is diagonal (K then block
        diagonal). The damped path (S.73–S.74) tends to it as ρ → 0, linearly in ρ (∇L lies in the
        range of G when K is invertible, which a positive definite Σ guarantees).

        Cross-entropy (S.159, S.164): G = Sᵀ(Σ ⊗ Λ̃)S/N with Λ̃ = Λ + ρ̃I positive definite. With
        J̃_l = Λ̃^{1/2}J_l this is the MSE case for the kernels Θ̃_l = Λ̃^{1/2}Θ_lΛ̃^{1/2} (same rank)
        and Jᵀv = Σ_l J̃_lᵀΛ̃^{-1/2}v, so R_l = Λ̃^{1/2} R̃_l Λ̃^{-1/2}. (Here even Σ = I needs this
        path: Θ_l⁺Λ̃⁻¹ of S.167 equals Λ̃^{1/2}Θ̃_l⁺Λ̃^{-1/2} only on an invertible Θ_l.)

        Cut-offs (:mod:`ngdref.linalg`'s conventions): r_l counts the eigenvalues of Θ_l above
        rtol·λ_max with rtol = CN·eps (or the user's ``rtol``), exactly the rank that the fast
        path's :func:`~ngdref.linalg.psd_pinv` uses, so the two paths agree on what "singular" is.
        K⁺ drops |κ| <= rtol·max|κ| with rtol = (Σ r_l)·eps, NumPy's pinv rule for the matrix
        actually decomposed (:func:`~ngdref.linalg.symmetric_pinv`): eigh's backward error on
        an n×n matrix is O(n·eps·‖K‖), so smaller eigenvalues cannot be told from 0. The
        absolute value is needed because K is indefinite for an indefinite Σ (tri-diagonal,
        S.92). The explicit P×P pseudo-inverse would use P·eps; K carries the same information
        at size Σ r_l <= L·CN, and the rule follows the size of the matrix decomposed.

        Cost: L eigh(CN) (Θ_l; the fast path's are redone, once, on this rare path), one
        eigh(Σ r_l) <= eigh(L·CN) — the size of the damped path's solve — and products of that size.
        """
        xp = namespace_of(kernels[0])
        m = kernels[0].shape[0]
        half = inv_half = None
        if metric is not None:
            half, inv_half = spd_sqrt(metric)
            kernels = [half @ k @ half for k in kernels]
        factors, co_factors, k_pinv, offsets = self._pinv_factors(kernels, with_w=True)
        if int(offsets[-1]) == 0:  # G = 0
            return [xp.zeros((m, m), dtype=kernels[0].dtype) for _ in kernels]
        sol = k_pinv @ xp.concat(factors, axis=1).T  # K⁺Wᵀ, (Σ r_l) × CN
        blocks = [c @ sol[int(a) : int(b), :] for c, a, b in zip(co_factors, offsets[:-1], offsets[1:])]
        return blocks if metric is None else [half @ b @ inv_half for b in blocks]

    def precondition(self, signals, v, output_metric=None):
        return factor_product(self.precondition_factors(signals, v, output_metric))

    def precondition_factors(self, signals, v, output_metric=None):
        """Δθ_l = ∇_{θ_l}fᵀ R_l v / N per layer as :func:`~ngdref.jacobian.layer_vjp_factors` of R_l v / N."""
        if self.is_exact:
            scale = float(self.sigma[0, 0])
            return [(left / scale, right)
                    for left, right in self._exact_equivalent().precondition_factors(signals, v, output_metric)]
        xp = namespace_of(v)
        c, n = v.shape
        kernels = layer_ntks(signals)
        r = self._resolvent(kernels, output_metric)
        vec = xp.reshape(v, (c * n, 1))  # Δθ_l = ∇_{θ_l}fᵀ R_l v / N
        out = []
        for l, (rl, _) in enumerate(zip(r, kernels), start=1):
            z = xp.reshape(rl @ vec, (c, n))
            out.append(layer_vjp_factors(signals, l, z / float(n)))  # 1/N on the CN side
        return out

    # ---- matrix-free G v and G⁻¹ v (ngdref.fisher.operators) ---------------------------------
    def fisher_matvec(self, signals, v, cache=None):
        """G v with z_m = ∇_{θ_m}f v_m (C, N): (G v)_l = ∇_{θ_l}fᵀ (Σ_m Σ_lm z_m)/N + ρv_l (Eq. 15);
        L jvps and L vjps."""
        depth = self.network.depth
        z = [self._layer_jvp(signals, m, v[m - 1]) for m in range(1, depth + 1)]
        out = []
        for l in range(1, depth + 1):
            o = layer_vjp(signals, l, self._mix(z, l) / float(signals.n))
            if self.damping > 0:
                o += self.damping * v[l - 1]
            out.append(o)
        return out

    def inverse_matvec(self, signals, v, cache=None):
        """G⁻¹ v on any v, with CN- and CNL-sized matrices only. S = blockdiag(∇_{θ_l}f),
        Σ̃ = Σ ⊗ I_CN, Ω = Σ̃SSᵀ/N (block (l, m) = Σ_lm Θ_m, as :meth:`_resolvent`).

        ρ > 0 (Woodbury, S.73): G⁻¹v = (v − Sᵀ(Ω + ρI)⁻¹Σ̃Sv/N)/ρ.
        ρ = 0: G = V K Vᵀ with V_l = ∇_{θ_l}fᵀU_l(NΛ_l)^{-1/2} (orthonormal columns) and K of
        :meth:`_pseudo_inverse_resolvent`, so G⁺v = V K⁺ Vᵀv: per layer t_l = Λ_l^{-1/2}U_lᵀ(∇_{θ_l}f v_l)/√N,
        s = K⁺t, (G⁺v)_l = ∇_{θ_l}fᵀ U_lΛ_l^{-1/2} s_l/√N — any nonsingular Σ, singular Θ_l included.
        Σ ∝ 11ᵀ (S.91) is exact NGD's."""
        if self.is_exact:
            c = float(self.sigma[0, 0])
            return [o / c for o in self._exact_equivalent().inverse_matvec(signals, v, cache)]
        xp = namespace_of(signals.f)
        cache = {} if cache is None else cache
        depth, n = self.network.depth, signals.n
        z = [self._layer_jvp(signals, m, v[m - 1]) for m in range(1, depth + 1)]
        c = z[0].shape[0]
        cn = c * n
        if self.damping > 0:
            if "layer:omega-inverse" not in cache:
                kernels = layer_ntks(signals)
                sig = to_device(self.sigma, backend_of(kernels[0]))
                rows = [xp.concat([sig[l, k] * kernels[k] for k in range(depth)], axis=1) for l in range(depth)]
                omega = xp.concat(rows, axis=0)
                cache["layer:omega-inverse"] = xp.linalg.inv(omega + self.damping * xp.eye(depth * cn, dtype=omega.dtype))
            w = [xp.reshape(self._mix(z, l), (cn,)) for l in range(1, depth + 1)]
            y = cache["layer:omega-inverse"] @ xp.concat(w, axis=0) / float(n)
            return [(v[l - 1] - layer_vjp(signals, l, xp.reshape(y[(l - 1) * cn : l * cn], (c, n)))) / self.damping
                    for l in range(1, depth + 1)]
        if "layer:pinv-factors" not in cache:
            cache["layer:pinv-factors"] = self._pinv_factors(layer_ntks(signals))
        co_factors, k_pinv, offsets = cache["layer:pinv-factors"]
        root_n = float(n) ** 0.5
        t = xp.concat([co.T @ xp.reshape(zl, (cn,)) for co, zl in zip(co_factors, z)], axis=0) / root_n
        s = k_pinv @ t if t.shape[0] else t
        return [layer_vjp(signals, l, xp.reshape(co @ s[int(a) : int(b)], (c, n)) / root_n)
                for l, (co, a, b) in enumerate(zip(co_factors, offsets[:-1], offsets[1:]), start=1)]

    def _mix(self, z, layer: int):
        """Σ_m Σ_lm z_m for l = ``layer`` (1-based), a new (C, N) array."""
        out = 0.0 * z[0]
        for m, zm in enumerate(z):
            if self.sigma[layer - 1, m] != 0:
                out += float(self.sigma[layer - 1, m]) * zm
        return out

    def _pinv_factors(self, kernels, with_w: bool = False):
        """(U_lΛ_l^{-1/2} per layer, K⁺, offsets of the r_l blocks): the factors of G⁺ = V K⁺ Vᵀ derived in
        :meth:`_pseudo_inverse_resolvent` (r_l: eigenvalues of Θ_l above CN·eps·λ_max; K⁺ by
        :func:`~ngdref.linalg.symmetric_pinv`); ``with_w=True`` puts W_l = U_lΛ_l^{1/2} per layer first."""
        xp = namespace_of(kernels[0])
        m = kernels[0].shape[0]
        rtol = default_rtol(m, dtype_name_of(kernels[0])) if self.rtol is None else float(self.rtol)
        factors, co_factors = [], []
        for k in kernels:
            lam, u = xp.linalg.eigh(symmetrize(k))
            r = int(xp.sum(xp.astype(lam > rtol * xp.max(xp.abs(lam)), xp.int64)))
            lam, u = lam[m - r :], u[:, m - r :]  # eigh sorts ascending: the r kept are last
            root = xp.sqrt(lam)
            factors.append(u * root[None, :])  # W_l = U_l Λ_l^{1/2}
            co_factors.append(u / root[None, :])  # (W_lᵀ)⁺ = U_l Λ_l^{-1/2}
        sizes = [f.shape[1] for f in factors]
        offsets = np.cumsum([0] + sizes)
        if sum(sizes) == 0:
            k_pinv = xp.zeros((0, 0), dtype=kernels[0].dtype)
        else:
            w = xp.concat(factors, axis=1)  # CN × Σ r_l
            sigma = to_device(np.repeat(np.repeat(self.sigma, sizes, axis=0), sizes, axis=1), backend_of(kernels[0]))
            k_pinv = symmetric_pinv((w.T @ w) * sigma, self.rtol)  # K_lm = Σ_lm W_lᵀW_m
        return (factors, co_factors, k_pinv, offsets) if with_w else (co_factors, k_pinv, offsets)

    def _theta_bar(self, s, s_prime):
        if self.is_exact:
            return self._exact_equivalent()._theta_bar(s, s_prime) / float(self.sigma[0, 0])
        kernels = layer_ntks(s)
        cross = kernels if s_prime is None else layer_ntks(s_prime, s)
        r = self._resolvent(kernels)
        return sum(k @ rl for k, rl in zip(cross, r))

    def analytic_theta_bar(self, cross, train, forster=False):
        """Θ̄(x′, x) = Σ_l (Σ⁻¹1)_l Θ_l(x′, x) Θ_l⁻¹ (Eq. 16, S.71), α = 1ᵀΣ⁻¹1; C = 1 block.

        Σ may be any symmetric nonsingular matrix (Theorem 4.1 says "positive definite", but the
        derivation S.72–S.74 only inverts Σ; the tri-diagonal Σ of Eq. 19 is indefinite for every
        L >= 3). Σ = c·11ᵀ is exact NGD scaled by 1/c (S.91)."""
        if self.is_exact:
            return self._exact_equivalent().analytic_theta_bar(cross, train) / float(self.sigma[0, 0])
        check_pair(cross, train)
        weights = layerwise_weights(self.sigma, train.depth)
        layers = [l for l, w in enumerate(weights, start=1) if w != 0]  # 0·Θ_lΘ_l⁻¹ adds exact zeros
        if not layers:
            return np.zeros((cross.x1.shape[0], train.n))
        return sum(weights[l - 1] * p for l, p in zip(layers, layer_projections(cross, train, layers=layers)))

    def analytic_theta_bar_train(self, train):
        """Θ̄(x, x) = Σ_l (Σ⁻¹1)_l Θ_lΘ_l⁻¹ (Eq. 16; = αI up to rounding) as an operator
        v ↦ Σ_l (Σ⁻¹1)_l Θ_l(Θ_l⁻¹v), O(L N²) per vector, sharing the factors of :meth:`analytic_theta_bar`."""
        check_pair(train, train)
        if self.is_exact:
            return kernel_inverse_operator([(1.0 / float(self.sigma[0, 0]), train.ntk, train.factor())], train.n)
        weights = layerwise_weights(self.sigma, train.depth)
        return kernel_inverse_operator([(float(w), train.layer_ntks[l - 1], train.factor(l))
                                        for l, w in enumerate(weights, start=1) if w != 0], train.n)


def _damped_nonsym_solve(omega, rhs, damping):
    """(Ω + ρI)⁻¹ rhs for the (non-symmetric) Ω = Σ̃ SSᵀ/N."""
    xp = namespace_of(omega)
    eye = xp.eye(omega.shape[0], dtype=omega.dtype)
    return xp.linalg.solve(omega + damping * eye, rhs)


@register
class BlockDiagonalFisher(LayerWiseFisher):
    """Block-diagonal (BD) approximation, Σ = I (Section 4.1, Eq. 18; α = L)."""

    spec = FisherSpec(
        name="bd", title="block-diagonal", summary="block-diagonal (one block per layer), Σ = I; α = L",
        equations="Eq. 15-18", aliases=("block-diagonal",), cross_entropy=True, flops=_layer_flops,
    )

    def __init__(self, network, damping: float | None = None, rtol=None):
        super().__init__(network, damping, rtol, sigma=np.eye(network.depth))


@register
class TriDiagonalFisher(LayerWiseFisher):
    """Block tri-diagonal approximation, Σ of Eq. 19 (Section 4.2, Lemma 4.3)."""

    spec = FisherSpec(
        name="tridiag", title="block tri-diagonal",
        summary="block tri-diagonal, Σ of Eq. 19; α = s (L=3s), s+1 (L=3s+1); singular for L=3s+2",
        equations="Eq. 19, Lemma 4.3", aliases=("tri-diagonal",), cross_entropy=True, flops=_layer_flops,
    )

    def __init__(self, network, damping: float | None = None, rtol=None):
        super().__init__(network, damping, rtol, sigma=tridiagonal_sigma(network.depth))
