"""Approximate FLOP counts per benchmark case, from the shapes alone.

These are *models*, written to turn a measured time into GFLOP/s and into a
"GEMM floor" (counted FLOPs / the machine's measured large-GEMM rate). They are
honest approximations, not exact operation counts:

* a dense product (m×k)·(k×n) costs 2·m·k·n;
* element-wise work (activations, Hadamard products, scaling) is counted
  once per element where it is of the same order as a product, and left out
  where it is dominated (it is memory-bound, so the floor under-states it);
* a symmetric eigendecomposition with vectors (``eigh``) is counted as 9·n³ and
  the pseudo-inverse built from it (V diag(1/λ) Vᵀ) as 9·n³ + 2·n³ = 11·n³;
  a linear solve with k right-hand sides as (2/3)·n³ + 2·n²·k; an inverse as 2·n³.
  LAPACK on small matrices (n ≈ 100) runs far below the GEMM rate, so cases
  dominated by those terms sit high above their floor;
* transcendental functions (the arc-cosine closed forms of the analytic
  kernels) are counted as :data:`TRANSCENDENTAL` FLOPs per element per layer.

Notation: widths (M_0, …, M_L) with M_L = C, fan_l = M_{l−1} + [σ_b > 0] the
number of columns of θ_l = [W_l | b_l], N samples, P = Σ_l M_l·fan_l.
"""

from __future__ import annotations

from dataclasses import dataclass

#: FLOPs charged per element for one closed-form kernel evaluation (arccos, sqrt, …)
TRANSCENDENTAL = 40.0
#: eigh with eigenvectors ≈ EIGH · n³
EIGH = 9.0
#: pseudo-inverse from eigh ≈ PINV · n³
PINV = 11.0


@dataclass(frozen=True)
class Shape:
    """The shapes that enter the FLOP model of one case."""

    widths: tuple[int, ...]
    n: int
    bias: bool

    @property
    def depth(self) -> int:
        return len(self.widths) - 1

    @property
    def c(self) -> int:
        return self.widths[-1]

    @property
    def cn(self) -> int:
        return self.c * self.n

    def m(self, layer: int) -> int:
        """M_l (1-based layer)."""
        return self.widths[layer]

    def fan(self, layer: int) -> int:
        """Columns of θ_l: M_{l−1} + [bias]."""
        return self.widths[layer - 1] + int(self.bias)

    @property
    def layers(self) -> range:
        return range(1, self.depth + 1)

    @property
    def n_params(self) -> int:
        return sum(self.m(l) * self.fan(l) for l in self.layers)

    @classmethod
    def of(cls, network, n: int) -> "Shape":
        return cls(tuple(network.widths), int(n), bool(network.has_bias))


def pinv(n: int) -> float:
    return PINV * n**3


def solve(n: int, k: int) -> float:
    return (2.0 / 3.0) * n**3 + 2.0 * n**2 * k


# --------------------------------------------------------------------------- signals
def forward(s: Shape) -> float:
    """u_l = a_{l−1} θ_lᵀ: 2·N·fan_l·M_l per layer, plus φ on each hidden unit."""
    return sum(2.0 * s.n * s.fan(l) * s.m(l) + s.n * s.m(l) for l in s.layers)


def backward(s: Shape) -> float:
    """δ_l = φ′(u_l) ⊙ (σ_w/√M_l) δ_{l+1} W_{l+1}: 2·C·N·M_{l+1}·M_l per layer l < L."""
    return sum(2.0 * s.cn * s.m(l + 1) * s.m(l) + 2.0 * s.cn * s.m(l) for l in range(1, s.depth))


def signals(s: Shape) -> float:
    return forward(s) + backward(s)


# --------------------------------------------------------------------------- kernels
def layer_kernels(s: Shape) -> float:
    """Θ_l for all l: δ-Gram 2·(CN)²·M_l, feature Gram 2·N²·fan_l, Hadamard (CN)² per layer."""
    return sum(2.0 * s.cn**2 * s.m(l) + 2.0 * s.n**2 * s.fan(l) + 2.0 * s.cn**2 for l in s.layers)


def ntk_structured(s: Shape) -> float:
    """Signals + the L layer kernels (S.68) and their sum."""
    return signals(s) + layer_kernels(s)


def ntk_explicit(s: Shape) -> float:
    """Signals + forming J (one product per entry, CN·P) + J Jᵀ (2·(CN)²·P)."""
    return signals(s) + s.cn * s.n_params + 2.0 * s.cn**2 * s.n_params


