"""Explicit Jacobians (Eq. 6, S.64) and their structured products.

Explicit objects (memory-checked before allocation, see :mod:`ngdref.memory`):

* :func:`jacobian` — J = ∇_θ f, shape (CN, P), rows output-major (k·N + n),
  columns in the flat parameter order of :mod:`ngdref.network`;
* :func:`layer_jacobian` — the block ∇_{θ_l} f, (CN, M_l (M_{l−1}+1));
* :func:`unit_jacobian` — the block ∇_{θ_i^{(l)}} f, (CN, M_{l−1}+1) (Section 5).

Entry (k·N+n, (l, i, j)) is δ_{l,i}^{(k)}(x_n) a_{l−1,j}(x_n) (S.64 with the scaled
input a of :mod:`ngdref.network`). Structured products never form J:

* :func:`jvp` — J v in function space, Σ_l Σ_i δ_{l,i}^{(k)} (a_{l−1} V_lᵀ)_i;
* :func:`vjp` — Jᵀ v per layer, (Σ_k v_k ⊙ δ_l^{(k)})ᵀ a_{l−1}, an (M_l × fan-in) matrix;
  :func:`vjp_factors` gives the two factors of that product instead (rank ≤ N per layer).
"""

from __future__ import annotations

from .backend import dtype_name_of, namespace_of
from .memory import check_alloc
from .network import Network, Signals


def _itemsize(x) -> int:
    return 4 if dtype_name_of(x) == "float32" else 8


def layer_jacobian(signals: Signals, layer: int):
    """∇_{θ_l} f as an explicit (CN, M_l·(M_{l−1}+1)) matrix."""
    d = signals.delta[layer - 1]
    a = signals.a[layer - 1]
    c, n, m = d.shape
    check_alloc((c * n, m * a.shape[1]), _itemsize(a), f"explicit Jacobian block of layer {layer}")
    xp = namespace_of(a)
    block = xp.reshape(d, (c, n, m, 1)) * xp.reshape(a, (1, n, 1, a.shape[1]))
    return xp.reshape(block, (c * n, m * a.shape[1]))


def unit_jacobian(signals: Signals, layer: int, unit: int):
    """∇_{θ_i^{(l)}} f, (CN, M_{l−1}+1): rows δ_{l,i}^{(k)}(x_n) a_{l−1}(x_n)."""
    d = signals.delta[layer - 1][:, :, unit]  # (C, N)
    a = signals.a[layer - 1]
    xp = namespace_of(a)
    c, n = d.shape
    return xp.reshape(xp.reshape(d, (c, n, 1)) * xp.reshape(a, (1, n, a.shape[1])), (c * n, a.shape[1]))


#: entries per temporary block when :func:`jacobian` fills J (a few units of a layer at a time)
_FILL_BLOCK = 1 << 22


def jacobian(network: Network, params, x, signals: Signals | None = None):
    """The full explicit Jacobian J(x) = ∇_θ f(x), (CN, P) (Eq. 6).

    J is allocated once and filled a few units at a time (each unit's columns are
    δ_{l,i}^{(k)}(x_n) a_{l−1}(x_n), contiguous in the flat order), so the peak is J plus a
    block of at most ``_FILL_BLOCK`` entries — which is what the memory check counts."""
    signals = signals if signals is not None else network.signals(params, x)
    c, n = network.n_outputs, x.shape[0]
    check_alloc((c * n, network.n_params), _itemsize(x), "explicit Jacobian J")
    xp = namespace_of(x)
    j = xp.empty((c * n, network.n_params), dtype=x.dtype)
    for l in range(1, network.depth + 1):
        d, a = signals.delta[l - 1], signals.a[l - 1]
        m, fan = d.shape[2], a.shape[1]
        start = network.layer_offsets[l - 1]
        units = max(1, _FILL_BLOCK // max(1, c * n * fan))
        for i0 in range(0, m, units):
            i1 = min(m, i0 + units)
            block = xp.reshape(d[:, :, i0:i1], (c, n, i1 - i0, 1)) * xp.reshape(a, (1, n, 1, fan))
            j[:, start + i0 * fan : start + i1 * fan] = xp.reshape(block, (c * n, (i1 - i0) * fan))
    return j


def jvp(signals: Signals, direction):
    """J v for a parameter-space direction given per layer (list of θ_l-shaped arrays); returns (C, N)."""
    xp = namespace_of(signals.f)
    out = None
    for d, a, v in zip(signals.delta, signals.a, direction):
        z = a @ v.T  # (N, M_l)
        term = xp.sum(d * z, axis=-1)  # (C, N)
        out = term if out is None else out + term
    return out


def layer_vjp_factors(signals: Signals, layer: int, v) -> tuple:
    """∇_{θ_l} fᵀ v for a function-space v (C, N) as the pair (uᵀ, a_{l−1}) whose product it is:
    u = Σ_k v_k ⊙ δ_l^{(k)}, (N, M_l), so uᵀ is (M_l, N) and a_{l−1} (N, fan) — rank ≤ N. a_{l−1}
    is the signals' own array (read only)."""
    xp = namespace_of(v)
    c, n = v.shape
    d, a = signals.delta[layer - 1], signals.a[layer - 1]
    return xp.sum(xp.reshape(v, (c, n, 1)) * d, axis=0).T, a


def layer_vjp(signals: Signals, layer: int, v):
    """∇_{θ_l} fᵀ v for a function-space v (C, N): (Σ_k v_k ⊙ δ_l^{(k)})ᵀ a_{l−1}, θ_l-shaped."""
    left, a = layer_vjp_factors(signals, layer, v)
    return left @ a


def vjp_factors(signals: Signals, v) -> list:
    """Jᵀ v per layer as :func:`layer_vjp_factors` pairs (left_l, right_l), left_l @ right_l = (Jᵀv)_l."""
    return [layer_vjp_factors(signals, l, v) for l in range(1, len(signals.delta) + 1)]


def vjp(signals: Signals, v):
    """Jᵀ v for a function-space vector v given as (C, N); returns per-layer θ_l-shaped arrays."""
    return [layer_vjp(signals, l, v) for l in range(1, len(signals.delta) + 1)]


def mse_gradient(signals: Signals, y):
    """∇_θ L = Jᵀ (f − y)/N for the MSE loss (Eq. 3), per layer; ``y`` is (N, C)."""
    n = signals.n
    return [g / n for g in vjp(signals, (signals.f - y).T)]
