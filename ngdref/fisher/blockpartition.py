"""Block-partition Fisher: unit-wise blocks (Eq. 23) split or merged — an *extension* (Section 5).

Section 5 asks for "any approximation satisfying the isotropic condition that is larger than
the entry-wise approximation but smaller than the unit-wise one". This family interpolates:
θ_l = [W_l | b_l] (M_l × fan_l, fan_l = M_{l−1} + [σ_b > 0], the bias the last column, as in
:mod:`ngdref.network`'s flat order) is cut into rectangular tiles of ``g`` consecutive units
(rows) × ``k`` consecutive columns, and G keeps the FIM's diagonal blocks on those tiles:

    G_block = ⊕_{l, B} (J_Bᵀ J_B / N + ρI),     J_B = ∇_{θ_B} f  (CN × q_B),  q_B = |rows|·|cols|,

with the rows of J_B δ_{l,i}^{(k)}(x_n) a_{l−1}(x_n)_j (i ∈ rows, j ∈ cols; S.64).

* ``k`` = "all" (or k >= fan_l), ``g`` = 1: the unit-wise FIM (Eq. 23), θ_i^{(l)} = [W_{i,:} | b_i];
* ``k`` = "all", ``g`` = "all" (or g >= M_l): the block-diagonal FIM (Section 4.1, Σ = I);
* ``k`` = 1, ``g`` = 1: the diagonal FIM (entry-wise, Fig. 3);
* ``k`` < fan_l, ``g`` = 1: the *sub-unit* FIMs, groups of k incoming weights of one unit.

The bias joins a group as the unit's last column: columns are cut into consecutive groups
[0, k), [k, 2k), … of [W_{i,:} | b_i] and the last group takes the remainder, so every group
holds k … 2k − 1 columns (⌊fan_l/k⌋ groups; one, the whole row, when k > fan_l/2) and the bias
belongs to the last one. This keeps the tiles a partition of θ_l whatever k is, makes
k = M_{l−1} + 1 exactly unit-wise, and never leaves a group smaller than k — which matters: a
tile is a diagonal projector only when it has at least as many (non-zero, independent) columns as
the samples its units are alive on (see Isotropy below), and a short remainder group would break that for every unit.
Tiles of ``g`` units are cut the same way (the last group takes the remainder); units of a
layer are exchangeable at initialisation, so which g are grouped is immaterial. k and g apply
to every layer, each capped at the layer's own size.

Structured path (no P×P G, no CN×P Jacobian held at once). Per tile B, with the
push-through identity (Jᵀ J/N + ρI)⁻¹ Jᵀ = Jᵀ (J Jᵀ/N + ρI)⁻¹ (the Woodbury form used by
Eq. 23's unit-wise NGD, S.130–S.131):

* **dual** (q_B > CN): the tile's CN×CN kernel is a Hadamard product of two Grams,

      J_B J_Bᵀ = (δ_R δ_Rᵀ) ∘ (1_C1_Cᵀ ⊗ a_K a_Kᵀ),    δ_R = δ_l on the tile's units (CN × |R|),
                                                        a_K = a_{l−1} on its columns (N × |K|),

  so Δθ_B = δ_Rᵀ-weighted a_K: z = (J_BJ_Bᵀ/N + ρI)⁻¹ v, Δθ_B[i, j] = Σ_{k,n} z_k(x_n)
  δ_{l,i}^{(k)}(x_n) a_{nj} / N, and Θ̄_B(x′, x) = [(δ′_R δ_Rᵀ) ∘ (1⊗a′_K a_Kᵀ)] (J_BJ_Bᵀ/N + ρI)⁻¹/N;
* **primal** (q_B <= CN): J_B is formed for a chunk of tiles (CN × q_B each; chunks stay below
  max(P_l/4, 2^21) elements), F_B = J_BᵀJ_B/N (q_B × q_B) and Δθ_B = (F_B + ρI)⁻¹ J_Bᵀ v / N,
  Θ̄_B(x′, x) = J_B(x′)(F_B + ρI)⁻¹J_B(x)ᵀ/N — all tiles of a chunk in one GEMM.

Both inverses are taken on the block's numerical range by one batched ``eigh``:
Σ_{λ > τ} u uᵀ/(λ + ρ) with τ = rtol·λ_max (rtol = ``rtol`` or n·eps, :func:`ngdref.linalg.psd_pinv`'s
rule for the n×n matrix decomposed). At ρ = 0 this is the pseudo-inverse (the zero-damping
limit). At ρ > 0 it is exactly (K + ρI)⁻¹ on every vector of range(K) — and J_Bᵀv (primal) or
the part of v that J_Bᵀ does not annihilate (dual) always is — so dropping the eigenvalues at
or below τ changes nothing but rounding: those eigenvalues cannot be told from 0 by ``eigh``,
and the literal solve would amplify their rounding by 1/ρ (1e12 at the default ρ). Tiles are
rank-deficient whenever q_B < CN or samples are dead (ReLU: δ_i(x_n) = 0), so this matters.

Certified tiles (whole fan-in, C = 1: the default k = "all"). A tile's kernel is then Σ_{i∈R} D_i G D_i / N with
G = a aᵀ (N×N, shared by the layer) and D_i = diag(δ_i); it vanishes off the tile's alive samples
S = {n : e(x_n) > 0}, e = Σ_{i∈R} δ_i², and on S its eigenvalues lie in [λ_min(G)·min_S e, λ_max(G)·max e]/N.
Where that interval clears the cut-off by CERTIFY_MARGIN (λ_min(G)·min_S e > 64·rtol·λ_max(G)·max e, λ_min(G) by
one ``eigvalsh`` per layer, lowered by N·eps·λ_max(G) for its rounding), or where a Cholesky test of the alive
block shifted by that floor succeeds (:func:`_definite_above`; the bound is loose by up to cond(G)), the range
inverse keeps exactly the S block. It is then one Cholesky solve of the kernel + diag(ρ on S, 1 off S), filled
matrix by matrix and never stacked (:func:`ngdref.linalg.spd_solve_hadamard`: N³/3 flops and 2N² per right-hand
side, against ≈ 11 N³ for eigh and the inverse); at ρ = 0 the single units alive on every sample share one
factorisation of G/N, (D G D/N)⁻¹ = D⁻¹(G/N)⁻¹D⁻¹ (as unit-wise's exact mode); tiles alive on no sample need none;
and Θ̄(x, x) at ρ = 0 on a certified tile is the projector diag(1_S) in closed form (S.137). Where every tile holds
whole rows and is dual the direction is factored, Δθ_l = coef_l a_{l−1} (:meth:`BlockPartitionFisher.precondition_factors`).
The other tiles (a δ spanning more orders of magnitude than the margin allows, a singular G, C > 1, sub-unit k)
take the ``eigh`` path. On MNIST at M = 4096 (``ngdref train``'s data, σ_b² = 0.5): 4,005 of layer 1's 4,096 units
certified by the bound, 4,050 with the Cholesky test (the 46 left have λ_min/λ_max 1.7e-14 … 2.1e-11, at the
cut-off), all of the other layers'.

All N- and tile-sized algebra is float64 (as :mod:`ngdref.fisher.unitwise`); results are
returned in the network's dtype (the factored direction's parameter-sized product runs in it, as unit-wise's).

Isotropy. At ρ → 0, Θ̄(x, x) = Σ_B Π_B, Π_B the orthogonal projector onto the range of J_B in
function space (Eq. 11), so tr Θ̄ = Σ_B rank J_B. For whole rows (k = "all"), C = 1 and
K_l = a a ᵀ positive definite (fan_l >= N, independent inputs), range J_B = span{e_n : some unit
of the tile is alive on x_n}, so Θ̄ = Σ_{l,B} diag(1[∃ i ∈ B: δ_{l,i}(x_n) ≠ 0]) exactly, and at
large width (units independent given the previous layer) α = Σ_{l<L} Σ_B (1 − (1 − γ_l)^{|B|}) + 1
(γ_l of S.140–S.141; +1 the output unit, as :meth:`UnitWiseFisher.analytic_alpha`): Σ γ_l M_l + 1
at g = 1 (S.128), → L at g = M_l (Section 4.1). For k < fan_l each Π_B projects onto
diag(δ_R)·(a k-dimensional subspace), which is not diagonal: no α is derived (the
``sub-unit`` extension figure measures Θ̄). A single-unit tile is the exact diagonal projector
diag(1[δ_i(x_n) ≠ 0]) as soon as a_K restricted to the unit's alive samples S_i has full row
rank: at least |S_i| of its k_B columns non-zero and independent there. ReLU units with σ_b² > 0
are alive on anything from none to all N samples, and a dead unit of layer l − 1 (or a blank
pixel) is a zero column of a_{l−1}, so that needs k well above N (measured on Fig. 3's setting
and MNIST: k ≈ 1.5–2 N; REPRODUCTION.md, "Extension: sub-unit block Fishers").
"""