def vjp(s: Shape) -> float:
    """Jᵀv per layer: (Σ_k v_k ⊙ δ_l^{(k)})ᵀ a_{l−1}: 2·CN·M_l·fan_l (+ CN·M_l to combine)."""
    return sum(2.0 * s.cn * s.m(l) * s.fan(l) + s.cn * s.m(l) for l in s.layers)


def jvp(s: Shape) -> float:
    """J v: a_{l−1} V_lᵀ (2·N·fan_l·M_l) and the contraction with δ (2·CN·M_l)."""
    return sum(2.0 * s.n * s.fan(l) * s.m(l) + 2.0 * s.cn * s.m(l) for l in s.layers)


# --------------------------------------------------------------------------- Fisher family
def _kfac_layer(s: Shape, l: int, with_left: bool) -> float:
    """One K-FAC layer: δ-Gram + pinv (CN), ā-Gram + pinv (N), and the products of S.96–S.103."""
    cn, n, fan, m = s.cn, s.n, s.fan(l), s.m(l)
    left = (2.0 * cn**2 * m + pinv(cn)) if with_left else 0.0
    right = 2.0 * n**2 * fan + pinv(n)
    return left + right


def direction(name: str, s: Shape, damping: float = 0.0) -> tuple[float, str]:
    """FLOPs of one structured NGD direction Δθ = G⁻¹∇L, signals given. Returns (flops, model)."""
    cn, n, L = s.cn, s.n, s.depth
    inv = (lambda k: pinv(k)) if damping == 0 else (lambda k: solve(k, 1))
    if name == "gd":
        return vjp(s), "vjp"
    if name == "exact":
        return layer_kernels(s) + inv(cn) + 2.0 * cn**2 + vjp(s), "kernels + pinv(CN) + matvec + vjp"
    if name in ("bd", "tridiag", "layer"):
        if damping == 0:
            solve_cost = L * (pinv(cn) + 2.0 * cn**2)
        else:
            solve_cost = solve(L * cn, cn) + L * 2.0 * cn**2
        return layer_kernels(s) + solve_cost + vjp(s), "kernels + L·pinv(CN) + L matvecs + vjp"
    if name == "kfac":
        total = 0.0
        for l in s.layers:
            fan, m = s.fan(l), s.m(l)
            total += _kfac_layer(s, l, l < L)
            total += 2.0 * n**2 * fan  # (Ã/N)⁺ ā
            total += 2.0 * cn * n * fan  # (B/N)⁺E_v · right
            total += 2.0 * cn * m * fan  # δᵀ (…)
        return total, "per layer: δ-Gram + pinv(CN) + ā-Gram + pinv(N) + products of S.96–S.103"
    if name == "unit":
        # unit-wise (ngdref.fisher.unitwise): per layer K = a aᵀ (2N²fan), eigvalsh + inv of K
        # (≈ 6N³), one compacted solve per unit on ≈ N/2 samples (ReLU: half the samples
        # alive; (2/3)p³ + 2p²), and Δθ_{l,i} = a_Sᵀ z_i (2·N·fan per unit).
        total = 0.0
        for l in s.layers:
            m, fan = s.m(l), s.fan(l)
            p = max(1, n // 2)
            total += 2.0 * n**2 * fan + 6.0 * n**3 + m * solve(p, 1) + 2.0 * n * m * fan + 2.0 * cn * m
        return total, "per layer: K = aaᵀ + eig/inv(N) + M_l solves on ≈N/2 samples + a_Sᵀz (2N·M_l·fan)"
    if name in ("diag", "quasi-diag"):
        # F_l = Σ_k(δ∘δ)ᵀ(a∘a)/N (2N·M_l·fan_l), the gradient (a vjp) and the O(P) map;
        # quasi-diag adds the bias coupling F_bj (another 2N·M_l·fan_l) and ≈ 20 O(P) passes.
        per = sum(2.0 * s.n * s.m(l) * s.fan(l) for l in s.layers)
        if name == "quasi-diag":
            return 2.0 * per + vjp(s) + 20.0 * s.n_params, "2 squared-signal GEMMs (F_ii, F_bj) + vjp + ≈20P element-wise"
        return per + vjp(s) + 3.0 * s.n_params, "squared-signal GEMM (δ²)ᵀ(a²) + vjp + O(P) element-wise"
    return vjp(s), "generic lower bound (vjp only; no model for this approximation)"


def coefficient(name: str, s: Shape, damping: float = 0.0) -> tuple[float, str]:
    """FLOPs of Θ̄(x, x) from signals. Returns (flops, model)."""
    cn, n, L = s.cn, s.n, s.depth
    if name == "gd":
        return layer_kernels(s), "kernels (Θ̄ = Θ)"
    if name == "exact":
        return layer_kernels(s) + pinv(cn) + 2.0 * cn**3, "kernels + pinv(CN) + Θ·Θ⁺"
    if name in ("bd", "tridiag", "layer"):
        if damping == 0:
            extra = L * (pinv(cn) + 2.0 * cn**3)
        else:
            extra = solve(L * cn, cn) + L * 2.0 * cn**3
        return layer_kernels(s) + extra, "kernels + L·(pinv(CN) + Θ_l·R_l)"
    if name == "kfac":
        total = 0.0
        for l in s.layers:
            total += _kfac_layer(s, l, l < L) + 2.0 * cn**3 + 2.0 * n**3 + cn**2
        return total, "per layer: Grams + pinvs + two N³ products"
    if name == "unit":
        # on the training set at ρ = 0 with K ≻ 0, S.137 in closed form: per layer K = aaᵀ,
        # eigvalsh for the K ≻ 0 test (≈ 4N³) and O(C²·N·M_l) element-wise work; no per-unit solve
        total = sum(2.0 * n**2 * s.fan(l) + 4.0 * n**3 + 4.0 * cn * s.m(l) for l in s.layers)
        return total, "per layer: K = aaᵀ + eigvalsh(N) + O(N·M_l) (closed form S.137 on the training set)"
    if name in ("diag", "quasi-diag"):
        # the maps of `direction` (without the vjp), then per layer the sample-pair GEMM
        # (a′_s∘a_t) μᵀ on the N(N+1)/2 pairs (2·fan·M_l each), forming the pairs (fan each),
        # and the δ′δ contraction (≈ 3·M_l per pair and output pair); quasi-diag adds the
        # low-rank part (four N×fan×M_l products and three (CN)²·M_l products).
        d, _ = direction(name, s, damping)
        d -= vjp(s)
        pairs = n * (n + 1) / 2.0
        total = d
        for l in s.layers:
            m, fan = s.m(l), s.fan(l)
            total += pairs * (2.0 * fan * m + fan + 3.0 * s.c**2 * m)
            if name == "quasi-diag":
                total += 8.0 * n * fan * m + 6.0 * cn**2 * m
        return total, "maps + sample-pair GEMM N(N+1)/2·2·fan·M_l + pair contraction (+ low rank)"
    return layer_kernels(s), "generic lower bound (kernels only; no model for this approximation)"


def step(name: str, s: Shape, damping: float = 0.0) -> tuple[float, str]:
    """One training step: signals + direction + the update θ ← θ − ηΔθ (2·P)."""
    d, model = direction(name, s, damping)
    return signals(s) + d + 2.0 * s.n_params, f"signals + ({model}) + 2P update"


def explicit_direction(name: str, s: Shape) -> tuple[float, str]:
    """The explicit oracle: signals, J (CN·P), G = JᵀJ/N (2·CN·P²), pinv(P) (11P³), G⁺·∇L."""
    p = s.n_params
    return (
        signals(s) + s.cn * p + 2.0 * s.cn * p**2 + pinv(p) + 2.0 * p**2 + 2.0 * s.cn * p,
        "signals + J + JᵀJ + pinv(P) + matvec",
    )


def explicit_coefficient(name: str, s: Shape) -> tuple[float, str]:
    """The explicit oracle: J, G, pinv(P), then J G⁺ Jᵀ (2·CN·P² + 2·(CN)²·P)."""
    p = s.n_params
    return (
        signals(s) + s.cn * p + 2.0 * s.cn * p**2 + pinv(p) + 2.0 * s.cn * p**2 + 2.0 * s.cn**2 * p,
        "signals + J + JᵀJ + pinv(P) + J G⁺ Jᵀ",
    )


def analytic_kernels(n: int, m0: int, depth: int) -> tuple[float, str]:
    """Analytic kernels (ReLU closed forms): X Xᵀ (2·N²·M0) + per hidden layer A_l, Ξ_l closed
    forms (2·TRANSCENDENTAL·N²) + B and Θ_l element-wise (≈ 6·N² per layer)."""
    return (
        2.0 * n**2 * m0 + (depth - 1) * 2.0 * TRANSCENDENTAL * n**2 + depth * 6.0 * n**2,
        f"2N²M0 + (L−1)·2·{TRANSCENDENTAL:g}N² (closed forms) + 6LN²",
    )


def gemm(n: int) -> float:
    return 2.0 * n**3
