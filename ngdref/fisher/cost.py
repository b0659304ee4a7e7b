"""FLOP models of the structured paths, from the shapes alone (for the benchmarks).

Each approximation's spec (:class:`ngdref.fisher.spec.FisherSpec`) points at its own model,
written next to its code; this module holds the shapes and the shared pieces. These are
*models*, written to turn a measured time into GFLOP/s and into a "GEMM floor" (counted
FLOPs / the machine's measured large-GEMM rate). They are honest approximations, not exact
operation counts:

* a dense product (m×k)·(k×n) costs 2·m·k·n;
* element-wise work (activations, Hadamard products, scaling) is counted
  once per element where it is of the same order as a product, and left out
  where it is dominated (it is memory-bound, so the floor under-states it);
* a symmetric eigendecomposition with vectors (``eigh``) is counted as 9·n³ and
  the pseudo-inverse built from it (V diag(1/λ) Vᵀ) as 9·n³ + 2·n³ = 11·n³;
  a linear solve with k right-hand sides as (2/3)·n³ + 2·n²·k; an inverse as 2·n³.
  LAPACK on small matrices (n ≈ 100) runs far below the GEMM rate, so cases
  dominated by those terms sit high above their floor.

Notation: widths (M_0, …, M_L) with M_L = C, fan_l = M_{l−1} + [σ_b > 0] the
number of columns of θ_l = [W_l | b_l], N samples, P = Σ_l M_l·fan_l.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EIGH", "PINV", "Shape", "backward", "forward", "layer_kernels", "model", "pinv", "signals", "solve",
           "vjp", "jvp"]

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


def inverse(damping: float):
    """The dual inverse of a k×k kernel: a pseudo-inverse at ρ = 0, a one-right-hand-side solve otherwise."""
    return (lambda k: pinv(k)) if damping == 0 else (lambda k: solve(k, 1))


def model(direction: tuple[float, str], coefficient: tuple[float, str]) -> dict:
    """A FLOP model's result: ``{"direction": (flops, formula), "coefficient": (flops, formula)}``."""
    return {"direction": direction, "coefficient": coefficient}