from __future__ import annotations

import numpy as np

from ..backend import as_float64, backend_of, namespace_of, to_device, to_host
from ..errors import ConfigError
from ..kernels import layer_gammas
from ..linalg import default_rtol, psd_pinv, spd_solve_hadamard, spd_solve_stack, symmetrize
from ..threads import Pool, blas_context
from . import cost
from .base import FisherApproximation, factor_product
from .spec import FisherOption, FisherSpec, register

__all__ = ["BlockPartitionFisher", "block_alpha", "parse_group_size"]

ALL = "all"
#: a tile is solved by Cholesky when its kernel's eigenvalue bounds clear the range inverse's cut-off by this factor
#: (:meth:`BlockPartitionFisher._certified`): the rounding of the kernel's entries and of eigh moves eigenvalues by a
#: few n·eps·λ_max, far below 64 cut-offs
CERTIFY_MARGIN = 64.0


def parse_group_size(text) -> int | None:
    """A group size from the command line or the library: a positive integer, or "all" (None)."""
    if text is None or (isinstance(text, str) and text.strip().lower() == ALL):
        return None
    if isinstance(text, bool):
        raise ConfigError(f"a group size must be a positive integer or 'all', got {text!r}")
    if isinstance(text, (int, np.integer)):
        value = int(text)
    elif isinstance(text, float) and text.is_integer():
        value = int(text)
    else:
        try:
            value = int(str(text).strip())
        except ValueError:
            raise ConfigError(f"a group size must be a positive integer or 'all', got {text!r}") from None
    if value < 1:
        raise ConfigError(f"a group size must be a positive integer or 'all', got {text!r}")
    return value


def _cuts(size: int, chunk: int | None) -> list[np.ndarray]:
    """Consecutive groups of ``chunk`` indices of range(size), the last one taking the remainder (so it
    holds chunk … 2·chunk − 1 indices; None or chunk >= size: one group), as index arrays (count, length)
    per distinct length (at most two: the full groups, then the last one)."""
    chunk = size if chunk is None else min(int(chunk), size)
    groups = size // chunk
    out = []
    if groups > 1:
        out.append(np.arange((groups - 1) * chunk).reshape(groups - 1, chunk))
    out.append(np.arange((groups - 1) * chunk, size).reshape(1, -1))
    return out


def _whole_rows_in_order(tiles, fan: int) -> bool:
    """Every tile of the layer holds whole rows (one column group spanning the fan-in): the chunks of
    :meth:`BlockPartitionFisher._chunks` then come as consecutive groups of rows, in θ_l's own order."""
    return all(cols.shape == (1, fan) for _, cols in tiles)


def _in_layer_order(values: list, positions: list, backend):
    """The tiles' flat pieces ``values`` as θ_l's flat vector: concatenated as they are where ``positions`` is
    empty (the pieces already in θ_l's order, :func:`_whole_rows_in_order`), else placed by a stable argsort of
    the pieces' flat indices in θ_l. Empties both lists as it goes: at most two P_l-sized float arrays at once
    (with the scatter, also the P_l int64 indices and their order)."""
    xp = namespace_of(values[0])
    flat = xp.concat(values)
    values.clear()
    if positions:
        order = to_device(np.argsort(np.concatenate(positions), kind="stable"), backend, "int64")
        positions.clear()
        flat = xp.take(flat, order)
    return flat


def _definite_above(factors, gram, floor) -> np.ndarray:
    """Per tile u (host NumPy): whether m_u = (F_S F_Sᵀ) ∘ G_SS, F = ``factors[u]`` (N, r) on its alive samples S,
    has every eigenvalue above ``floor[u]`` — proved by a successful floating-point Cholesky factorisation of
    m_u − (floor[u] + c_u)I with c_u = 2(|S| + 1)·eps·tr(m_u), which covers that factorisation's rounding (Rump,
    "Verification of positive definiteness", BIT 46, 2006: success with c_u ≥ γ_{|S|+1}·tr(m_u) proves the
    shifted matrix positive definite)."""
    out = np.zeros(factors.shape[0], dtype=bool)
    eps = np.finfo(np.float64).eps
    for u in range(factors.shape[0]):
        alive = np.flatnonzero((factors[u] != 0.0).any(axis=1))
        f = factors[u][alive]
        m = (f @ f.T) * gram[np.ix_(alive, alive)]
        shift = float(floor[u]) + 2.0 * (alive.size + 1) * eps * float(np.trace(m))
        try:
            np.linalg.cholesky(m - shift * np.eye(alive.size))
        except np.linalg.LinAlgError:
            continue
        out[u] = True
    return out


