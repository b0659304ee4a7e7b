"""The empirical neural tangent kernel, explicitly and from signals (Eq. 6, S.66–S.68).

Θ(x′, x) = J(x′) J(x)ᵀ / N, where N is the number of samples in ``x`` (the
training set). Structured, per layer (S.68 with the cross-output blocks that a
finite network has):

    Θ_l(x′, x) = [(δ_l(x′) δ_l(x)ᵀ) ⊙ (1_C 1_Cᵀ ⊗ a_{l−1}(x′) a_{l−1}(x)ᵀ)] / N,

with δ_l stacked over outputs (CN × M_l) and a_{l−1} a_{l−1}ᵀ = σ_w² A_{l−1} + σ_b² 11ᵀ
(A_{l−1} = h h ᵀ/M_{l−1}, S.66; B_l = δ_l δ_lᵀ, S.67). Θ = Σ_l Θ_l.
"""

from __future__ import annotations

from .backend import namespace_of
from .jacobian import jacobian
from .network import Network, Signals


def feature_gram(s1: Signals, s2: Signals, layer: int):
    """a_{l−1}(x′) a_{l−1}(x)ᵀ = σ_w² A_{l−1}(x′,x) + σ_b² 11ᵀ, (N′, N)."""
    return s1.a[layer - 1] @ s2.a[layer - 1].T


def delta_gram(s1: Signals, s2: Signals, layer: int):
    """B_l across outputs: δ_l(x′) δ_l(x)ᵀ, (CN′, CN) (S.67)."""
    return s1.delta_matrix(layer) @ s2.delta_matrix(layer).T


def _hadamard_with_features(b, gram, c: int):
    """B ⊙ (1_C 1_Cᵀ ⊗ gram) without tiling gram: B (CN′, CN) viewed as (C, N′, C, N).

    Overwrites and returns ``b`` (a fresh product owned by the caller)."""
    xp = namespace_of(b)
    if c == 1:
        b *= gram
        return b
    n1, n2 = gram.shape
    b4 = xp.reshape(b, (c, n1, c, n2))
    return xp.reshape(b4 * xp.reshape(gram, (1, n1, 1, n2)), (c * n1, c * n2))


def _layer_ntk_unnormalised(s1: Signals, s2: Signals, layer: int):
    """N · Θ_l(x′, x) = (δ_l δ_lᵀ) ⊙ (1 1ᵀ ⊗ a_{l−1} a_{l−1}ᵀ) (S.68 times N)."""
    return _hadamard_with_features(delta_gram(s1, s2, layer), feature_gram(s1, s2, layer), s1.f.shape[1])


def layer_ntk(s1: Signals, s2: Signals | None, layer: int):
    """Θ_l(x′, x) from signals (S.68), (CN′, CN), divided by N = len(x)."""
    s2 = s1 if s2 is None else s2
    out = _layer_ntk_unnormalised(s1, s2, layer)
    out /= float(s2.n)
    return out


def layer_ntks(s1: Signals, s2: Signals | None = None) -> list:
    """[Θ_1, …, Θ_L] from signals."""
    return [layer_ntk(s1, s2, l) for l in range(1, s1.network.depth + 1)]


def structured_ntk(s1: Signals, s2: Signals | None = None):
    """Θ(x′, x) = Σ_l Θ_l(x′, x) from signals (Eq. 6 via S.68), (CN′, CN).

    Accumulates in place and divides by N once (the sum of :func:`layer_ntks`)."""
    s2 = s1 if s2 is None else s2
    total = _layer_ntk_unnormalised(s1, s2, 1)
    for l in range(2, s1.network.depth + 1):
        total += _layer_ntk_unnormalised(s1, s2, l)
    total /= float(s2.n)
    return total


def empirical_ntk(network: Network, params, x1, x2=None, method: str = "structured"):
    """Θ(x1, x2) = J(x1) J(x2)ᵀ / N (N = len(x2), or len(x1) when x2 is None), (CN1, CN2).

    ``method="structured"`` sums Θ_l from signals; ``"explicit"`` forms J (memory-checked).
    """
    s1 = network.signals(params, x1)
    s2 = s1 if x2 is None else network.signals(params, x2)
    if method == "structured":
        return structured_ntk(s1, s2)
    if method == "explicit":
        j1 = jacobian(network, params, x1, s1)
        j2 = j1 if x2 is None else jacobian(network, params, x2, s2)
        return j1 @ j2.T / s2.n
    raise ValueError(f"unknown method {method!r}; use 'structured' or 'explicit'")
