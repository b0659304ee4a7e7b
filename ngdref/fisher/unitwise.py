"""Unit-wise Fisher information (Eq. 23, Section 5; Appendix C, S.128–S.157).

G_unit = S_unitᵀ S_unit / N + ρI has one block per unit θ_i^{(l)} = {W_{l,i·}, b_{l,i}}
(row i of θ_l, contiguous in the flat order), G_{l,i} = J_{l,i}ᵀ J_{l,i}/N + ρI with
J_{l,i} = ∇_{θ_i^{(l)}} f (CN × fan), whose rows are δ_{l,i}^{(k)}(x_n) a_{l−1}(x_n).

Reduction to N×N problems. J_{l,i}ᵀ J_{l,i} = aᵀ diag(e_i) a with e_i(x_n) =
Σ_k δ_{l,i}^{(k)}(x_n)² and J_{l,i}ᵀ v = aᵀ u_i with u_i(x_n) = Σ_k δ_{l,i}^{(k)}(x_n) v_k(x_n),
so every unit is a weighted least-squares problem in the samples. With b = diag(√e) a
and the push-through identity (bᵀb/N + ρI)⁻¹ bᵀ = bᵀ (bbᵀ/N + ρI)⁻¹ (S.130–S.131 with the
constants written out: bbᵀ = diag(√e) K diag(√e), K = a aᵀ = σ_w² A_{l−1} + σ_b² 11ᵀ,
N×N and shared by all units of the layer):

* ρ = 0 and K positive definite — the exact zero-damping limit (S.132–S.137): on the
  alive set S_i = {n : e_i(x_n) ≠ 0} the block D K D is invertible, (D K D)⁺ =
  D_S⁻¹ K_SS⁻¹ D_S⁻¹, and

      Δθ_{l,i} = a_Sᵀ K_SS⁻¹ (u_S / e_S),                       (C = 1: a_Sᵀ K_SS⁻¹ (v_S / δ_S))
      Θ̄_{l,i}(x′, x) = diag(δ′) K(x′, x_S) K_SS⁻¹ diag(δ_S / e_S)  (S.156 at ρ = 0),

  and on the training set Θ̄ = Σ_{l,i} diag(1[δ_{l,i} ≠ 0]) exactly (S.137; for C > 1 the
  (k, k′) block of sample n is Σ_i δ_i^{(k)} δ_i^{(k′)} / e_i). No cut-off is applied to
  δ: a tiny but nonzero δ is inverted exactly, as in the limit.
* ρ > 0: Δθ_{l,i} = a_Sᵀ [√e ∘ (diag(√e) K_SS diag(√e)/N + ρI)⁻¹ (u/√e)]_S / N; samples
  with e = 0 drop out exactly (their rows of J_{l,i} vanish). The system is solved in the
  equivalent form D⁻¹(K_SS + ρD⁻²)⁻¹D⁻¹ with D = diag(√(e/N)) (on NumPy a diagonal update in place
  instead of three passes over the stack), on every backend alike; the scaled form remains for
  ρ/s² beyond 1e290 (e below ~1e-290·ρN). The two forms round differently: within 5e-14 of each other
  at M = 4096 on MNIST, but where K_SS is near singular (M0 + 1 < N, ρ = 1e-12) up to 3e-8 apart, each
  as accurate as the other (the same defect of symmetry in Θ̄).
* ρ = 0 and K singular (e.g. layer 1 with M0 + [σ_b > 0] < N): the general path, the
  pseudo-inverse (diag(√e) K_SS diag(√e))⁺ by a batched ``eigh`` with the cut-off of
  :mod:`ngdref.linalg`. K is tested per layer (λ_min > rtol·λ_max, rtol = ``rtol`` or
  N·eps); only the offending layer takes this path.

Precision. The N×N and per-unit algebra (K, K⁻¹, the compacted solves, e = Σ_k δ²) is
done in float64 whatever the network's dtype: on MNIST cond(K) is 1e6–1e8, beyond float32
(its eigenvalue test would send every layer to the pseudo-inverse path, a different, cut-off
approximation). Only the parameter-sized product a_Sᵀ z runs in the network's dtype, and
the results are returned in it: a float32 network gets float32 Δθ and Θ̄.

C > 1 needs no pseudo-inverse of the singular 11ᵀ ⊗ K: the reduction above is exact for
any C (rank J_{l,i} <= N), so the same N×N solves serve.

Batching. Units are processed in chunks whose stacks stay below a quarter of the layer's
parameter count (at least 2^21 elements, so that small layers do not pay a threaded BLAS's
per-call overhead hundreds of times, and at most 2^23: :meth:`UnitWiseFisher._budget`). Each unit's system is *compacted* to the samples that
matter — the alive set S_i, or, at ρ = 0 with K positive definite and fewer dead than alive
samples, the dead set D_i through the Schur complement of H = K⁻¹ (computed once per layer):
K_SS⁻¹ = H_SS − H_SD H_DD⁻¹ H_DS, so only the |D|×|D| block H_DD is solved per unit and
units that are never dead (Tanh; the output unit) cost a GEMM with H. Units are sorted by
compacted size so a chunk pads little; the compacted blocks are padded with the identity,
which keeps every stack positive definite for one Cholesky solve per unit
(:func:`ngdref.linalg.spd_solve_stack`: LAPACK's ``dposv`` one matrix at a time on one BLAS thread, through
ctypes so that it releases the GIL — 1.6–2× faster than NumPy's batched LU at N = 100; small systems keep the
batched LU. At M = 4096, N = 100 a 2×2 block elimination into ≤ 64×64 calls, :func:`_spd_solve`, had made
the set-up's solves with N + N′ right-hand sides 1.2–1.7× slower than LAPACK's LU on the whole block). Units dead on every
sample take no solve, and units alive on every sample take K itself, without index gathers. For ReLU
(γ = 1/2) the per-unit systems shrink from N to about N/2 (1/8 of the flops of a padded N×N
stack). Θ̄(x′, x) (S.156) compacts the right-hand sides too: unit i's solution is read only on the x′ with
δ_{l,i}(x′) ≠ 0, so on the alive sets only those columns of K(x, x′) are solved for (about half for ReLU;
C = 1 only; the exact mode's dead-set path still solves every column), and each unit's (|S_i| × |S′_i|) block is added
into Θ̄ at its own rows and columns (:func:`_place_blocks`). At M = 4096, N = N′ = 100, σ_b² = 0 the set-up's
Θ̄ pair took 1.18 s against 1.70 s with every column (a quiet A/B). A unit alive on every training sample
(1,886 of layer 1's at ``ngdref train``'s default σ_b² = 0.5) keeps nearly every column anyway: it solves every
one, and its dense solution is reduced by batched products, as for C > 1 (0.79–0.95 → 0.75–0.81 s per pair).

Threads. On the NumPy backend each chunk is split into contiguous pieces of units that run side
by side on a small thread pool (:class:`ngdref.threads.Pool`: as many threads as the BLAS pool may
use, at most the CPUs; ``ngdref.threads.THREADS`` overrides), with BLAS held at one thread inside
(threadpoolctl): small stacked LAPACK calls are faster single-threaded, and NumPy's ``linalg``
gufuncs, ``matmul`` and the ctypes ``dposv`` calls release the GIL. The chunks are those of the serial loop and every operation
of a piece acts unit by unit, so the results are bit-identical for any thread count; the strict
array-API backend and CuPy stay serial. The N×N ``eigh`` of the shared eigenbasis runs on one BLAS thread too;
K = a aᵀ and the shared units' GEMMs keep the configured BLAS pool (K's rounding reaches the
damped output unit's direction through cond(K/N + ρI)).

Shared eigenbasis. Damped units alive on every sample with e_i the same on every sample (ReLU's
last hidden layer) need no factorisation: A_i = ε_iK/N + ρI = V diag(ε_iλ/N + ρ) Vᵀ with one
``eigh`` of K per layer (:meth:`UnitWiseFisher._solve_shared`); for Θ̄(x′, x) their sum over units
is one (C·N′, c) × (c, N²) GEMM per block of units (:meth:`UnitWiseFisher._cross_term_shared`) where the
layer's budget holds blocks of ≥ 16 units and rows (N ≤ 256 at the 2^21 floor, ≤ 512 at the 2^23 cap), and
:meth:`UnitWiseFisher._solve_shared`'s two GEMMs per chunk otherwise.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

from ..backend import as_float64, backend_of, dtype_name_of, namespace_of, to_device, to_float, to_host
from ..errors import ConfigError, NgdrefError
from ..kernels import check_pair, layer_gammas, order_parameters
from ..linalg import add_to_diagonal, default_rtol, psd_pinv, spd_solve_shifted, spd_solve_stack, symmetrize
from ..threads import Pool, blas_context, cpu_count
from . import cost
from .base import FisherApproximation, factor_product
from .spec import FisherSpec, register

__all__ = ["UnitWiseFisher", "shifted_relu_unit_alpha", "unit_alpha"]


# --------------------------------------------------------------------------------------
# α = Σ_{l<L} γ_l M_l (Lemma C.2, S.128, S.157)
# --------------------------------------------------------------------------------------
def _check_unit_network(net) -> None:
    if net.n_outputs != 1:
        raise ConfigError(f"unit-wise α is derived for C = 1 (Section 5), got C = {net.n_outputs}")


def unit_alpha(net, include_output_layer: bool = False, method: str = "auto", order: int = 64) -> float:
    """Unit-wise NGD: α = Σ_{l=1}^{L−1} γ_l M_l (Lemma C.2, S.128), C = 1.

    A finite network's output layer (one unit, δ_L = 1 ≠ 0 for every sample) adds exactly 1
    (the l = L term of S.137, negligible at large M); ``include_output_layer=True`` adds it,
    which is what the diagonal of Θ̄ of a finite network shows.
    q_l are computed by closed forms where available (ReLU, shifted ReLU, erf, linear) and
    Gauss–Hermite quadrature of ``order`` nodes otherwise (tanh).
    """
    _check_unit_network(net)
    gammas = layer_gammas(net, method=method, order=order)
    alpha = sum(g * m for g, m in zip(gammas, net.widths[1:-1]))
    return float(alpha + (1.0 if include_output_layer else 0.0))


def shifted_relu_unit_alpha(net, include_output_layer: bool = False) -> float:
    """S.157 for φ_s(x) = max(x, −s): α = Σ_{l<L} (1/2 + erf(s/√(2 q_l))/2) M_l (s = 0: Σ M_l/2)."""
    _check_unit_network(net)
    if net.activation.name not in ("shifted-relu", "relu"):
        raise ConfigError(f"S.157 is for the (shifted) ReLU, got {net.activation.name!r}")
    s = float(net.activation.shift) if net.activation.name == "shifted-relu" else 0.0
    q = order_parameters(net)
    alpha = sum((0.5 + 0.5 * math.erf(s / math.sqrt(2.0 * q[l - 1]))) * net.widths[l] for l in range(1, net.depth))
    return float(alpha + (1.0 if include_output_layer else 0.0))


def _flops(s: cost.Shape, damping: float) -> dict:
    """Per layer K = a aᵀ (2N²fan), eigvalsh + inv of K (≈ 6N³), one compacted solve per unit on
    ≈ N/2 samples (ReLU: half the samples alive; (2/3)p³ + 2p²), Δθ_{l,i} = a_Sᵀ z_i (2·N·fan per
    unit); Θ̄(x, x) at ρ = 0 with K ≻ 0 is S.137 in closed form (no per-unit solve)."""
    n, cn = s.n, s.cn
    p = max(1, n // 2)
    direction = sum(2.0 * n**2 * s.fan(l) + 6.0 * n**3 + s.m(l) * cost.solve(p, 1) + 2.0 * n * s.m(l) * s.fan(l)
                    + 2.0 * cn * s.m(l) for l in s.layers)
    coefficient = sum(2.0 * n**2 * s.fan(l) + 4.0 * n**3 + 4.0 * cn * s.m(l) for l in s.layers)
    return cost.model(
        (direction, "per layer: K = aaᵀ + eig/inv(N) + M_l solves on ≈N/2 samples + a_Sᵀz (2N·M_l·fan)"),
        (coefficient, "per layer: K = aaᵀ + eigvalsh(N) + O(N·M_l) (closed form S.137 on the training set)"),
    )


_EXACT, _DAMPED, _PINV = "exact", "damped", "pinv"


@dataclass
class _Layer:
    """Per-layer data of the unit-wise solves."""

    layer: int
    mode: str  # _EXACT (ρ = 0, K ≻ 0), _DAMPED (ρ > 0), _PINV (ρ = 0, K singular)
    a: object  # a_{l−1}, (N, fan), the network's dtype (for the parameter-sized product)
    a_work: object  # a_{l−1} in float64 (the same array when the network is float64)
    delta: object  # δ_l, (C, N, U), float64
    e_samples: object  # Σ_k δ², (N, U) as δ is laid out (S.137's count needs no other layout)
    kernel: object  # K = a aᵀ, (N, N)
    _padded: dict = field(default_factory=dict, repr=False)

    @functools.cached_property
    def e(self):
        """Σ_k δ², (U, N) laid out row by row: every per-unit ``take`` of a chunk then reads contiguous rows
        (NumPy's ``take`` copies a non-contiguous source in full on every call). Made on first use: the
        transposed copy is most of the time of Θ̄(x, x) at ρ = 0 (S.137), which never needs it."""
        return _row_major(namespace_of(self.e_samples).permute_dims(self.e_samples, (1, 0)))

    @functools.cached_property
    def alive(self):
        """e > 0, (U, N) bool."""
        return self.e > 0.0

    @functools.cached_property
    def alive_host(self) -> np.ndarray:
        """:attr:`alive` on the host, (U, N) bool."""
        return np.asarray(to_host(self.alive), dtype=bool)

    def padded(self, which: str):
        """K ⊕ I_N or K⁻¹ ⊕ I_N, (2N, 2N): gathering it at the compacted indices of a unit, with
        padding slot j mapped to N + j, gives [[K_SS, 0], [0, I]] with no masking pass. K⁻¹ is symmetrised:
        ``inv``'s LU leaves its triangles apart by ~cond(K)·eps, and the Cholesky solves of
        :func:`ngdref.linalg.spd_solve_stack` read one triangle of H_DD where the batched LU reads both."""
        if which not in self._padded:
            xp = namespace_of(self.kernel)
            mat = self.kernel if which == "kernel" else symmetrize(xp.linalg.inv(symmetrize(self.kernel)))
            zero = xp.zeros_like(mat)
            eye = xp.eye(self.n, dtype=mat.dtype)
            self._padded[which] = xp.concat(
                [xp.concat([mat, zero], axis=1), xp.concat([zero, eye], axis=1)], axis=0
            )
        return self._padded[which]

    @property
    def n(self) -> int:
        return int(self.a.shape[0])

    @property
    def units(self) -> int:
        return int(self.e_samples.shape[1])


@register
class UnitWiseFisher(FisherApproximation):
    """Unit-wise block-diagonal FIM (Eq. 23); ρ = 0 is the exact zero-damping limit of S.132–S.137.

    Default damping ρ = 1e-12: at ρ = 0 the step divides by arbitrarily small δ_{l,i}(x_n)
    (S.134–S.137); Θ̄ is then exactly diag(#alive units) but a finite network's step leaves the
    linear regime (M = 4096, N = 100: ‖θ_1 − θ_0‖ = 2e5 and the loss grows). The paper's own
    unit-wise experiments use ρ = 1e-12 (C.3).
    """

    spec = FisherSpec(
        name="unit", title="unit-wise",
        summary="unit-wise FIM: one block ∇_{θ_i}fᵀ∇_{θ_i}f/N (+ρI) per unit (Eq. 23); α = Σ_{l<L} γ_l M_l + 1",
        equations="Eq. 23-24, S.128-S.137, S.156", aliases=("unit-wise",), default_damping=1e-12,
        multi_output_alpha=False,
        default_damping_reason="default for unit (ρ = 0 leaves the linear regime at finite width; paper C.3 uses 1e-12)",
        flops=_flops,
    )

    # ---- α -------------------------------------------------------------------------------
    def analytic_alpha(self, n_samples):
        """Σ_{l<L} γ_l M_l (S.128, γ_l of S.140–S.141) **plus 1** for the output layer (C = 1 only).

        The output unit has δ_L = 1 on every sample, so its full-rank block contributes
        exactly I to Θ̄ (the l = L term of S.137, which the paper neglects at large M).
        """
        if self.network.n_outputs != 1:
            return None
        return unit_alpha(self.network, include_output_layer=True)

    def alpha_note(self) -> str:
        if self.network.n_outputs != 1:
            return "unit-wise NGD with C > 1: no isotropy is claimed (Section 5 treats C = 1)"
        return (
            "α = Σ_{l<L} γ_l M_l (S.128; γ_l = P(φ′(u) ≠ 0), u ~ N(0, q_l), S.140–S.141) + 1 for the "
            "output unit (S.137's l = L term); needs ρ → 0, M0 >= N and linearly independent inputs"
        )

    # ---- per-layer preparation -------------------------------------------------------------
    def _budget(self, layer: int) -> int:
        """Entries a chunk's stacks may hold: a quarter of the layer's parameter count, at least 2^21 (small
        layers would pay a threaded BLAS's per-call overhead hundreds of times) and at most 2^23 (64 MiB: at
        M = 16,384 a quarter of the 16,384² layer, 0.24 P, was most of the peak memory above θ_0 and θ_t,
        while chunks of ~1,000 units already keep the batched calls efficient)."""
        m_out, fan = self.network.layer_shape(layer)
        return min(max(m_out * fan // 4, _CHUNK_MIN), _CHUNK_MAX)

    def _kernel_mode(self, kernel) -> str:
        if self.damping > 0:
            return _DAMPED
        xp = namespace_of(kernel)
        n = kernel.shape[0]
        ev = xp.linalg.eigvalsh(symmetrize(kernel))
        lo, hi = to_float(ev[0]), to_float(ev[-1])
        rtol = self.rtol if self.rtol is not None else default_rtol(n, dtype_name_of(kernel))
        if hi > 0 and lo > rtol * hi:
            return _EXACT
        return _PINV

    def _layer(self, signals, layer: int) -> _Layer:
        """Per-layer data; everything N×N-sized or per unit is float64 (see "Precision" in the module docstring)."""
        xp = namespace_of(signals.f)
        a = signals.a[layer - 1]
        a64 = as_float64(a)
        d = as_float64(signals.delta[layer - 1])
        e_samples = d[0, ...] * d[0, ...] if d.shape[0] == 1 else xp.sum(d * d, axis=0)  # (N, U)
        # K on the BLAS pool as configured: its rounding reaches the damped output unit's direction through
        # cond(K/N + ρI) (on one thread instead: 2e-11 of Δθ_L, 8e-10 of max|f − f_lin| at M = 4096)
        kernel = a64 @ a64.T  # K = a aᵀ: NumPy hands a·aᵀ of one array to BLAS's syrk (3–4× faster than a GEMM here)
        with blas_context(a):  # one BLAS thread for an N×N eigvalsh (ngdref.threads)
            mode = self._kernel_mode(kernel)
        return _Layer(layer, mode, a, a64, d, e_samples, kernel)

    # ---- the batched per-unit solve ------------------------------------------------------------
    def _solve_units(self, lay: _Layer, rhs, consume, n_rhs: int, shared_term=None, reduce_piece=None) -> None:
        """Z_i = Φ_i R_i for every unit, chunk by chunk: ``consume(units, Z)``, Z of shape (c, N, q); with
        ``reduce_piece``, ``consume(units, [reduce_piece(units_j, Z_j) for each piece j])`` instead, each piece's
        solve and reduction done by one thread (so a reduction over units, e.g. Θ̄'s sum, runs on the pool too).

        Φ_i = P_S A_i⁻¹ P_S with A_i = K_SS (exact), diag(√e)K_SS diag(√e)/N + ρI (damped) or
        the pseudo-inverse of diag(√e)K_SS diag(√e)/N (pinv); ``rhs(units)`` gives R, (c, N, q) (a
        :class:`_SharedRows` also gives each unit's compacted rows without the whole stack; one that names its
        ``columns`` makes the alive-set solves return :class:`_Compacted` blocks, so it needs ``reduce_piece``).
        Damped units alive on every sample with e constant over the samples share one eigenbasis
        (:meth:`_solve_shared`, or ``shared_term(ids, λ, V)`` instead where the caller handles those
        units itself); the others are solved unit by unit on their compacted sets.
        """
        n = lay.n
        alive = lay.alive_host
        n_alive = alive.sum(axis=1)
        compacted = isinstance(rhs, _SharedRows) and rhs.columns is not None
        if compacted and reduce_piece is None:
            raise ValueError("right-hand sides compacted by columns come back as blocks: give reduce_piece")
        # hidden layers only: the output layer has C units, nothing to share (its units take the per-unit solves)
        use_shared = lay.mode == _DAMPED and lay.layer < self.network.depth
        basis = self._shared_basis(lay) if use_shared else None
        shared = None if basis is None else basis[0]
        if lay.mode == _EXACT:
            q = n_rhs  # the dead-set path solves every column; the alive one only a unit's kept columns
            q_alive = rhs.kept if compacted else q
            n_dead = n - n_alive
            cost_alive = (2.0 / 3.0) * n_alive**3 + 2.0 * n_alive**2 * q_alive
            cost_dead = (2.0 / 3.0) * n_dead**3 + 2.0 * n_dead**2 * q + 4.0 * n * n * q
            via_dead = cost_dead < cost_alive
        else:
            via_dead = np.zeros(lay.units, dtype=bool)
        members = np.where(via_dead[:, None], ~alive, alive)  # the compacted set of each unit
        size = members.sum(axis=1)
        # members first (in sample order), then the others; its inverse scatters back
        order_idx = np.argsort(~members, axis=1, kind="stable")
        budget = self._budget(lay.layer)
        backend = backend_of(lay.a)
        if (~via_dead).any():  # the padded matrices are built lazily: here, before any thread reads them
            lay.padded("kernel")
        if via_dead.any():
            lay.padded("inverse")
        pool, blas = Pool.open(backend, "ngdref-unit"), (lambda: blas_context(backend))
        with pool:
            self._solve_chunks(lay, rhs, consume, n_rhs, via_dead, shared, size, order_idx, budget, backend, pool, blas,
                               reduce_piece)
        # the shared units last: their GEMMs may use every BLAS thread, and OpenBLAS's idle threads spin for a
        # while after a threaded call, competing with the pieces' threads had they come first
        if basis is not None:
            ids, lam, vec = np.nonzero(shared)[0], basis[1], basis[2]
            if shared_term is None:
                deliver = consume if reduce_piece is None else (lambda u, z: consume(u, [reduce_piece(u, z)]))
                with blas():  # small GEMMs (q = 1 in the steps)
                    self._solve_shared(lay, rhs, deliver, n_rhs, ids, lam, vec)
            else:
                shared_term(ids, lam, vec)

    def _solve_chunks(self, lay, rhs, consume, n_rhs, via_dead, shared, size, order_idx, budget, backend, pool, blas,
                      reduce_piece=None):
        """The chunk loop of :meth:`_solve_units`: chunks are made exactly as with one thread; each is
        split into contiguous pieces of units solved side by side (:class:`ngdref.threads.Pool`), then consumed whole.
        With ``reduce_piece`` a chunk is always cut into the same :func:`_reduce_pieces` pieces, whatever the number of
        threads, so that the reductions, added in piece order by ``consume``, do not depend on it."""
        n = lay.n
        # entries per unit besides its (p, p) stacks: the (N, q) right-hand sides and solution, or, with compacted
        # columns (alive set only), (p, q_c) blocks with q_c at most the layer's largest kept count
        kept = int(rhs.kept.max()) if isinstance(rhs, _SharedRows) and rhs.columns is not None else None
        for group in (False, True):
            ids = np.nonzero((via_dead == group) & (True if shared is None else ~shared))[0]
            if ids.size == 0:
                continue
            ids = ids[np.argsort(size[ids], kind="stable")]
            # in the alive-set group the units dead on every sample (the first ones: nothing to solve) and those
            # alive on every sample (the last ones: no compaction) take chunks of their own
            bounds = [ids.size] if group else [int(np.searchsorted(size[ids], b)) for b in (1, n)] + [ids.size]
            # units a chunk may hold when its largest unit is the one at each position (sizes ascend, so the
            # units that fit after ``start`` are a prefix: those at most ``room`` positions on)
            sizes = size[ids].astype(np.int64)
            # (units alive on every sample solve every column: :meth:`_phi_alive`)
            rhs_entries = n * n_rhs if kept is None or group else np.where(sizes == n, n * n_rhs, sizes * kept)
            room = np.maximum(1, budget // (3 * sizes * sizes + 4 * rhs_entries + 1))
            start = 0
            while start < ids.size:
                end = next(b for b in bounds if b > start)
                fits = np.arange(1, end - start + 1) <= room[start:end]
                stop = start + max(1, int(np.argmin(fits)) if not fits.all() else end - start)
                p = int(size[ids[stop - 1]])
                chunk = ids[start:stop]
                units = to_device(chunk, backend, "int64")
                if not group and n > 0 and int(size[chunk[0]]) == n:
                    # every unit alive on every sample: no compaction, so no index gathers and scatters — on
                    # NumPy these hold the GIL and are memory-bound, and cost a third of the solves at p = N
                    def piece(lo, hi, units=units):
                        return self._phi_alive(lay, units[lo:hi], rhs, None, None, None, None)
                    start = self._run_chunk(piece, units, consume, pool, blas, reduce_piece, group, stop)
                    continue
                idx_host = order_idx[chunk, :p]
                valid_host = np.arange(p)[None, :] < size[chunk][:, None]
                # padding slot j of the compacted set points at N + j of the padded matrices
                idx_mat_host = np.where(valid_host, idx_host, n + np.arange(p)[None, :])
                idx = to_device(idx_host, backend, "int64")
                idx_mat = to_device(idx_mat_host, backend, "int64")
                inv = to_device(np.argsort(order_idx[chunk], axis=1, kind="stable"), backend, "int64")
                valid = to_device(valid_host.astype(np.float64), backend, lay.kernel.dtype)
                phi = self._phi_dead if group else self._phi_alive

                def piece(lo, hi, phi=phi, units=units, idx=idx, idx_mat=idx_mat, inv=inv, valid=valid):
                    u = units[lo:hi]
                    return phi(lay, u, rhs, idx[lo:hi, ...], idx_mat[lo:hi, ...], inv[lo:hi, ...], valid[lo:hi, ...])

                start = self._run_chunk(piece, units, consume, pool, blas, reduce_piece, group, stop)

    @staticmethod
    def _run_chunk(piece, units, consume, pool, blas, reduce_piece, whole, stop):
        """Solve one chunk of :meth:`_solve_chunks` by ``piece(lo, hi)`` and consume it; returns ``stop``.

        With ``reduce_piece`` the chunk is always cut into the same :func:`_reduce_pieces` pieces, whatever the
        number of threads; otherwise it is split by the pool's threads, except where ``whole``: the exact
        mode's dead group stays whole, as a GEMM's rounding may depend on its column count and a split by the
        number of threads would make the results depend on that number."""
        count = int(units.shape[0])
        if reduce_piece is not None:
            pieces = _reduce_pieces()
            cut = sorted(set(count * j // pieces for j in range(pieces + 1)))

            def reduced(j):
                return reduce_piece(units[cut[j] : cut[j + 1]], piece(cut[j], cut[j + 1]))

            with blas():
                consume(units, pool.map(reduced, range(len(cut) - 1)))
            return stop
        with blas():
            z = piece(0, count) if whole else pool.split(piece, count)
        consume(units, z)
        return stop

    def _shared_basis(self, lay: _Layer):
        """The units of :meth:`_solve_shared` as a host bool mask and K = VΛVᵀ, (mask, λ, V); None when
        there are none (or when rounding made an eigenvalue of K so negative that a denominator
        ε_iλ/N + ρ would not stay >= ρ/2)."""
        xp = namespace_of(lay.e)
        mask = np.asarray(to_host(xp.all(lay.e == lay.e[:, :1], axis=1)), dtype=bool) & lay.alive_host.all(axis=1)
        if not mask.any():
            return None
        with blas_context(lay.a):  # one BLAS thread for an N×N eigh (ngdref.threads)
            lam, vec = xp.linalg.eigh(symmetrize(lay.kernel))
        eps_max = to_float(xp.max(lay.e))
        if eps_max * max(0.0, -to_float(lam[0])) / lay.n > 0.5 * self.damping:
            return None
        return mask, lam, vec

    def _solve_shared(self, lay: _Layer, rhs, consume, n_rhs: int, ids, lam, vec) -> None:
        """Φ_i R_i for the damped units alive on every sample with e_i(x_n) = ε_i for all n (ReLU-type φ′
        in the last hidden layer: δ_{L−1,i} = w_{L,i}φ′(u_i)σ_w/√M). The unit's dual block of Eq. 23
        (S.130–S.131) is then A_i = ε_i K/N + ρI, so with
        K = VΛVᵀ (one ``eigh`` per layer) A_i⁻¹ = V diag(1/(ε_iλ/N + ρ)) Vᵀ and a chunk of units costs
        two (N, N) × (N, c·q) GEMMs instead of c factorisations; ``ids``, λ, V from :meth:`_shared_basis`."""
        xp = namespace_of(lay.e)
        n = lay.n
        vt = _row_major(xp.linalg.matrix_transpose(vec))
        backend = backend_of(lay.a)
        count = max(1, self._budget(lay.layer) // (3 * n * max(1, n_rhs)))
        for start in range(0, ids.size, count):
            units = to_device(ids[start : start + count], backend, "int64")
            eps = xp.take(lay.e, units, axis=0)[:, :1]  # (c, 1): ε_i
            den = eps * lam[None, :] / float(n) + self.damping  # (c, N)
            w = _shared_left_product(vt, rhs(units))  # Vᵀ R_i
            w = w / den[:, :, None]
            consume(units, _shared_left_product(vec, w))

    def _phi_alive(self, lay: _Layer, units, rhs, idx, idx_mat, inv, valid):
        """Φ on the compacted alive set: solve A_i on S_i, padded to a block [[A_i, 0], [0, I]].

        ``rhs``: the right-hand sides as :meth:`_solve_units` takes them. ``idx`` (c, p): the compacted
        samples (padding slots repeat other samples and are masked by ``valid``); ``idx_mat``: the same with padding slot j → N + j, for gathers
        from the (2N, 2N) padded kernel. The right-hand side is zero on the padding, so the
        solution is too. Returns Z (c, N, q), or, where ``rhs`` is a :class:`_SharedRows` that names the columns
        each unit needs, the solutions on those columns alone as a :class:`_Compacted` (Θ̄'s set-up).
        """
        xp = namespace_of(lay.kernel)
        c, n = int(units.shape[0]), lay.n
        p = n if idx is None else idx.shape[1]
        if idx is None and isinstance(rhs, _SharedRows) and rhs.columns is not None:
            # alive on every sample: every column, dense (no column gather; the caller's reduction is then a
            # batched product instead of placing blocks — such a unit keeps nearly every column anyway)
            rhs = rhs.without_columns()
        r_c, cols = _compacted_rhs(rhs, units, idx)  # R_i's rows on the compacted set, (c, p, q); cols: see below
        if p == 0 or r_c.shape[2] == 0:
            z_c = xp.zeros((c, p, r_c.shape[2]), dtype=lay.kernel.dtype)
            return _deliver(z_c, inv, n, idx, valid, cols)
        if idx is None:  # alive on every sample: S_i is all of them, in order, and nothing is padded
            valid = xp.ones((c, n), dtype=lay.kernel.dtype)
        if lay.mode == _DAMPED:
            # A = D (K_SS + ρD⁻²) D with D = diag(√(e/N)) (1 on the padding): solve (K_SS + ρD⁻²) y = D⁻¹r and
            # z = D⁻¹y — a diagonal update instead of two scaling passes and a ρI pass over the (c, p, p) stack
            s = xp.sqrt(xp.take(lay.e, units, axis=0) / float(n))  # (c, N)
            s_c = s if idx is None else _gather_rows(s[:, :, None], idx)[:, :, 0] * valid + (1.0 - valid)  # (c, p)
            shift = self.damping / (s_c * s_c)
            if bool(xp.all(shift < _SHIFT_LIMIT)):  # e ≥ ~1e-290·ρN: ρ/s² stays finite
                r_c = r_c * (valid / s_c)[:, :, None]
                if idx is None:  # K + ρD⁻², made unit by unit from K (no (c, N, N) stack)
                    z_c = spd_solve_shifted(lay.kernel, shift, r_c)
                else:
                    z_c = spd_solve_stack(add_to_diagonal(_gather_sub(lay.padded("kernel"), idx_mat), shift), r_c)
                return _deliver(z_c / s_c[:, :, None], inv, n, idx, valid, cols)
            # ρ/s² too large for the diagonal form: the scaled form below
        # [[K_SS, 0], [0, I]], (c, p, p): this chunk's own array
        a_c = _stack_copies(lay.kernel, c) if idx is None else _gather_sub(lay.padded("kernel"), idx_mat)
        if lay.mode != _EXACT:
            # D K_SS D / N with D = diag(√e); the padding block becomes pad² I: I (damped, so
            # that the stack stays positive definite) or 0 (pinv, so the cut-off is unchanged)
            pad = 0.0 if lay.mode == _PINV else 1.0
            s = xp.sqrt(xp.take(lay.e, units, axis=0) / float(n))  # (c, N)
            s_c = s if idx is None else _gather_rows(s[:, :, None], idx)[:, :, 0] * valid + pad * (1.0 - valid)
            a_c *= s_c[:, :, None]
            a_c *= s_c[:, None, :]
        r_c = r_c * valid[:, :, None]
        if lay.mode == _PINV:
            z_c = psd_pinv(a_c, self.rtol) @ r_c
        else:
            if lay.mode == _DAMPED:
                a_c += self.damping * xp.eye(p, dtype=a_c.dtype)  # a_c is this chunk's own gather: in place
            z_c = spd_solve_stack(a_c, r_c)
        return _deliver(z_c, inv, n, idx, valid, cols)

    def _phi_dead(self, lay: _Layer, units, rhs, idx, idx_mat, inv, valid):
        """Φ = P_S K_SS⁻¹ P_S through H = K⁻¹: K_SS⁻¹ = H_SS − H_SD H_DD⁻¹ H_DS (exact mode)."""
        r = rhs(units)
        xp = namespace_of(r)
        c, n, q = r.shape
        p = idx.shape[1]
        alive = xp.astype(xp.take(lay.alive, units, axis=0), r.dtype)[:, :, None]  # (c, N, 1)
        h_pad = lay.padded("inverse")
        h = h_pad[:n, :n]
        w = _shared_left_product(h, r * alive)  # H R_i, (c, N, q)
        if p > 0:
            h_c = _gather_sub(h_pad, idx_mat)  # [[H_DD, 0], [0, I]]
            y_c = spd_solve_stack(h_c, _gather_rows(w, idx) * valid[:, :, None])
            w = w - _shared_left_product(h, _scatter_rows(y_c, inv, n))
        return w * alive

    # ---- structured path ---------------------------------------------------------------------
    def _post_scale(self, lay: _Layer, units):
        """The factor between Z and the coefficients of a_S: 1 (exact) or √e/N."""
        xp = namespace_of(lay.e)
        if lay.mode == _EXACT:
            return None
        return xp.sqrt(xp.take(lay.e, units, axis=0)) / float(lay.n)

    def _weights(self, lay: _Layer, x):
        """x / e (exact) or x / √e (otherwise) on the alive set, 0 elsewhere; x (U, N, q) row-major (the (U, N)
        factors are made in 2-D and broadcast once: with the (U, N, 1) arrays of q = 1 in δ's transposed layout
        NumPy's element-wise loops were 3× slower, 6.5 against 2.2 ms per layer at M = 4096, N = 100)."""
        xp = namespace_of(x)
        denom = lay.e if lay.mode == _EXACT else xp.sqrt(lay.e)
        alive = lay.alive
        safe = xp.where(alive, denom, xp.ones_like(denom))[:, :, None]
        out = x / safe
        return xp.where(alive[:, :, None], out, xp.zeros_like(out))

    def precondition(self, signals, v, output_metric=None):
        """Δθ_{l,i} = a_Sᵀ (post ∘ Φ_i(u_i/σ_i)) per unit (module docstring), θ_l-shaped per layer."""
        return factor_product(self.precondition_factors(signals, v, output_metric))

    def precondition_factors(self, signals, v, output_metric=None):
        """Per layer (coef, a_{l−1}): row i of coef (U, N) is post ∘ Φ_i(u_i/σ_i) scattered to the N samples
        (0 off S_i), so coef @ a_{l−1} is Δθ_l (module docstring); coef in the network's dtype."""
        return self.precondition_factors_many(signals, [v], output_metric)[0]

    def precondition_factors_many(self, signals, vs, output_metric=None):
        """:meth:`precondition_factors` for q vectors with one factorisation per unit: Φ_i applied to the q
        right-hand sides u_i/σ_i together (the solve of a unit costs about as much for q = 2 as for 1)."""
        xp = namespace_of(vs[0])
        q = len(vs)
        c, n = vs[0].shape
        v = xp.stack([as_float64(w) for w in vs], axis=-1)  # (C, N, q)
        out = [[] for _ in range(q)]
        for l in range(1, self.network.depth + 1):
            lay = self._layer(signals, l)
            u = None  # Σ_k δ_k ∘ v_k as (U, N, q), one output k at a time (no (C, N, U, q) temporary)
            for k in range(c):
                term = _row_major(xp.permute_dims(lay.delta[k, ...], (1, 0)))[:, :, None] * v[k, ...][None, :, :]
                u = term if u is None else u + term
            rhs_all = self._weights(lay, u)  # (U, N, q): Σ_k δ_k v_k / σ, gathered unit by unit below
            pieces, order = [], []

            def rhs(units, rhs_all=rhs_all):
                return xp.take(rhs_all, units, axis=0)

            def consume(units, z, lay=lay, pieces=pieces, order=order):
                post = self._post_scale(lay, units)
                pieces.append(z if post is None else z * post[:, :, None])
                order.append(units)

            self._solve_units(lay, rhs, consume, q)
            coef = _unpermute(xp.concat(pieces, axis=0), xp.concat(order, axis=0))  # (U, N, q), float64
            for j in range(q):  # the parameter-sized product runs in the net's dtype
                out[j].append((_row_major(xp.astype(coef[:, :, j], lay.a.dtype)), lay.a))
        return out

    def _theta_bar(self, s, s_prime):
        """Θ̄(x′, x) = Σ_{l,i} J_{l,i}(x′) G_{l,i}⁻¹ J_{l,i}(x)ᵀ/N (S.156); S.137 in closed form on x = x′.

        With ``coefficient(s)`` (x′ = x) and ρ = 0, each layer whose K is positive definite
        contributes its exact zero-damping value Σ_i diag(1[δ_i ≠ 0]) (C = 1; for C > 1 the
        per-sample blocks Σ_i δ_i δ_iᵀ/‖δ_i‖²) without any solve; ``coefficient(s, s)``
        evaluates the general formula on the training set instead.
        """
        xp = namespace_of(s.f)
        total = None
        for l in range(1, self.network.depth + 1):
            lay = self._layer(s, l)
            if s_prime is None and lay.mode == _EXACT:
                term = self._training_projector(lay)
            else:
                sp = s if s_prime is None else s_prime
                term = self._cross_term(lay, sp)
            total = term if total is None else total + term
        return xp.astype(total, s.f.dtype)

    def _training_projector(self, lay: _Layer):
        """S.137: Σ_i diag(1[δ_i ≠ 0]) (C = 1); (k, k′) blocks Σ_i δ_i^{(k)} δ_i^{(k′)}/e_i for C > 1."""
        xp = namespace_of(lay.e_samples)
        d = lay.delta  # (C, N, U)
        c, n, _ = d.shape
        alive = lay.e_samples > 0.0  # (N, U): the alive sets as the solves see them (e > 0), in δ's layout
        if c == 1:  # δ_i²/e_i = 1 on the alive set: diag(number of units alive on x_n)
            count = xp.sum(xp.astype(alive, d.dtype), axis=1)  # (N,)
            return count[:, None] * xp.eye(n, dtype=d.dtype)
        safe = xp.where(alive, lay.e_samples, xp.ones_like(lay.e_samples))
        blocks = []
        for k in range(c):
            row = []
            for kk in range(c):
                num = d[k, ...] * d[kk, ...]
                row.append(xp.sum(xp.where(alive, num / safe, xp.zeros_like(num)), axis=1))
            blocks.append(xp.stack(row, axis=0))
        w = xp.stack(blocks, axis=0)  # (C, C, N)
        eye = xp.eye(n, dtype=w.dtype)
        full = xp.permute_dims(w, (0, 2, 1))[:, :, :, None] * eye[None, :, None, :]  # (C, N, C, N)
        return xp.reshape(full, (c * n, c * n))

    def coefficient_pair(self, s_test, s):
        """(Θ̄(x, x), Θ̄(x′, x)) = (``coefficient(s)``, ``coefficient(s_test, s)``) from one set of
        per-unit solves: at ρ > 0 (and for a singular K at ρ = 0) every unit's block is factored once
        for the N + N′ columns K(x, [x, x′]) instead of once per call; a layer in the exact ρ = 0 mode
        takes S.137 on the training set as :meth:`coefficient` does."""
        xp = namespace_of(s.f)
        c, n, n_t = s.f.shape[1], s.n, s_test.n
        train = test = None
        for l in range(1, self.network.depth + 1):
            lay = self._layer(s, l)
            if lay.mode == _EXACT:
                term, term_t = self._training_projector(lay), self._cross_term(lay, s_test)
            else:
                a_p = xp.concat([as_float64(s.a[l - 1]), as_float64(s_test.a[l - 1])], axis=0)
                d_p = xp.concat([as_float64(s.delta[l - 1]), as_float64(s_test.delta[l - 1])], axis=1)
                full = xp.reshape(self._cross_term_arrays(lay, a_p, d_p), (c, n + n_t, c * n))
                term = xp.reshape(full[:, :n, :], (c * n, c * n))
                term_t = xp.reshape(full[:, n:, :], (c * n_t, c * n))
            train = term if train is None else train + term
            test = term_t if test is None else test + term_t
        return xp.astype(train, s.f.dtype), xp.astype(test, s.f.dtype)

    def _cross_term(self, lay: _Layer, sp):
        """Σ_i δ′_{k,s,i} Y_i[t, s] δ_{k′,t,i}/σ_{t,i}, Y_i = Φ_i(post_i ∘ K(x, x′)) (CN′, CN)."""
        return self._cross_term_arrays(lay, as_float64(sp.a[lay.layer - 1]), as_float64(sp.delta[lay.layer - 1]))

    def _cross_term_arrays(self, lay: _Layer, a_p, d_p):
        """:meth:`_cross_term` from x′'s float64 a_{l−1} (N′, fan) and δ_l (C, N′, U)."""
        xp = namespace_of(lay.a)
        c, n_p, _ = d_p.shape
        n = lay.n
        cross = lay.a_work @ a_p.T  # K(x, x′), (N, N′) (BLAS's transpose flag: 1.3–2.5× faster than copying a_pᵀ first)
        denom = lay.e_samples if lay.mode == _EXACT else xp.sqrt(lay.e_samples)  # (N, U)
        alive = lay.e_samples > 0.0
        safe = xp.where(alive, denom, xp.ones_like(denom))
        g_all = xp.where(alive, lay.delta / safe, xp.zeros_like(lay.delta))  # δ/e or δ/√e, (C, N, U)
        acc = []
        # C = 1: each unit solves only the x′ where δ′ ≠ 0 and its compacted block is placed into Θ̄ by
        # :func:`_place_blocks`. C > 1: every column, and the sum over units as C batched GEMMs over dense solutions
        # (placing blocks would take C² passes: at C = 3, M = 4096 the set-up's Θ̄ pair took 2.8–3.5 s that way
        # against 2.3–2.7 s)
        needed = None
        if c == 1:  # the x′ each unit's solution is needed on (δ′ ≠ 0)
            needed = np.asarray(to_host(xp.permute_dims(xp.any(d_p != 0.0, axis=0), (1, 0))), dtype=bool)  # (U, N′)
        rhs = _SharedRows(cross, lambda units: self._post_scale(lay, units), needed)  # post_i ∘ K(x, x′)
        d_pad = xp.concat([d_p, xp.zeros((c, 1, d_p.shape[2]), dtype=d_p.dtype)], axis=1)  # (C, N′ + 1, U)
        g_pad = xp.concat([g_all, xp.zeros((c, 1, g_all.shape[2]), dtype=g_all.dtype)], axis=1)  # (C, N + 1, U)

        def at(values, units, index):
            """values[:, units] (samples × units) read at each unit's own samples ``index`` (c, m): (c, m)."""
            per_unit = _row_major(xp.permute_dims(xp.take(values, units, axis=1), (1, 0)))  # (c, samples)
            return _gather_rows(per_unit[:, :, None], index)[:, :, 0]

        def reduce_piece(units, z):
            """Σ over the piece's units of δ′_{k,s′,i} Y_i[t, s′] g_{k′,t,i}, (C_k, C_k′, N′, N)."""
            if c == 1 and isinstance(z, _Compacted):  # each unit's block on its own rows t and columns s′
                w = z.z * at(g_pad[0, ...], units, z.rows)[:, :, None] * at(d_pad[0, ...], units, z.cols)[:, None, :]
                return _place_blocks(w, z.rows, z.cols, n, n_p)[None, None, :n_p, :n]
            # dense solutions (C > 1; C = 1 for units alive on every sample): batched products over s′
            x_perm = xp.permute_dims(z, (2, 0, 1))  # (N′, c, N): Y_i[t, s′] at [s′, i, t]
            dp = xp.permute_dims(xp.take(d_p, units, axis=2), (1, 0, 2))  # (N′, C, c)
            g = xp.take(g_all, units, axis=2)  # (C, N, c)
            parts = [dp @ (x_perm * xp.permute_dims(g[kk, ...], (1, 0))[None, :, :]) for kk in range(c)]  # [s′, k, t]
            return xp.permute_dims(xp.stack(parts, axis=0), (2, 0, 1, 3))  # [k′, s′, k, t] → [k, k′, s′, t]

        def consume(units, parts):
            for part in parts:
                if acc:
                    acc[0] = acc[0] + part
                else:
                    acc.append(part)

        # the shared-eigenbasis units by GEMMs over all of them (:meth:`_cross_term_shared`) where its
        # blocks of units and of rows hold >= 16 each within the layer's budget (N <= 256 at the 2^21 floor, <= 512 at the 2^23 cap)
        block = self._budget(lay.layer) // (2 * n * n)
        extra = []

        def shared_term(ids, lam, vec):
            extra.append(self._cross_term_shared(lay, ids, lam, vec, cross, d_p, g_all, block))

        self._solve_units(lay, rhs, consume, n_p, shared_term if block >= 16 else None, reduce_piece)
        full = xp.permute_dims(acc[0], (0, 2, 1, 3)) if acc else None  # (C_k, N′, C_k′, N)
        for term in extra:
            full = term if full is None else full + term
        return xp.reshape(full, (c * n_p, c * n))

    def _cross_term_shared(self, lay: _Layer, ids, lam, vec, cross, d_p, g_all, block: int):
        """The shared-eigenbasis units' part of :meth:`_cross_term` — Σ_i J_i(x′) G_i⁻¹ J_i(x)ᵀ/N of Eq. 11 with
        the unit blocks of Eq. 23 in their dual form (S.130–S.131, S.156) — (C_k, N′, C_k′, N), without a
        per-unit (N, N′) solution. With Φ_i = V diag(1/(ε_iλ/N + ρ)) Vᵀ (:meth:`_solve_shared`),
        post_i = √ε_i/N and B = Vᵀ K(x, x′):

            Θ̄[k, s′, k′, t] = Σ_j V[t, j] B[j, s′] M_{kk′}[s′, t, j],
            M_{kk′}[s′, t, j] = Σ_i δ′_{k,i}(x′_s′) g_{k′,i}(x_t) ε_i^{1/2}/(N(ε_iλ_j/N + ρ)),

        g = δ/√e: one (C·N′, c) × (c, N²) GEMM per block of c units (4·N²·N′ flops per unit and N² of
        memory traffic, instead of two (N, N) × (N, N′) GEMMs and a few (N, N′) passes per unit).
        Rows of x′ and units go in blocks of ``block`` (each temporary <= the layer's budget / 2).

        Units whose g_{k′,i}(x_t) = g_{k′,i} is the same on every x_t (ReLU: δ_{L−1,i} = w_{L,i}σ_w/√M where
        alive, so g = sign(w_{L,i})) make M_{kk′} independent of t, and their part is
        Θ̄[k, s′, k′, t] = Σ_j V[t, j] B[j, s′] M_{kk′}[s′, j], M_{kk′}[s′, j] = Σ_i δ′_{k,i}(x′_s′) g_{k′,i} w_i[j]:
        one (C·N′, c) × (c, N) GEMM (4·N·N′ flops per unit)."""
        xp = namespace_of(lay.e)
        c, n_p, _ = d_p.shape
        n = lay.n
        g_host = np.asarray(to_host(xp.take(g_all, to_device(ids, backend_of(lay.a), "int64"), axis=2)))
        flat = np.all(g_host == g_host[:, :1, :], axis=(0, 1))  # (U_s,): g constant over the samples
        b_t = xp.linalg.matrix_transpose(xp.linalg.matrix_transpose(vec) @ cross)  # Bᵀ, (N′, N)
        b_rows = xp.take(b_t, xp.arange(c * n_p, dtype=xp.int64) % n_p, axis=0)  # B[:, s′] per row (k, s′)
        total = None
        if flat.any():
            units = to_device(ids[flat], backend_of(lay.a), "int64")
            w = self._shared_weights(lay, units, lam)
            dp = xp.take(xp.reshape(d_p, (c * n_p, d_p.shape[2])), units, axis=1)  # (C·N′, U_f): rows (k, s′)
            g = xp.take(g_all[:, 0, :], units, axis=1)  # (C, U_f): g_{k′,i}
            per_kk = [((dp @ (g[kk, :][:, None] * w)) * b_rows) @ xp.linalg.matrix_transpose(vec) for kk in range(c)]
            total = xp.reshape(xp.stack(per_kk, axis=1), (c, n_p, c, n))
        if flat.all():
            return total
        rest = self._cross_term_shared_general(lay, ids[~flat], lam, vec, d_p, g_all, b_rows, block)
        return rest if total is None else total + rest

    def _shared_weights(self, lay: _Layer, units, lam):
        """w_i[j] = ε_i^{1/2}/(N(ε_iλ_j/N + ρ)) of :meth:`_cross_term_shared`, (c, N)."""
        xp = namespace_of(lay.e)
        eps = xp.take(lay.e, units, axis=0)[:, 0]  # ε_i, (c,)
        return (xp.sqrt(eps) / float(lay.n))[:, None] / (eps[:, None] * lam[None, :] / float(lay.n) + self.damping)

    def _cross_term_shared_general(self, lay: _Layer, ids, lam, vec, d_p, g_all, b_rows, block: int):
        """:meth:`_cross_term_shared` for units whose g varies over the samples: M_{kk′}[s′, t, j] by
        (C·N′, c) × (c, N²) GEMMs."""
        xp = namespace_of(lay.e)
        c, n_p, _ = d_p.shape
        n, count = lay.n, int(ids.size)
        units = to_device(ids, backend_of(lay.a), "int64")
        w = self._shared_weights(lay, units, lam)  # (U_s, N)
        dp = xp.take(xp.reshape(d_p, (c * n_p, d_p.shape[2])), units, axis=1)  # (C·N′, U_s): rows (k, s′)
        g = xp.take(g_all, units, axis=2)  # (C, N, U_s)
        rows = c * n_p
        per_kk = []
        for kk in range(c):
            g_kk = _row_major(xp.permute_dims(g[kk, ...], (1, 0)))  # (U_s, N)
            parts = []
            for r0 in range(0, rows, block):
                r1 = min(rows, r0 + block)
                m = None
                for u0 in range(0, count, block):
                    u1 = min(count, u0 + block)
                    gw = xp.reshape(g_kk[u0:u1, :, None] * w[u0:u1, None, :], (u1 - u0, n * n))  # [i, (t, j)]
                    prod = dp[r0:r1, u0:u1] @ gw
                    m = prod if m is None else m + prod
                f = vec[None, :, :] * b_rows[r0:r1, None, :]  # V[t, j] B[j, s′], (r, N, N)
                parts.append(xp.sum(xp.reshape(m, (r1 - r0, n, n)) * f, axis=2))  # (r, N)
            per_kk.append(xp.concat(parts, axis=0))  # (C·N′, N): [(k, s′), t]
        return xp.reshape(xp.stack(per_kk, axis=1), (c, n_p, c, n))

    def analytic_theta_bar(self, cross, train, forster=False):
        """Θ̄ = α I on the training set only (S.137, Lemma C.2), α = Σ_{l<L} γ_l M_l (S.128) with the
        network's widths (the infinite-width value: without the output unit's +1 that
        :meth:`analytic_alpha` adds for a finite network). No analytic Θ̄(x′, x) is known for test inputs (Section C.2.2, S.156):
        NgdrefError unless ``cross`` is the training set's own kernels."""
        check_pair(cross, train)
        if cross.x1.shape != train.x1.shape or not np.array_equal(cross.x1, train.x1):
            raise NgdrefError(
                "unit-wise NGD has no analytic Θ̄(x′, x) for test inputs x′ ≠ x (Section C.2.2, S.156); "
                "only Θ̄ = α I on the training set (S.137) is known"
            )
        return unit_alpha(train.network) * np.eye(train.n)

    # ---- matrix-free G v and G⁻¹ v (ngdref.fisher.operators) ---------------------------------
    @staticmethod
    def _unit_signals(signals, layer: int):
        """(a_{l−1} (N, fan), e = Σ_k δ_{l,i}^{(k)}² as (N, U)) of the unit blocks G_{l,i}."""
        xp = namespace_of(signals.f)
        d = signals.delta[layer - 1]
        return signals.a[layer - 1], xp.sum(d * d, axis=0)

    def fisher_matvec(self, signals, v, cache=None):
        """G v per unit, G_{l,i} v_i = aᵀ diag(e_i) a v_i/N + ρv_i (Eq. 23): two GEMMs per layer,
        (e ∘ a Vᵀ)ᵀ a / N."""
        n, out = float(signals.n), []
        for l in range(1, self.network.depth + 1):
            a, e = self._unit_signals(signals, l)
            o = ((a @ v[l - 1].T) * e).T @ a / n
            if self.damping > 0:
                o += self.damping * v[l - 1]
            out.append(o)
        return out

    def _unit_chunk(self, layer: int, n: int) -> int:
        """Units per chunk of :meth:`inverse_matvec`: its (c, N, N) dual stack and the two temporaries of
        its factorisation stay within the layer's budget and P/4 elements (peak ≲ 2P, issue 15)."""
        budget = min(self._budget(layer), max(self.network.n_params // 4, 1))
        return max(1, budget // (3 * n * n))

    def _unit_duals(self, root, k, n: int, invert: bool = True):
        """One chunk of units: the duals of Eq. 23's blocks (S.130–S.131), (b_ib_iᵀ/N + ρI)⁻¹ (ρ > 0) or
        (b_ib_iᵀ/N)⁺ (ρ = 0), (c, N, N);
        ``invert=False`` (ρ > 0): b_ib_iᵀ/N + ρI itself, for one solve."""
        xp = namespace_of(root)
        dual = root[:, :, None] * k[None, :, :] * root[:, None, :] / float(n)  # (c, N, N)
        if self.damping > 0:
            dual += self.damping * xp.eye(n, dtype=dual.dtype)
            return xp.linalg.inv(dual) if invert else dual
        return psd_pinv(dual, self.rtol)

    def inverse_matvec(self, signals, v, cache=None):
        """G⁻¹ v per unit by push-through with b_i = diag(√e_i) a (G_{l,i} = b_iᵀb_i/N + ρI) and the
        N×N duals D_i = (b_ib_iᵀ/N + ρI)⁻¹ (ρ > 0) or (b_ib_iᵀ/N)⁺ (ρ = 0; cut-off of
        :func:`~ngdref.linalg.psd_pinv` per unit):

            ρ > 0: G_{l,i}⁻¹x = (x − b_iᵀ D_i b_i x/N)/ρ,      ρ = 0: G_{l,i}⁺x = b_iᵀ D_i D_i b_i x/N.

        Memory: the units go in chunks of :meth:`_unit_chunk` (a (c, N, N) stack each, within the layer's
        budget and P/4 elements); a chunk's D_i are kept in ``cache`` while all kept factors total at most
        P elements, the others are recomputed on every product (U·N² > P at the paper's widths).

        Accuracy (ρ > 0): any backward-stable G⁻¹x errs by about eps·‖x‖/ρ (cond G = ‖G‖/ρ); the
        Woodbury form attains it. For x in the range of G − ρI (a gradient Jᵀr/N) the exact answer is
        only ~‖x‖/λ, so at ρ = 1e-12 the relative error is ~eps·λ/ρ ≈ 1e-6 — that is G's conditioning,
        not the algorithm's: no product with an arbitrary x can know that x lies in the range.
        ``precondition``/``direction`` work in sample space (x = Jᵀr given by r) and are accurate to eps."""
        xp = namespace_of(signals.f)
        cache = {} if cache is None else cache
        n, rho, out = signals.n, self.damping, []
        kept = cache.setdefault("unit:kept", [0])
        for l in range(1, self.network.depth + 1):
            a, e = self._unit_signals(signals, l)
            root = xp.sqrt(e).T  # (U, N)
            k = cache.get(f"unit:K:{l}")
            if k is None:
                k = cache[f"unit:K:{l}"] = a @ a.T
            bx = root * (v[l - 1] @ a.T)  # b_i x_i, (U, N)
            units, step, ys = root.shape[0], self._unit_chunk(l, n), []
            for lo in range(0, units, step):
                hi = min(units, lo + step)
                key = f"unit:{l}:{lo}"
                dual = cache.get(key)
                fits = kept[0] + (hi - lo) * n * n <= self.network.n_params
                if dual is None and rho > 0 and not fits:  # recomputed on every product: one SPD solve
                    # (blocked, :func:`_spd_solve`), a third of an inverse's work
                    ys.append(_spd_solve(self._unit_duals(root[lo:hi, :], k, n, invert=False), bx[lo:hi, :, None])[:, :, 0])
                    continue
                if dual is None:
                    dual = self._unit_duals(root[lo:hi, :], k, n)
                    if fits:
                        cache[key] = dual
                        kept[0] += (hi - lo) * n * n
                y = (dual @ bx[lo:hi, :, None])[:, :, 0]
                if rho == 0:
                    y = (dual @ y[:, :, None])[:, :, 0]
                ys.append(y)
            y = ys[0] if len(ys) == 1 else xp.concat(ys, axis=0)
            o = (root * y) @ a / float(n)  # b_iᵀ y_i / N
            out.append(o if rho == 0 else (v[l - 1] - o) / rho)
        return out


def _row_major(x):
    """``x`` (a transposed view) laid out row by row: per-unit rows are then gathered contiguously.
    A reshape to 1-D copies in C order on every backend; the second reshape is a view."""
    xp = namespace_of(x)
    return xp.reshape(xp.reshape(x, (-1,)), x.shape)


# ---- batched solves ---------------------------------------------------------------------------
#: largest matrix handed to one LAPACK factorisation (see :func:`_spd_solve`)
LAPACK_BLOCK = 64


def _spd_solve(a, b):
    """Solve a stack of symmetric positive definite systems a x = b, (c, p, p) and (c, p, q).

    For p > :data:`LAPACK_BLOCK` by 2×2 block elimination (the Schur complement of an SPD
    matrix is SPD, so no pivoting across blocks is needed), keeping every LAPACK call at
    most 64×64 (small stacked factorisations are where a threaded BLAS is efficient).
    """
    xp = namespace_of(a)
    p = a.shape[-1]
    if p <= LAPACK_BLOCK:
        return xp.linalg.solve(a, b)
    h = p // 2
    a21, a22 = a[..., h:, :h], a[..., h:, h:]
    x = _spd_solve(a[..., :h, :h], xp.concat([a[..., :h, h:], b[..., :h, :]], axis=-1))
    x12, x1b = x[..., :, : p - h], x[..., :, p - h :]
    z2 = _spd_solve(a22 - a21 @ x12, b[..., h:, :] - a21 @ x1b)
    return xp.concat([x1b - x12 @ z2, z2], axis=-2)


#: bounds of :meth:`UnitWiseFisher._budget` (entries)
_CHUNK_MIN, _CHUNK_MAX = 1 << 21, 1 << 23

#: the largest ρ/s² of :meth:`UnitWiseFisher._phi_alive`'s diagonal form (far below overflow)
_SHIFT_LIMIT = 1e290


class _SharedRows:
    """Right-hand sides R_i = diag(scale_i) M with one shared M (N, q) — Θ̄'s post_i ∘ K(x, x′). Called with
    units, the (c, N, q) stack; :func:`_compacted_rhs` gathers the compacted rows M[S_i] ∘ scale_i directly,
    without writing and reading that stack (N·q entries per unit, against p·q for the compacted rows).

    ``columns`` (U, q) host bool, optional: the columns unit i's solution is needed on (Θ̄(x′, x): the x′ where
    δ_{l,i}(x′) ≠ 0 — S.156 multiplies the solution's column s′ by δ_{l,i}(x′_s′), so the others are never
    read). :func:`_compacted_rhs` then gathers those columns alone, in their order (padding: a zero column),
    and the unit's solve has about half the right-hand sides for ReLU (the solutions on the kept columns are
    those of the full solve: each column is solved independently)."""

    def __init__(self, matrix, scale, columns=None):
        self.matrix, self.scale = matrix, scale  # scale(units): (c, N) or None (no scaling)
        self.columns = columns
        if columns is not None:
            xp = namespace_of(matrix)
            n = matrix.shape[0]
            # M with a zero column appended: padding slots of the compacted columns point at it
            self._padded = xp.concat([matrix, xp.zeros((n, 1), dtype=matrix.dtype)], axis=1)
            self._order = np.argsort(~columns, axis=1, kind="stable")  # kept columns first, in order
            self.kept = columns.sum(axis=1)  # (U,): columns kept per unit

    def without_columns(self) -> "_SharedRows":
        """The same right-hand sides with every column."""
        return _SharedRows(self.matrix, self.scale)

    def __call__(self, units):
        xp = namespace_of(self.matrix)
        n, q = self.matrix.shape
        base = xp.broadcast_to(self.matrix[None, :, :], (units.shape[0], n, q))
        scale = self.scale(units)
        return base if scale is None else base * scale[:, :, None]

    def column_index(self, units):
        """(c, q_c) host int64: unit u's kept columns first (ascending), then q (the zero column) as padding."""
        u = np.asarray(to_host(units), dtype=np.int64)
        q = self.matrix.shape[1]
        width = int(self.kept[u].max()) if u.size else 0
        cols = self._order[u, :width]
        return np.where(np.arange(width)[None, :] < self.kept[u][:, None], cols, q)


def _compacted_rhs(rhs, units, idx):
    """(rhs(units)[u, idx[u], :], None), (c, p, q): from a :class:`_SharedRows` by one gather of M's rows (the
    same products as scaling first), else gathered from the full stack. Where the :class:`_SharedRows` names
    its columns: (the (c, p, q_c) rows and kept columns, cols (c, q_c) on the device, padding = q).
    ``idx`` None: every row and column, in order (units alive on every sample: no gather)."""
    if idx is None:
        assert not isinstance(rhs, _SharedRows) or rhs.columns is None  # _phi_alive drops the columns
        return rhs(units), None
    if not isinstance(rhs, _SharedRows):
        return _gather_rows(rhs(units), idx), None
    xp = namespace_of(rhs.matrix)
    c, p = idx.shape
    cols = None
    if rhs.columns is None:
        rows = xp.reshape(xp.take(rhs.matrix, xp.reshape(idx, (-1,)), axis=0), (c, p, rhs.matrix.shape[1]))
    else:
        cols = to_device(rhs.column_index(units), backend_of(rhs.matrix), "int64")
        width = rhs._padded.shape[1]
        flat = xp.reshape(idx[:, :, None] * width + cols[:, None, :], (-1,))
        rows = xp.reshape(xp.take(xp.reshape(rhs._padded, (-1,)), flat, axis=0), (c, p, cols.shape[1]))
    scale = rhs.scale(units)
    if scale is None:
        return rows, cols
    return rows * _gather_rows(scale[:, :, None], idx), cols


@dataclass
class _Compacted:
    """Per-unit solutions on their compacted rows and columns: z (c, p, q) with rows (c, p) and cols (c, q)
    naming the sample and the column of each entry (padding: rows N, cols q — one past the last — with z = 0)."""

    z: object
    rows: object
    cols: object


def _deliver(z_c, inv, n: int, idx, valid, cols):
    """:meth:`UnitWiseFisher._phi_alive`'s result: Z scattered to its N rows, or, with compacted columns
    ``cols``, the compacted block as it is (padding rows renamed N)."""
    if idx is None:  # every row and column kept, in order
        return z_c
    if cols is None:
        return _scatter_rows(z_c, inv, n)
    xp = namespace_of(z_c)
    rows = xp.where(valid > 0, idx, xp.full_like(idx, n))
    return _Compacted(z_c, rows, cols)


def _place_blocks(w, rows, cols, n_rows: int, n_cols: int):
    """Σ_u of the blocks w[u] (c, p, q) placed at [cols[u], rows[u]] of an (n_cols + 1, n_rows + 1) array,
    whose last row and column collect the padding (dropped by the caller): the sum over units of
    :meth:`UnitWiseFisher._cross_term_arrays`. NumPy: one ``bincount`` (units added in order, so a piece's sum
    does not depend on the thread that makes it); elsewhere (the array API has no scatter-add) each block is
    spread by one-hot products, (n_cols+1, q) @ w[u]ᵀ @ (p, n_rows+1), and the blocks summed — the same sum in
    another order."""
    xp = namespace_of(w)
    shape = (n_cols + 1, n_rows + 1)
    if type(w) is np.ndarray:
        flat = (cols[:, None, :] * shape[1] + rows[:, :, None]).reshape(-1)
        return np.bincount(flat, weights=w.reshape(-1), minlength=shape[0] * shape[1]).reshape(shape)
    hot_cols = xp.astype(cols[:, None, :] == xp.arange(shape[0], dtype=cols.dtype)[None, :, None], w.dtype)
    hot_rows = xp.astype(rows[:, :, None] == xp.arange(shape[1], dtype=rows.dtype)[None, None, :], w.dtype)
    return xp.sum(hot_cols @ xp.linalg.matrix_transpose(w) @ hot_rows, axis=0)


def _stack_copies(mat, c: int):
    """c writable copies of ``mat`` stacked, (c, n, n): one broadcast copy (no index arrays)."""
    xp = namespace_of(mat)
    return xp.asarray(xp.broadcast_to(mat[None, ...], (c, *mat.shape)), copy=True)


def _reduce_pieces() -> int:
    """Pieces of a chunk whose solves and reductions run side by side (:meth:`UnitWiseFisher._solve_chunks`): the
    CPUs this process may use, between 2 and 8 — a property of the machine, not of the number of threads that
    run (``THREADS``, the BLAS pool, ``--jobs``), so a reduction over units adds the same partial sums in the
    same order however many threads compute them. More pieces than CPUs only cost: with 2 CPUs, 8 pieces made
    the set-up's Θ̄ 1.5× slower than 2 (M = 4096, N = N′ = 100)."""
    return max(2, min(8, cpu_count()))

def _shared_left_product(h, stack):
    """h @ stack[u] for every u, as one (N, N) × (N, c·q) GEMM instead of c small products."""
    xp = namespace_of(stack)
    c, n, q = stack.shape
    flat = xp.reshape(xp.permute_dims(stack, (1, 0, 2)), (n, c * q))
    return xp.permute_dims(xp.reshape(h @ flat, (n, c, q)), (1, 0, 2))


# ---- gather / scatter helpers (array API: 1-D ``take`` on flattened arrays) -----------------------
def _gather_rows(arr, idx):
    """out[u, a, :] = arr[u, idx[u, a], :] for arr (c, N, q), idx (c, p)."""
    xp = namespace_of(arr)
    c, n, q = arr.shape
    p = idx.shape[1]
    offsets = xp.reshape(xp.arange(c, dtype=idx.dtype) * n, (c, 1))
    flat = xp.reshape(idx + offsets, (-1,))
    return xp.reshape(xp.take(xp.reshape(arr, (c * n, q)), flat, axis=0), (c, p, q))


def _gather_sub(mat, idx):
    """out[u] = mat[idx[u]][:, idx[u]] for a shared (N, N) matrix, idx (c, p)."""
    xp = namespace_of(mat)
    n = mat.shape[0]
    c, p = idx.shape
    flat = xp.reshape(idx[:, :, None] * n + idx[:, None, :], (-1,))
    return xp.reshape(xp.take(xp.reshape(mat, (-1,)), flat, axis=0), (c, p, p))


def _scatter_rows(z_c, inv, n: int):
    """Inverse of the compaction: out[u, m, :] = z_c[u, inv[u, m], :] (0 beyond the compacted rows)."""
    xp = namespace_of(z_c)
    c, p, q = z_c.shape
    if p < n:
        z_c = xp.concat([z_c, xp.zeros((c, n - p, q), dtype=z_c.dtype)], axis=1)
    return _gather_rows(z_c, inv)


def _unpermute(stacked, order):
    """Rows of ``stacked`` are units ``order``; return them in unit order 0…U−1."""
    xp = namespace_of(stacked)
    return xp.take(stacked, xp.argsort(order), axis=0)