def block_alpha(net, g: int | None) -> float:
    """α of the whole-row block-partition FIM (k = "all"), C = 1: Σ_{l<L} Σ_B (1 − (1 − γ_l)^{|B|}) + 1.

    The expected number of unit groups with a unit alive on a sample (units independent at large
    width, γ_l = P(φ′(u) ≠ 0) of S.140–S.141), plus 1 for the output unit (δ_L = 1). g = 1 is
    unit-wise's Σ γ_l M_l + 1 (S.128); g = M_l gives L − Σ_l (1 − γ_l)^{M_l} → L (Section 4.1).
    """
    if net.n_outputs != 1:
        raise ConfigError(f"the block-partition α is derived for C = 1, got C = {net.n_outputs}")
    gammas = layer_gammas(net)
    alpha = 1.0
    for gamma, m in zip(gammas, net.widths[1:-1]):
        for groups in _cuts(m, g):
            count, size = groups.shape
            alpha += count * (1.0 - (1.0 - gamma) ** size)
    return float(alpha)


def _tiles(s: cost.Shape, layer: int, k: int | None, g: int | None):
    """(count, rows per tile, columns per tile) for each tile shape of a layer."""
    for rows in _cuts(s.m(layer), g):
        for cols in _cuts(s.fan(layer), k):
            yield rows.shape[0] * cols.shape[0], rows.shape[1], cols.shape[1]


def _flops(k: int | None, g: int | None):
    def model(s: cost.Shape, damping: float) -> dict:
        """Per tile of q = |R|·|K| parameters: primal (q <= CN) forms J_B (CN·q), F_B (2CN·q²), eigh and
        its inverse (11q³), J_Bᵀv and the product (2CN·q + 2q²); dual (q > CN) forms δ_Rδ_Rᵀ (2(CN)²|R|),
        a_Ka_Kᵀ (2N²|K|; once per layer where the tiles span the fan-in, |K| = fan_l), eigh + inverse
        (11(CN)³), the product and Δθ_B (2(CN)² + 2CN|R| + 2N·q). Θ̄: primal J_B(x′)(F_B+ρI)⁻¹J_B(x)ᵀ
        (2q²CN + 2(CN)²q), dual the Hadamard kernel times the inverse (2(CN)³). Dual tiles spanning the fan-in at
        C = 1 with fan_l >= N are counted as certified (module docstring; the generic case): a Cholesky solve
        (cost.solve's (2/3)N³ + 2N²k convention, as unit-wise's) with one right-hand side for Δθ_B, with N′ for
        Θ̄(x′, x) at ρ > 0 (the cross kernel 2N²|R| + N², the cross a′aᵀ), and at ρ = 0 Θ̄(x, x) in closed form (the
        certificate, N·|R|; a aᵀ only); plus one eigvalsh of a aᵀ per layer (4N³). Not modelled (data-dependent, as
        in unit-wise's model): tiles alive on no sample skip their solve, and at ρ = 0 units alive on every sample
        share one factorisation of a aᵀ/N."""
        cn, n = s.cn, s.n
        direction = coefficient = 0.0
        for l in s.layers:
            shared = False  # a aᵀ made once for the layer (BlockPartitionFisher._whole_fan_gram)
            for count, r, c in _tiles(s, l, k, g):
                q = r * c
                if q <= cn:
                    build = cn * q + 2.0 * cn * q * q + cost.PINV * q**3
                    direction += count * (build + 2.0 * cn * q + 2.0 * q * q)
                    coefficient += count * (build + 2.0 * q * q * cn + 2.0 * cn * cn * q)
                    continue
                gram = 2.0 * n * n * c
                whole = c == s.fan(l)
                certified = whole and s.c == 1 and c >= n  # a aᵀ positive definite needs fan_l >= N
                if whole and not shared:
                    direction += gram + 4.0 * n**3 * certified
                    coefficient += (1.0 if certified and damping == 0 else 2.0) * gram + 4.0 * n**3 * certified
                    shared = True
                if certified:  # the kernel filled per tile (2N²r + N²), one Cholesky solve
                    kernel = 2.0 * n * n * r + n * n
                    direction += count * (kernel + cost.solve(n, 1) + 2.0 * n * r + 2.0 * n * q)
                    coefficient += count * (n * r if damping == 0 else 2.0 * kernel + cost.solve(n, n))
                    continue
                build = 2.0 * cn * cn * r + (0.0 if whole else gram) + cn * cn + cost.PINV * cn**3
                direction += count * (build + 2.0 * cn * cn + 2.0 * cn * r + 2.0 * n * q)
                coefficient += count * (2.0 * build + 2.0 * cn**3)
        return cost.model(
            (direction, "per tile: primal (q <= CN) J_B, F_B, eigh(q); dual (q > CN) Hadamard kernel, eigh(CN), or "
                        "where it spans the fan-in at C = 1 a Cholesky solve (certified)"),
            (coefficient, "per tile: the same inverse, then J_B(x′)(F_B+ρI)⁻¹J_B(x)ᵀ or kernel(x′, x) times it; "
                          "certified at ρ = 0: the projector in closed form"),
        )

    return model


