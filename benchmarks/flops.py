"""Approximate FLOP counts per benchmark case, from the shapes alone.

The shapes and shared pieces (:class:`Shape`, :func:`pinv`, :func:`signals`, …) and every
approximation's own model live in the library (:mod:`ngdref.fisher.cost`, each family's
``spec.flops``); this module adds the cases that are not an approximation (the explicit
oracles, the analytic kernels, the GEMM reference). See :mod:`ngdref.fisher.cost` for the
counting conventions. Transcendental functions (the arc-cosine closed forms of the analytic
kernels) are counted as :data:`TRANSCENDENTAL` FLOPs per element per layer.
"""

from __future__ import annotations

from ngdref.fisher import fisher_class
from ngdref.fisher.cost import (  # noqa: F401  (re-exported for the suite)
    EIGH,
    PINV,
    Shape,
    backward,
    forward,
    jvp,
    layer_kernels,
    ntk_explicit,
    ntk_structured,
    pinv,
    signals,
    solve,
    vjp,
)

#: FLOPs charged per element for one closed-form kernel evaluation (arccos, sqrt, …)
TRANSCENDENTAL = 40.0


def _model(name: str, s: Shape, damping: float, case: str) -> tuple[float | None, str]:
    flops = fisher_class(name).spec.flops
    if flops is None:
        return None, f"no FLOP model in the spec of '{name}'"
    return flops(s, damping)[case]


def direction(name: str, s: Shape, damping: float = 0.0) -> tuple[float | None, str]:
    """FLOPs of one structured NGD direction Δθ = G⁻¹∇L, signals given (the spec's model)."""
    return _model(name, s, damping, "direction")


def coefficient(name: str, s: Shape, damping: float = 0.0) -> tuple[float | None, str]:
    """FLOPs of Θ̄(x, x) from signals (the spec's model)."""
    return _model(name, s, damping, "coefficient")


def step(name: str, s: Shape, damping: float = 0.0) -> tuple[float | None, str]:
    """One training step: signals + direction + the update θ ← θ − ηΔθ (2·P)."""
    d, model = direction(name, s, damping)
    if d is None:
        return None, model
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
