"""The isotropy constant α of Θ̄ = α I on the training set (Eq. 12) for each approximate Fisher.

* exact NGD: α = 1 (Eq. 13);
* layer-wise NGD with Σ (Eq. 15): α = 1ᵀΣ⁻¹1 (Theorem 4.1) — block diagonal Σ = I gives
  α = L (Section 4.1), block tri-diagonal Σ (Eq. 19) gives α = s for L = 3s, s + 1 for
  L = 3s + 1 and a singular Σ for L = 3s + 2 (Lemma 4.3, S.92–S.94);
* K-FAC (C = 1): α = N L for M0 >= N (S.107), N(L − 1) + M0 with Forster-transformed
  inputs for M0 < N (S.111), see :func:`kfac_alpha` for the folded bias;
* unit-wise NGD (C = 1): α = Σ_{l<L} γ_l M_l with γ_l = P(φ′(u) ≠ 0), u ~ N(0, q_l)
  (Lemma C.2, S.128, S.140–S.141; S.157 for the shifted ReLU).

Host NumPy/SciPy. This module does not import :mod:`ngdref.kernels` at import time
(kernels imports it); the unit-wise α imports :func:`ngdref.kernels.order_parameters` lazily.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import ConfigError, NgdrefError

__all__ = [
    "analytic_alpha",
    "block_diagonal_alpha",
    "exact_alpha",
    "kfac_alpha",
    "layer_gammas",
    "layerwise_alpha",
    "layerwise_weights",
    "shifted_relu_unit_alpha",
    "tridiagonal_alpha",
    "tridiagonal_alpha_closed_form",
    "tridiagonal_sigma",
    "unit_alpha",
]


# --------------------------------------------------------------------------------------
# Layer-wise approximations (Section 4)
# --------------------------------------------------------------------------------------
def _check_depth(L) -> int:
    if isinstance(L, bool) or int(L) != L or int(L) < 1:
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
    if not np.all(np.isfinite(s)):
        raise ConfigError("Σ contains non-finite entries")
    if not np.allclose(s, s.T, rtol=0, atol=1e-12 * max(1.0, float(np.max(np.abs(s))))):
        raise ConfigError("Σ must be symmetric (Eq. 15)")
    L = s.shape[0]
    eig = np.linalg.eigvalsh(0.5 * (s + s.T))
    scale = float(np.max(np.abs(eig)))
    if scale == 0 or float(np.min(np.abs(eig))) <= 100 * L * np.finfo(np.float64).eps * scale:
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


def exact_alpha() -> float:
    """Exact NGD: Θ̄ = Θ Θ⁻¹ = I, α = 1 (Eq. 13)."""
    return 1.0


def block_diagonal_alpha(L: int) -> float:
    """BD-NGD (Σ = I): α = L (Section 4.1)."""
    return float(_check_depth(L))


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


# --------------------------------------------------------------------------------------
# K-FAC (Section 4.3, B.3)
# --------------------------------------------------------------------------------------
def kfac_alpha(n_train: int, depth: int, input_dim: int | None = None, bias: bool = False, forster: bool = False) -> float:
    """α of K-FAC (C = 1) on the training set.

    α = N L when the first-layer inputs have d >= N dimensions (d = M0, or M0 + 1 with the
    bias folded into the Kronecker factor, S.123): S.107. With Forster-transformed inputs,
    no bias and M0 < N: α = N(L − 1) + M0 (S.111). Otherwise (d < N without Forster) Θ̄ is
    not isotropic (S.109): NgdrefError. ``input_dim=None`` assumes d >= N.
    """
    n, L = int(n_train), _check_depth(depth)
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
# Unit-wise (Section 5, C.1)
# --------------------------------------------------------------------------------------
def _check_unit_network(net) -> None:
    if net.n_outputs != 1:
        raise ConfigError(f"unit-wise α is derived for C = 1 (Section 5), got C = {net.n_outputs}")


def layer_gammas(net, method: str = "auto", order: int = 64) -> list[float]:
    """[γ_1, …, γ_{L−1}], γ_l = P(φ′(u) ≠ 0) for u ~ N(0, q_l) (S.140–S.141), via ``Activation.gamma``."""
    from .kernels import order_parameters

    q = order_parameters(net, method=method, order=order)
    return [float(net.activation.gamma(q[l - 1])) for l in range(1, net.depth)]


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
    from .kernels import order_parameters

    _check_unit_network(net)
    if net.activation.name not in ("shifted-relu", "relu"):
        raise ConfigError(f"S.157 is for the (shifted) ReLU, got {net.activation.name!r}")
    s = float(net.activation.shift) if net.activation.name == "shifted-relu" else 0.0
    q = order_parameters(net)
    alpha = sum((0.5 + 0.5 * math.erf(s / math.sqrt(2.0 * q[l - 1]))) * net.widths[l] for l in range(1, net.depth))
    return float(alpha + (1.0 if include_output_layer else 0.0))


# --------------------------------------------------------------------------------------
def analytic_alpha(
    method: str,
    net,
    n_train: int | None = None,
    sigma=None,
    forster: bool = False,
) -> float:
    """α for ``method`` in ngdref.kernels.THETA_BAR_METHODS, matching :func:`ngdref.kernels.analytic_theta_bar`.

    ``n_train`` is needed for "kfac"; ``sigma`` for "layer-wise"; ``forster`` for "kfac" with M0 < N.
    """
    L = net.depth
    if method == "exact":
        return exact_alpha()
    if method == "block-diagonal":
        return block_diagonal_alpha(L)
    if method == "tri-diagonal":
        return tridiagonal_alpha(L)
    if method == "layer-wise":
        if sigma is None:
            raise ConfigError("method 'layer-wise' needs sigma (an L x L symmetric matrix)")
        return layerwise_alpha(sigma)
    if method == "kfac":
        if n_train is None:
            raise ConfigError("method 'kfac' needs n_train (α = N L)")
        return kfac_alpha(n_train, L, net.input_dim, net.has_bias, forster)
    if method == "unit-wise":
        return unit_alpha(net)
    raise ConfigError(
        f"unknown method {method!r}; choose one of exact, block-diagonal, tri-diagonal, layer-wise, kfac, unit-wise"
    )