@register
class BlockPartitionFisher(FisherApproximation):
    """Block-partition FIM: tiles of ``g`` units × ``k`` columns of each θ_l (module docstring).

    Default k = "all", g = 1: the unit-wise FIM (Eq. 23), so the default object has its α.
    Damping as unit-wise (``optional``, default ρ = 1e-12, the paper's C.3): ρ = 0 is the exact
    pseudo-inverse, but the step then divides by arbitrarily small singular values of the tiles
    and a finite network leaves the linear regime (:class:`~ngdref.fisher.unitwise.UnitWiseFisher`).
    """

    spec = FisherSpec(
        name="block", title="block-partition",
        summary="block-partition FIM: tiles of g units x k incoming weights (bias last) per layer (+ρI); "
                "k=all,g=1 unit-wise, g=all block-diagonal, k=g=1 diagonal (extension of Eq. 23)",
        equations="Eq. 23 generalised (Section 5's open question), push-through S.130-S.131",
        aliases=("block-partition", "sub-unit"), default_damping=1e-12, multi_output_alpha=False,
        default_damping_reason="default for block (as unit-wise: ρ = 0 leaves the linear regime at finite width; "
                               "paper C.3 uses 1e-12)",
        options=(FisherOption("k", "columns of [W_i | b_i] per group, the last group taking the remainder (positive "
                              "integer, or 'all' = the unit's whole row; the bias is the last column)",
                              parse=parse_group_size),
                 FisherOption("g", "units per group, the last taking the remainder (positive integer, or 'all' = the "
                              "whole layer)", parse=parse_group_size)),
        flops=_flops(None, 1),
    )

    def __init__(self, network, damping: float | None = None, rtol=None, k=ALL, g=1):
        super().__init__(network, damping, rtol)
        self.k = parse_group_size(k)
        self.g = parse_group_size(g)

    def to_dict(self):
        return {**super().to_dict(), "k": ALL if self.k is None else self.k, "g": ALL if self.g is None else self.g}

    @property
    def whole_rows(self) -> bool:
        """Every tile holds whole unit rows (k = "all" or k >= every fan_l)."""
        net = self.network
        return self.k is None or self.k >= max(net.layer_shape(l)[1] for l in range(1, net.depth + 1))

    def flops(self, shape: cost.Shape, damping: float) -> dict:
        """The FLOP model of this object's k and g (the spec's is the default k = "all", g = 1)."""
        return _flops(self.k, self.g)(shape, damping)

    # ---- α -------------------------------------------------------------------------------
    def analytic_alpha(self, n_samples):
        """:func:`block_alpha` for whole-row tiles and C = 1; ``None`` for k < fan_l (no α is derived)."""
        if self.network.n_outputs != 1 or not self.whole_rows:
            return None
        return block_alpha(self.network, self.g)

    def alpha_note(self) -> str:
        if self.network.n_outputs != 1:
            return "block-partition FIM with C > 1: no isotropy is claimed (unit-wise's Section 5 treats C = 1)"
        if not self.whole_rows:
            return ("groups of k < M_{l-1}+1 inputs: each block projects onto a k-dimensional subspace per unit, "
                    "not a diagonal; no α is derived (measured mean diagonal)")
        return ("α = Σ_{l<L} Σ_groups (1 − (1 − γ_l)^{|group|}) + 1 (g = 1: unit-wise S.128 + the output unit; "
                "g = M_l: → L, block-diagonal); needs ρ → 0, M_{l-1}+[bias] >= N and independent inputs")

    # ---- tiles ---------------------------------------------------------------------------------
    def _budget(self, layer: int) -> int:
        m_out, fan = self.network.layer_shape(layer)
        return max(m_out * fan // 4, 1 << 21)

    def _layer_tiles(self, layer: int):
        """Per tile shape: (row groups (nr, r), column groups (nc, c)) as host index arrays."""
        m_out, fan = self.network.layer_shape(layer)
        for rows in _cuts(m_out, self.g):
            for cols in _cuts(fan, self.k):
                yield rows, cols

    def _chunks(self, layer: int, rows, cols, c: int, n: int, n_prime: int, certifiable: bool = False):
        """Chunks of (row group, column group) pairs sized to the layer's budget and P/4 elements: (rr, cc)
        host index arrays. A tile counts its gathered δ (C·N·r) and a (N·c; nothing when one column group
        spans the whole fan-in, where :meth:`_gather` hands out ``a`` itself) besides its products.
        ``certifiable`` (callers of :meth:`_dual_solve`): a dual whole-fan tile at C = 1 counts no kernel — a certified
        one forms none, and the others are decomposed in stacks of :meth:`_stack_limit` tiles."""
        nr, r = rows.shape
        nc, kc = cols.shape
        q, cn = r * kc, c * n
        if certifiable and q > cn and nc == 1 and kc == self.network.layer_shape(layer)[1] and c == 1:
            # δ, e, shifts, right-hand side; Θ̄'s cross kernel, its solution, their concatenation and reordering
            per_tile = cn * r + 4 * cn + 4 * n_prime * cn
        else:
            per_tile = (cn * q + 3 * q * q + c * n_prime * q) if q <= cn else (4 * cn * cn + c * n_prime * cn
                                                                                + n * n_prime)
            per_tile += cn * r + (0 if nc == 1 else n * kc)
        step = max(1, self._chunk_budget(layer) // max(per_tile, 1))
        pairs = nr * nc
        for start in range(0, pairs, step):
            t = np.arange(start, min(pairs, start + step))
            yield t // nc, t % nc

    def _chunk_budget(self, layer: int) -> int:
        return min(self._budget(layer), max(self.network.n_params // 4, 1))

    def _stack_limit(self, layer: int, c: int, n: int, n_prime: int) -> int:
        """Dual tiles per (T, CN, CN) stack (kernel, eigh's vectors, the inverse, Θ̄'s cross kernel) within the chunk
        budget: how many :meth:`_dual_solve` decomposes or solves by stacks at once."""
        cn = c * n
        return max(1, self._chunk_budget(layer) // (4 * cn * cn + c * n_prime * cn + n * n_prime + cn))

    def _certified(self, d_t, grams: dict, gram):
        """Which tiles' range inverse keeps every non-zero eigenvalue (host bool (T,)), and their alive samples
        (T, N) as 0/1 floats — for whole-fan tiles at C = 1 (else None, None; module docstring, "Certified tiles").

        The tile kernel is Σ_{i∈R} D_i G D_i / N with G = a aᵀ and D_i = diag(δ_i); on its alive samples
        S = {n : e(x_n) > 0}, e = Σ_{i∈R} δ_i², its eigenvalues lie in [λ_min(G)·min_S e, λ_max(G)·max e]/N, and it
        vanishes off S. The eigh path keeps λ > rtol·λ_max: where λ_min(G)·min_S e > CERTIFY_MARGIN·rtol·λ_max(G)·max e
        (λ_min(G) lowered by N·eps·λ_max(G) for eigvalsh's rounding) it keeps exactly the S block, so the result is
        (kernel_SS + ρI)⁻¹ on S, 0 elsewhere — a Cholesky solve. Tiles with no alive sample are certified
        (both paths give 0). One eigvalsh of G per layer, kept in ``grams``. A tile the bound leaves in doubt (it
        is loose by up to cond(G)) is certified where its alive block is definite above the same floor
        (:func:`_definite_above`: one Cholesky factorisation, ≈ 1/30 of an eigh)."""
        if gram is None or d_t.shape[1] != 1:
            return None, None
        xp = namespace_of(d_t)
        n = int(gram.shape[0])
        if "spectrum" not in grams:
            with blas_context(gram):
                ev = to_host(xp.linalg.eigvalsh(symmetrize(gram)))
            hi = float(ev[-1])
            grams["spectrum"] = (float(ev[0]) - n * default_rtol(1, "float64") * hi, hi)
        lo, hi = grams["spectrum"]
        e = xp.sum(d_t[:, 0, :, :] * d_t[:, 0, :, :], axis=2)  # (T, N)
        alive = xp.astype(e > 0.0, xp.float64)
        e_h = to_host(e)
        live = e_h > 0.0
        e_max = e_h.max(axis=1)
        e_min = np.where(live, e_h, np.inf).min(axis=1)
        rtol = max(default_rtol(n, "float64"), self.rtol or 0.0)
        floor = CERTIFY_MARGIN * rtol * hi * e_max  # 64 cut-offs of an upper bound on λ_max(N·kernel)
        ok = ~live.any(axis=1)
        if hi > 0.0 and lo > 0.0:
            ok |= floor < lo * np.where(live.any(axis=1), e_min, 0.0)
        doubt = np.flatnonzero(~ok)
        if doubt.size and hi > 0.0:  # the bound is loose by up to cond(G): a Cholesky test on the alive block
            factors = to_host(xp.take(d_t[:, 0, :, :], to_device(doubt, backend_of(d_t), "int64"), axis=0))
            ok[doubt] = _definite_above(factors, to_host(gram), floor[doubt])
        return ok, alive

    def _training_projector(self, d_t, grams: dict, gram):
        """Θ̄_B(x, x) at ρ = 0 summed over a chunk's certified tiles (:meth:`_certified`): K_B K_B⁺ is the orthogonal
        projector onto range K_B = span{e_n : n ∈ S_B}, i.e. diag(1[e_B(x_n) > 0]) exactly (S.137, as unit-wise),
        (N, N); and the uncertified tiles' indices (host, None if none). (None, None) where no certificate applies
        (C > 1, a tile short of the fan-in)."""
        certified, alive = self._certified(d_t, grams, gram)
        if certified is None:
            return None, None
        xp = namespace_of(d_t)
        n = int(d_t.shape[2])
        if not certified.any():  # every tile refused: a zero projector, and the refusal handed on
            return xp.zeros((n, n), dtype=xp.float64), np.arange(certified.size)
        ok, rest = np.flatnonzero(certified), np.flatnonzero(~certified)
        if rest.size:
            alive = xp.take(alive, to_device(ok, backend_of(d_t), "int64"), axis=0)
        counts = xp.sum(alive, axis=0)  # tiles alive on each sample
        return xp.eye(n, dtype=xp.float64) * counts[None, :], (rest if rest.size else None)

    def _dual_solve(self, d_t, a_t, gram, rhs, grams: dict, known=None, stack=None):
        """(J_BJ_Bᵀ/N + ρI)⁻¹ on range(J_BJ_Bᵀ) times ``rhs`` (T or 1, CN, q) per dual tile, (T, CN, q). Certified
        tiles (:meth:`_certified`): a Cholesky solve of (δ_Rδ_Rᵀ) ∘ (a aᵀ/N) + diag(ρ on S, 1 off S), the kernel never
        stacked (:func:`ngdref.linalg.spd_solve_hadamard`) — off S the kernel's rows vanish, so those samples decouple
        and keep their right-hand side, which the callers' factors δ (zero off S) annihilate — at ρ = 0 a single unit
        alive on every sample as D⁻¹(G/N)⁻¹D⁻¹ with one factorisation of G/N for all of them; the other tiles:
        :meth:`_range_inverse` of the kernel (:meth:`_tile_kernel`). ``known``: (certified, alive) where the caller
        has it already; ``stack``: at most that many tiles' (CN, CN) matrices at once (:meth:`_stack_limit`), for the
        kernels of the ``eigh`` path and the stacked Cholesky of backends without LAPACK's loop."""
        xp = namespace_of(d_t)
        t, c, n, _ = d_t.shape
        backend = backend_of(d_t)
        certified, alive = self._certified(d_t, grams, gram) if known is None else known
        if certified is None:
            certified = np.zeros(t, dtype=bool)
        live = certified & (to_host(xp.max(alive, axis=1)) > 0.0) if certified.any() else certified
        b = xp.broadcast_to(rhs, (t, c * n, rhs.shape[2]))

        def take(x, idx):
            return x if idx.size == t else xp.take(x, to_device(idx, backend, "int64"), axis=0)

        def pieces(idx):  # consecutive pieces of at most ``stack`` tiles
            step = int(idx.size) if stack is None else max(1, int(stack))
            return [idx[i : i + step] for i in range(0, int(idx.size), step)]

        def joined(out):
            return out[0] if len(out) == 1 else xp.concat(out, axis=0)

        def cholesky(idx):
            gram_n, out = gram / float(n), []
            with Pool.open(d_t, "ngdref-block") as pool, blas_context(d_t):
                for part in pieces(idx):
                    f, alive_i, rhs_i = take(d_t[:, 0, :, :], part), take(alive, part), take(b, part)
                    sh = alive_i * self.damping + (1.0 - alive_i)
                    out.append(pool.split(lambda lo, hi, f=f, sh=sh, rhs_i=rhs_i: spd_solve_hadamard(
                        gram_n, f[lo:hi, ...], sh[lo:hi, ...], rhs_i[lo:hi, ...]), int(part.size)))
            return joined(out)

        def shared(idx):  # ρ = 0, one unit alive on every sample: (D G D/N)⁻¹ = D⁻¹ (G/N)⁻¹ D⁻¹, one factor of G/N
            delta = take(d_t[:, 0, :, 0], idx)  # (U, N)
            u, q = int(idx.size), int(b.shape[2])
            scaled = xp.permute_dims(take(b, idx) / delta[:, :, None], (1, 0, 2))  # (N, U, q)
            with blas_context(scaled):
                y = spd_solve_stack(xp.reshape(gram / float(n), (1, n, n)), xp.reshape(scaled, (1, n, u * q)))
            return xp.permute_dims(xp.reshape(y, (n, u, q)), (1, 0, 2)) / delta[:, :, None]

        def range_inverse(idx):
            out = []
            for part in pieces(idx):
                d_i, a_i = take(d_t, part), (a_t if part.size == t else None)  # a_t read only where gram is None (all)
                out.append(self._range_inverse(self._tile_kernel(d_i, a_i, d_i, a_i, gram) / float(n)) @ take(b, part))
            return joined(out)

        # single-unit tiles alive on every sample at ρ = 0 share G's factorisation (as unit-wise's exact mode, S.136);
        # tiles alive on no sample (certified) have a zero kernel: they keep their right-hand side, no solve
        everywhere = np.zeros(t, dtype=bool)
        if self.damping == 0.0 and d_t.shape[3] == 1 and live.any():
            everywhere = live & (to_host(xp.min(alive, axis=1)) > 0.0)
        groups = [(idx, solve) for idx, solve in ((np.flatnonzero(everywhere), shared),
                                                  (np.flatnonzero(live & ~everywhere), cholesky),
                                                  (np.flatnonzero(certified & ~live), lambda idx: take(b, idx)),
                                                  (np.flatnonzero(~certified), range_inverse)) if idx.size]
        if len(groups) == 1:
            return groups[0][1](groups[0][0])
        parts = [solve(idx) for idx, solve in groups]
        order = to_device(np.argsort(np.concatenate([idx for idx, _ in groups]), kind="stable"), backend, "int64")
        return xp.take(xp.concat(parts, axis=0), order, axis=0)

    def _range_inverse(self, k):
        """Σ_{λ > τ} u uᵀ/(λ + ρ) for a stack of symmetric PSD matrices (module docstring), τ = rtol·λ_max.
        The stack is split over the thread pool, each matrix decomposed with BLAS at one thread
        (:mod:`ngdref.threads`), so every matrix gets the same rounding whatever the number of threads."""
        with Pool.open(k, "ngdref-block") as pool, blas_context(k):
            return pool.split(lambda lo, hi: psd_pinv(k[lo:hi, ...], self.rtol, shift=self.damping), int(k.shape[0]))

    @staticmethod
    def _gather(d, a, rows_t, cols_t, backend):
        """δ on the tiles' units (T, C, N, r) and a on their columns (T, N, c), float64."""
        xp = namespace_of(d)
        t, r = rows_t.shape
        kc = cols_t.shape[1]
        c, n, _ = d.shape
        d_t = xp.take(d, to_device(rows_t.reshape(-1), backend, "int64"), axis=2)  # (C, N, T·r)
        d_t = xp.permute_dims(xp.reshape(d_t, (c, n, t, r)), (2, 0, 1, 3))
        if kc == a.shape[1] and np.array_equal(cols_t, np.broadcast_to(np.arange(kc), cols_t.shape)):
            return d_t, xp.broadcast_to(a[None, :, :], (t, n, kc))  # whole fan-in: a itself, no copy per tile
        a_t = xp.take(a, to_device(cols_t.reshape(-1), backend, "int64"), axis=1)  # (N, T·c)
        a_t = xp.permute_dims(xp.reshape(a_t, (a.shape[0], t, kc)), (1, 0, 2))
        return d_t, a_t

    @staticmethod
    def _tile_jacobian(d_t, a_t):
        """J_B for each tile, (T, CN, r·c): rows δ_i^{(k)}(x_n) a_{nj} (S.64)."""
        xp = namespace_of(d_t)
        t, c, n, r = d_t.shape
        kc = a_t.shape[2]
        j = d_t[:, :, :, :, None] * a_t[:, None, :, None, :]  # (T, C, N, r, c)
        return xp.reshape(j, (t, c * n, r * kc))

    @staticmethod
    def _tile_kernel(d_p, a_p, d_t, a_t, gram=None):
        """(δ′_R δ_Rᵀ) ∘ (1⊗a′_K a_Kᵀ) per tile, (T, CN′, CN). ``gram``: a′aᵀ (N′, N), given where every tile
        spans the whole fan-in (a_K = a, :meth:`_whole_fan_gram`): one product for the layer, not one per tile
        (the default k = "all": 2N′N·fan_l flops per unit; M = 4096: direction 13.7 → 7.3 s); ``a_p`` and ``a_t``
        are not read then (None will do)."""
        xp = namespace_of(d_t)
        t, c, n, r = d_t.shape
        n_p = d_p.shape[2]
        left = xp.reshape(d_p, (t, c * n_p, r)) @ xp.permute_dims(xp.reshape(d_t, (t, c * n, r)), (0, 2, 1))
        right = a_p @ xp.permute_dims(a_t, (0, 2, 1)) if gram is None else gram[None, :, :]  # (T or 1, N′, N)
        right = xp.reshape(xp.broadcast_to(right[:, None, :, None, :], (t, c, n_p, c, n)), (t, c * n_p, c * n))
        return left * right

    @staticmethod
    def _whole_fan_gram(cols, grams: dict, a_p, a):
        """a′aᵀ for :meth:`_tile_kernel` when the tile shape's one column group spans the fan-in (made once per
        layer and pair of inputs, kept in ``grams``), else None."""
        if cols.shape != (1, a.shape[1]):
            return None
        if "gram" not in grams:
            grams["gram"] = a_p @ namespace_of(a).permute_dims(a, (1, 0))
        return grams["gram"]

    # ---- structured path ---------------------------------------------------------------------
    def _all_dual_whole_rows(self, cn: int) -> bool:
        """Every tile of every layer holds whole rows and is dual (q_B = |R|·fan_l > CN)."""
        return self.whole_rows and all(rows.shape[1] * cols.shape[1] > cn
                                       for l in range(1, self.network.depth + 1) for rows, cols in self._layer_tiles(l))

    def precondition_factors(self, signals, v, output_metric=None):
        """Per layer (coef, a_{l−1}) with coef @ a_{l−1} = Δθ_l, where every tile holds whole rows and is dual
        (:meth:`_all_dual_whole_rows`; the default k = "all" with fan_l > N), else None.

        A dual tile's Δθ_B[i, :] = Σ_n w_i(x_n) a(x_n)/N with w_i = Σ_k z_k δ_i^{(k)} and z = (J_BJ_Bᵀ/N + ρI)⁻¹ v
        (module docstring), so row i of coef is w_i/N: Δθ is never assembled tile by tile, and training writes it
        into θ a block of rows at a time (:func:`ngdref.train.apply_factors`), as unit-wise's. coef is made in float64
        and handed over in the network's dtype (the parameter-sized product runs in it, as unit-wise's)."""
        many = self.precondition_factors_many(signals, [v], output_metric)
        return None if many is None else many[0]

    def precondition_factors_many(self, signals, vs, output_metric=None):
        """:meth:`precondition_factors` for q vectors of the same signals: each tile's solve takes the q right-hand
        sides together (training's step 0 with Eq. 22's vector: one certificate and factorisation per tile, not
        two); None where there are no factors."""
        xp = namespace_of(vs[0])
        c, n = vs[0].shape
        if not self._all_dual_whole_rows(c * n):
            return None
        q = len(vs)
        rhs = xp.stack([xp.reshape(as_float64(v), (c * n,)) for v in vs], axis=1)[None, :, :]  # (1, CN, q)
        out = [[] for _ in vs]
        for l in range(1, self.network.depth + 1):
            a_net = signals.a[l - 1]
            backend = backend_of(a_net)
            d, a = as_float64(signals.delta[l - 1]), as_float64(a_net)
            pieces, grams = [], {}
            for rows, cols in self._layer_tiles(l):
                stack = self._stack_limit(l, c, n, 0)
                for rr, cc in self._chunks(l, rows, cols, c, n, 0, certifiable=True):
                    rows_t = rows[rr]
                    d_t, a_t = self._gather(d, a, rows_t, cols[cc], backend)
                    t, r = rows_t.shape
                    z = xp.reshape(self._dual_solve(d_t, a_t, self._whole_fan_gram(cols, grams, a, a), rhs, grams,
                                                    stack=stack), (t, c, n, 1, q))
                    w = xp.sum(z * d_t[:, :, :, :, None], axis=1)  # Σ_k z_k δ_i^{(k)}, (T, N, r, q)
                    pieces.append(xp.reshape(xp.permute_dims(w, (0, 2, 1, 3)), (t * r, n, q)) / float(n))
            coef = xp.concat(pieces, axis=0)  # (M_l, N, q): whole-row tiles come in θ_l's row order
            for j in range(q):
                out[j].append((xp.astype(coef[:, :, j], a_net.dtype), a_net))
        return out

    def precondition(self, signals, v, output_metric=None):
        """Δθ_B = (F_B + ρI)⁻¹ J_Bᵀ v / N per tile (primal or dual, module docstring), θ_l-shaped per layer; the
        factors' product where there are factors (:meth:`precondition_factors`)."""
        factors = self.precondition_factors(signals, v, output_metric)
        if factors is not None:
            return factor_product(factors)
        xp = namespace_of(v)
        c, n = v.shape
        vec = xp.reshape(as_float64(v), (c * n,))
        out = []
        for l in range(1, self.network.depth + 1):
            m_out, fan = self.network.layer_shape(l)
            a_net = signals.a[l - 1]
            backend = backend_of(a_net)
            d, a = as_float64(signals.delta[l - 1]), as_float64(a_net)
            tiles = list(self._layer_tiles(l))
            in_order = _whole_rows_in_order(tiles, fan)
            values, positions, grams = [], [], {}
            for rows, cols in tiles:
                r, kc = rows.shape[1], cols.shape[1]
                q = r * kc
                for rr, cc in self._chunks(l, rows, cols, c, n, 0, certifiable=True):
                    rows_t, cols_t = rows[rr], cols[cc]
                    d_t, a_t = self._gather(d, a, rows_t, cols_t, backend)
                    t = rows_t.shape[0]
                    if q <= c * n:
                        jac = self._tile_jacobian(d_t, a_t)  # (T, CN, q)
                        jt = xp.permute_dims(jac, (0, 2, 1))
                        inv = self._range_inverse(jt @ jac / float(n))
                        rhs = (jt @ vec[:, None]) / float(n)  # J_Bᵀ v / N, (T, q, 1)
                        theta = xp.reshape(inv @ rhs, (t, r, kc))
                    else:
                        gram = self._whole_fan_gram(cols, grams, a, a)
                        z = self._dual_solve(d_t, a_t, gram, vec[None, :, None], grams,
                                             stack=self._stack_limit(l, c, n, 0))
                        z = xp.reshape(z, (t, c, n, 1))  # (J_BJ_Bᵀ/N + ρI)⁻¹ v
                        w = xp.permute_dims(xp.sum(z * d_t, axis=1), (0, 2, 1))  # Σ_k z_k δ_i^{(k)}, (T, r, N)
                        if gram is None:
                            theta = w @ a_t / float(n)  # (T, r, c)
                        else:  # every tile's a_K is a: one GEMM for the chunk
                            theta = xp.reshape(xp.reshape(w, (t * r, n)) @ a, (t, r, kc)) / float(n)
                    values.append(xp.reshape(theta, (-1,)))
                    if not in_order:
                        positions.append((rows_t[:, :, None] * fan + cols_t[:, None, :]).reshape(-1))
            out.append(xp.astype(xp.reshape(_in_layer_order(values, positions, backend), (m_out, fan)), a_net.dtype,
                                 copy=False))
        return out

    # ---- matrix-free products (ngdref.fisher.operators) ----------------------------------------------
    def _per_tile(self, signals, v, apply) -> list:
        """``apply(key, d_t, a_t, v_t)`` → (T, r, c) for every chunk of tiles, scattered back per layer;
        v_t is v on the chunk's tiles (float64), ``key`` names the chunk (for the cache)."""
        xp = namespace_of(signals.f)
        c, n = signals.f.shape[1], signals.n
        out = []
        for l in range(1, self.network.depth + 1):
            m_out, fan = self.network.layer_shape(l)
            backend = backend_of(signals.a[l - 1])
            d, a = as_float64(signals.delta[l - 1]), as_float64(signals.a[l - 1])
            v_flat = xp.reshape(as_float64(v[l - 1]), (-1,))
            tiles = list(self._layer_tiles(l))
            in_order = _whole_rows_in_order(tiles, fan)
            values, positions = [], []
            for shape_id, (rows, cols) in enumerate(tiles):
                for chunk_id, (rr, cc) in enumerate(self._chunks(l, rows, cols, c, n, 0)):
                    rows_t, cols_t = rows[rr], cols[cc]
                    d_t, a_t = self._gather(d, a, rows_t, cols_t, backend)
                    if in_order:  # rows_t: consecutive rows (consecutive groups of _cuts)
                        lo, hi = int(rows_t[0, 0]), int(rows_t[-1, -1]) + 1
                        v_t = xp.reshape(v_flat[lo * fan : hi * fan], (rows_t.shape[0], rows_t.shape[1], fan))
                    else:
                        pos = rows_t[:, :, None] * fan + cols_t[:, None, :]  # (T, r, c)
                        v_t = xp.reshape(xp.take(v_flat, to_device(pos.reshape(-1), backend, "int64")), pos.shape)
                        positions.append(pos.reshape(-1))
                    values.append(xp.reshape(apply(f"block:{l}:{shape_id}:{chunk_id}", d_t, a_t, v_t), (-1,)))
            flat = _in_layer_order(values, positions, backend)
            out.append(xp.astype(xp.reshape(flat, (m_out, fan)), v[l - 1].dtype, copy=False))
        return out

    @staticmethod
    def _tile_jvp(d_t, a_t, v_t):
        """J_B v_B per tile, (T, C, N): Σ_i δ_i^{(k)}(x_n) (a_K v_{i,K}ᵀ)_n."""
        xp = namespace_of(d_t)
        av = a_t @ xp.permute_dims(v_t, (0, 2, 1))  # (T, N, r)
        return xp.sum(d_t * av[:, None, :, :], axis=3)

    @staticmethod
    def _tile_vjp(d_t, a_t, z):
        """J_Bᵀ z per tile, (T, r, c), for z (T, C, N)."""
        xp = namespace_of(d_t)
        w = xp.sum(z[:, :, :, None] * d_t, axis=1)  # (T, N, r)
        return xp.permute_dims(w, (0, 2, 1)) @ a_t

    def fisher_matvec(self, signals, v, cache=None):
        """G v tile by tile: J_Bᵀ(J_B v_B)/N + ρ v_B (two thin products per tile, no G_B formed)."""
        n = float(signals.n)

        def apply(key, d_t, a_t, v_t):
            out = self._tile_vjp(d_t, a_t, self._tile_jvp(d_t, a_t, v_t)) / n
            return out + self.damping * v_t if self.damping > 0 else out

        return self._per_tile(signals, v, apply)

    def inverse_matvec(self, signals, v, cache=None):
        """G⁻¹ v (G⁺ v at ρ = 0) tile by tile, the per-tile inverses kept in ``cache``.

        Primal tiles (q_B <= CN): (F_B + ρI)⁻¹ (ρ > 0) or F_B⁺ (ρ = 0, :func:`~ngdref.linalg.psd_pinv`'s
        cut-off) applied to v_B. Dual tiles (Woodbury, as unit-wise): with D = (J_BJ_Bᵀ/N + ρI)⁻¹,
        G_B⁻¹x = (x − J_Bᵀ D J_B x/N)/ρ; at ρ = 0 with D = (J_BJ_Bᵀ/N)⁺, G_B⁺x = J_Bᵀ D D J_B x/N.
        Here ρ enters literally on every eigenvalue (an arbitrary v has a part in the null space of F_B,
        which G⁻¹ scales by 1/ρ), unlike :meth:`precondition`, whose vectors lie in the range of F_B.
        Accuracy as unit-wise's (:meth:`UnitWiseFisher.inverse_matvec`): about eps·‖v‖/ρ absolute, G's
        conditioning — ~1e-6 relative on a gradient at ρ = 1e-12, where ``direction`` is accurate to eps.
        Memory: the per-chunk inverses are kept in ``cache`` while they total at most P elements, the
        others recomputed on each product (one (CN)² dual per tile exceeds P for small tiles).
        """
        xp = namespace_of(signals.f)
        cache = {} if cache is None else cache
        c, n, rho = signals.f.shape[1], signals.n, self.damping
        kept = cache.setdefault("block:kept", [0])
        limit = self.network.n_params

        def keep(key, value):
            size = int(np.prod(value.shape))
            if kept[0] + size <= limit:
                cache[key] = value
                kept[0] += size
            return value

        def inverse(k):
            if rho > 0:  # in the eigenbasis, eigenvalues clipped at 0 (PSD): (λ + ρ)⁻¹ stays accurate where
                # F_B is singular, which an LU inverse of F_B + ρI (cond ‖F_B‖/ρ) spreads over the range
                w, vec = xp.linalg.eigh(symmetrize(k))
                inv_w = 1.0 / (xp.where(w > 0, w, xp.zeros_like(w)) + rho)
                return (vec * inv_w[..., None, :]) @ xp.linalg.matrix_transpose(vec)
            return self._range_inverse(k)  # ρ = 0: psd_pinv's cut-off, on the thread pool

        def apply(key, d_t, a_t, v_t):
            t, r, kc = v_t.shape
            if r * kc <= c * n:
                inv = cache.get(key)
                if inv is None:
                    jac = self._tile_jacobian(d_t, a_t)
                    inv = keep(key, inverse(xp.permute_dims(jac, (0, 2, 1)) @ jac / float(n)))
                return xp.reshape(inv @ xp.reshape(v_t, (t, r * kc, 1)), (t, r, kc))
            dual = cache.get(key)
            if dual is None:  # ρ > 0: on the range of J_BJ_Bᵀ only (J_Bᵀ annihilates the rest; an LU inverse
                # would put 1/ρ on its rounding-level null directions, then /ρ again: eps/ρ² errors at C > 1)
                k = self._tile_kernel(d_t, a_t, d_t, a_t) / float(n)
                dual = keep(key, self._range_inverse(k) if rho > 0 else inverse(k))
            y = dual @ xp.reshape(self._tile_jvp(d_t, a_t, v_t), (t, c * n, 1))
            if rho == 0:
                return self._tile_vjp(d_t, a_t, xp.reshape(dual @ y, (t, c, n))) / float(n)
            return (v_t - self._tile_vjp(d_t, a_t, xp.reshape(y, (t, c, n))) / float(n)) / rho

        return self._per_tile(signals, v, apply)

    def _theta_bar(self, s, s_prime):
        """Θ̄(x′, x) = Σ_B J_B(x′)(F_B + ρI)⁻¹J_B(x)ᵀ/N (Eq. 11) tile by tile, (CN′, CN)."""
        sp = s if s_prime is None else s_prime
        xp = namespace_of(s.f)
        c, n, n_p = s.f.shape[1], s.n, sp.n
        total = xp.zeros((c * n_p, c * n), dtype=xp.float64)
        for l in range(1, self.network.depth + 1):
            backend = backend_of(s.a[l - 1])
            d, a = as_float64(s.delta[l - 1]), as_float64(s.a[l - 1])
            d_p, a_p = as_float64(sp.delta[l - 1]), as_float64(sp.a[l - 1])
            grams, cross_grams = {}, {}
            for rows, cols in self._layer_tiles(l):
                q = rows.shape[1] * cols.shape[1]
                refused = False  # the remaining tiles are those the certificate refused
                if s_prime is None and self.damping == 0.0 and q > c * n and cols.shape == (1, a.shape[1]):
                    # S.137 on every certified tile of this shape at once (their δ: N·M_l entries, no kernel); only
                    # the others go on, chunk by chunk
                    d_all = self._gather(d, a, rows, cols, backend)[0]
                    projector, rest = self._training_projector(d_all, grams, self._whole_fan_gram(cols, grams, a, a))
                    del d_all
                    if projector is not None:
                        total = total + projector
                        if rest is None:
                            continue
                        rows, refused = rows[rest], True
                for rr, cc in self._chunks(l, rows, cols, c, n, n_p, certifiable=not refused):
                    rows_t, cols_t = rows[rr], cols[cc]
                    d_t, a_t = self._gather(d, a, rows_t, cols_t, backend)
                    dp_t, ap_t = (d_t, a_t) if s_prime is None else self._gather(d_p, a_p, rows_t, cols_t, backend)
                    t = rows_t.shape[0]
                    if q <= c * n:
                        jac = self._tile_jacobian(d_t, a_t)  # (T, CN, q)
                        jt = xp.permute_dims(jac, (0, 2, 1))
                        x_t = self._range_inverse(jt @ jac / float(n)) @ jt  # (T, q, CN)
                        jac_p = self._tile_jacobian(dp_t, ap_t)  # (T, CN′, q)
                        left = xp.reshape(xp.permute_dims(jac_p, (1, 0, 2)), (c * n_p, t * q))
                        total = total + left @ xp.reshape(x_t, (t * q, c * n)) / float(n)
                    else:
                        gram = self._whole_fan_gram(cols, grams, a, a)
                        cross_gram = self._whole_fan_gram(cols, cross_grams, a_p, a)
                        cross = self._tile_kernel(dp_t, ap_t, d_t, a_t, cross_gram)  # (T, CN′, CN)
                        # Σ_B cross_B inv_B = Σ_B (inv_B cross_Bᵀ)ᵀ (inv_B symmetric)
                        solved = self._dual_solve(d_t, a_t, gram, xp.permute_dims(cross, (0, 2, 1)), grams,
                                                  (np.zeros(t, dtype=bool), None) if refused else None,
                                                  stack=self._stack_limit(l, c, n, n_p))
                        total = total + xp.permute_dims(xp.sum(solved, axis=0), (1, 0)) / float(n)
        return xp.astype(total, s.f.dtype)
