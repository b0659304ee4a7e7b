"""Analytic infinite-width kernels (Appendix E, S.169–S.179) shared by every approximation.

Host NumPy/SciPy, float64. Conventions match the finite network of
:mod:`ngdref.network` exactly, so every analytic kernel here is the
infinite-width limit of the corresponding empirical quantity
(``h_l h_lᵀ/M_l``, ``δ_l δ_lᵀ``, :func:`ngdref.ntk.layer_ntks`):

* ``A_0(x′, x) = X′Xᵀ/M0`` (S.68 text);
* ``Q_l = σ_w² A_{l−1} + σ_b² 11ᵀ`` (S.175), the covariance of the
  pre-activations u_l; its diagonal is the per-sample variance (for
  ``‖x‖ = 1`` all equal to the order parameter ``q_l``, S.176/S.179);
* ``A_l(x′, x) = E[φ(u′) φ(u)]`` with ``(u′, u)`` jointly Gaussian, variances
  ``Q_l(x′, x′)``, ``Q_l(x, x)`` and covariance ``Q_l(x′, x)`` (S.69/S.171,
  written for general, unequal variances);
* ``Ξ_l = E[φ′(u′) φ′(u)]`` (S.70/S.173; note S.70 writes ``σ_w² A_l`` where
  S.173/S.175 — and the network — give ``σ_w² A_{l−1}``);
* ``B_L = 11ᵀ``, ``B_l = σ_w² Ξ_l ⊙ B_{l+1}`` (S.172; Hadamard product), the
  limit of ``δ_l(x′) δ_l(x)ᵀ`` with δ the true chain-rule derivative;
* ``Θ_l = (σ_w² B_l ⊙ A_{l−1} + σ_b² B_l)/N`` (S.68 with the 1/N of Theorem 4.1)
  and ``Θ = Σ_l Θ_l`` (S.169–S.170). These are the C = 1 blocks; for C outputs
  the kernels are ``I_C ⊗ (·)`` (output-major, as in :mod:`ngdref.network`).

Gaussian expectations use closed forms where they exist — ReLU (arc-cosine
kernels, S.177–S.178), shifted ReLU (truncated bivariate-normal moments with
Owen's T), erf (Williams 1997) and linear — and two-dimensional Gauss–Hermite
quadrature (``numpy.polynomial.hermite_e.hermegauss``) otherwise (tanh, custom
activations), or everywhere with ``method="quadrature"``.

This module holds the kernels shared by every approximation (the order parameters q_l,
γ_l, and A_l, Ξ_l, B_l, Θ_l) and the small linear algebra on them; each approximation's
infinite-width Θ̄(x′, x) lives with the approximation
(``get_fisher(name, net).analytic_theta_bar(cross, train)``, :mod:`ngdref.fisher`).
:func:`predict` gives the trained model's kernel-regression prediction (Eq. 14, Section 4.4).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from numpy.polynomial.hermite_e import hermegauss
from scipy import linalg as sla

from .activations import Activation
from .errors import ConfigError, NgdrefError
from .linalg import SPD_RCOND
from .network import Network
from .threads import Pool, workers

if TYPE_CHECKING:  # scipy.sparse.linalg and scipy.special are imported where used: 90 ms of every command's start-up
    from scipy.sparse.linalg import LinearOperator

__all__ = [
    "AnalyticKernels",
    "analytic_kernels",
    "check_pair",
    "gaussian_expectation",
    "gauss_hermite_rule",
    "kernel_inverse_operator",
    "layer_gammas",
    "layer_projections",
    "order_parameters",
    "predict",
    "right_solve",
    "singular_input_hint",
    "spd_factor",
    "validate_unit_inputs",
]

DEFAULT_ORDER = 64
#: Activations with closed-form A and Ξ (``method="auto"``); all others use quadrature.
CLOSED_FORM_ACTIVATIONS = ("relu", "shifted-relu", "erf", "linear")
#: Elements per quadrature work array (bounds memory to ~64 MiB per array).
_CHUNK_ELEMENTS = 1 << 23

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


# --------------------------------------------------------------------------------------
# Bivariate Gaussian expectations
# --------------------------------------------------------------------------------------
def _corr(v1, v2, c):
    """ρ = c/√(v1 v2) clipped to [−1, 1], and r = √(1 − ρ²) computed stably."""
    rho = np.clip(c / np.sqrt(v1 * v2), -1.0, 1.0)
    r = np.sqrt(np.maximum((1.0 - rho) * (1.0 + rho), 0.0))
    return rho, r


def _pdf(x):
    return _INV_SQRT_2PI * np.exp(-0.5 * x * x)


def _ratio(num, den):
    """num/den with the limits of the degenerate (den = 0) case: ±inf, or 0 for 0/0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = num / den
    limit = np.where(num > 0, np.inf, np.where(num < 0, -np.inf, 0.0))
    return np.where(den > 0, out, limit)


def _relu_moments(v1, v2, c, which):
    """Arc-cosine kernels (Cho & Saul 2009; S.177–S.178 for general variances): E[φφ] ("phi") or E[φ′φ′]."""
    phi, dphi = _relu_both(v1, v2, c)
    return phi if which == "phi" else dphi


def _bivariate_orthant(a, b, rho, r):
    """P(Z1 > −a, Z2 > −b) = Φ₂(a, b; ρ) for a, b > 0 (Owen 1956, Owen's T)."""
    from scipy.special import ndtr, owens_t

    t1 = _ratio(b - rho * a, r)
    t2 = _ratio(a - rho * b, r)
    return 0.5 * ndtr(a) + 0.5 * ndtr(b) - owens_t(a, t1 / a) - owens_t(b, t2 / b)


def _shifted_relu_moments(v1, v2, c, which, s):
    """φ_s(u) = max(u, −s) (Section C.3.3): exact truncated bivariate-normal moments.

    With u = σ1 Z1, u′ = σ2 Z2, corr ρ, a = s/σ1, b = s/σ2:
    Ξ = P(Z1 > −a, Z2 > −b) = Φ₂(a, b; ρ); A follows from φ_s(u) = relu(u + s) − s and
    the first and second moments of (Z1, Z2) over the orthant {Z1 > −a, Z2 > −b}
    (Rosenbaum 1961).
    """
    if s == 0.0:
        return _relu_moments(v1, v2, c, which)
    from scipy.special import ndtr

    rho, r = _corr(v1, v2, c)
    s1, s2 = np.sqrt(v1), np.sqrt(v2)
    a, b = s / s1, s / s2
    p = _bivariate_orthant(a, b, rho, r)
    if which == "dphi":
        return p
    t1 = _ratio(b - rho * a, r)
    t2 = _ratio(a - rho * b, r)
    f1, f2 = ndtr(t1), ndtr(t2)
    pa, pb = _pdf(a), _pdf(b)
    ez1 = pa * f1 + rho * pb * f2
    ez2 = pb * f2 + rho * pa * f1
    tail = r * _pdf(t1)  # r² φ₂(−a, −b; ρ)/φ(a); 0 in the degenerate case
    ez1z2 = rho * p - rho * a * pa * f1 - rho * b * pb * f2 + pa * tail
    er1r2 = s1 * s2 * ez1z2 + s * s1 * ez1 + s * s2 * ez2 + s * s * p
    er1 = s1 * pa + s * ndtr(a)
    er2 = s2 * pb + s * ndtr(b)
    return er1r2 - s * er1 - s * er2 + s * s


def _erf_moments(v1, v2, c, which):
    """Williams (1997): φ = erf."""
    d1, d2 = 1.0 + 2.0 * v1, 1.0 + 2.0 * v2
    if which == "phi":
        return (2.0 / np.pi) * np.arcsin(np.clip(2.0 * c / np.sqrt(d1 * d2), -1.0, 1.0))
    return (4.0 / np.pi) / np.sqrt(d1 * d2 - 4.0 * c * c)


def _linear_moments(v1, v2, c, which):
    return np.array(c, dtype=np.float64, copy=True) if which == "phi" else np.ones_like(c, dtype=np.float64)


@lru_cache(maxsize=16)
def gauss_hermite_rule(order: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of the ``order``-point Gauss–Hermite rule for E_{z~N(0,1)}[f(z)] (Σ w = 1).

    ``numpy.polynomial.hermite_e.hermegauss`` up to 150 nodes (it overflows for several
    hundred), ``scipy.special.roots_hermitenorm`` (asymptotic nodes) above.
    """
    order = int(order)
    if order <= 150:
        z, w = hermegauss(order)
    else:
        from scipy.special import roots_hermitenorm

        z, w = roots_hermitenorm(order)
    z.setflags(write=False)
    w = w / w.sum()  # the weight function is exp(−z²/2), without 1/√(2π)
    w.setflags(write=False)
    return z, w


def _quadrature_moments(fn, v1, v2, c, order):
    """E[fn(u) fn(u′)] by two-dimensional Gauss–Hermite quadrature (probabilists' weights).

    u = √v1 z1, u′ = (c/√v1) z1 + √(v2 − c²/v1) z2 with z1, z2 ~ N(0, 1) i.i.d.
    Spectral convergence for smooth φ (tanh, erf); only algebraic (~1/order for a kink,
    ~1/√order for a step) for ReLU-type φ or φ′, which therefore use closed forms.
    """
    z, w = gauss_hermite_rule(order)
    shape = np.shape(c)
    v1, v2, c = (np.ravel(np.broadcast_to(t, shape)).astype(np.float64) for t in (v1, v2, c))
    s1 = np.sqrt(v1)
    m = c / s1
    sd = np.sqrt(np.maximum(v2 - m * m, 0.0))
    out = np.empty(v1.size)
    block = max(1, _CHUNK_ELEMENTS // z.size)
    for start in range(0, v1.size, block):
        sl = slice(start, start + block)
        acc = np.zeros(out[sl].size)
        for zi, wi in zip(z, w):
            inner = fn(m[sl][None, :] * zi + sd[sl][None, :] * z[:, None])  # (order, P)
            acc += wi * np.asarray(fn(s1[sl] * zi)) * (w @ inner)
        out[sl] = acc
    return out.reshape(shape)


def gaussian_expectation(
    activation: Activation,
    v1,
    v2,
    c,
    which: str = "phi",
    method: str = "auto",
    order: int = DEFAULT_ORDER,
) -> np.ndarray:
    """E[g(u) g(u′)] for (u, u′) ~ N(0, [[v1, c], [c, v2]]), with g = φ (``which="phi"``, S.171)
    or g = φ′ (``which="dphi"``, S.173), elementwise over broadcast arrays.

    ``method="auto"`` uses the closed form for relu, shifted-relu, erf and linear and
    Gauss–Hermite quadrature of ``order`` nodes per dimension otherwise;
    ``method="quadrature"`` forces quadrature (slowly convergent for kinks/steps).
    """
    if which not in ("phi", "dphi"):
        raise ConfigError(f"which must be 'phi' or 'dphi', got {which!r}")
    if method not in ("auto", "quadrature"):
        raise ConfigError(f"method must be 'auto' or 'quadrature', got {method!r}")
    if int(order) < 2:
        raise ConfigError(f"quadrature order must be >= 2, got {order}")
    v1, v2, c = np.broadcast_arrays(*(np.asarray(t, dtype=np.float64) for t in (v1, v2, c)))
    if np.any(v1 <= 0) or np.any(v2 <= 0):
        raise ConfigError("pre-activation variances must be positive")
    name = activation.name
    if method == "auto" and name in CLOSED_FORM_ACTIVATIONS:
        if name == "relu":
            return _relu_moments(v1, v2, c, which)
        if name == "shifted-relu":
            return _shifted_relu_moments(v1, v2, c, which, float(activation.shift))
        if name == "erf":
            return _erf_moments(v1, v2, c, which)
        return _linear_moments(v1, v2, c, which)
    fn = activation.phi if which == "phi" else activation.dphi
    return _quadrature_moments(lambda t: np.asarray(fn(t), dtype=np.float64), v1, v2, c, order)


# --------------------------------------------------------------------------------------
# Order parameters and kernels
# --------------------------------------------------------------------------------------
def order_parameters(net: Network, method: str = "auto", order: int = DEFAULT_ORDER) -> list[float]:
    """[q_1, …, q_L]: the variance of u_l for a unit-norm input (S.176, S.179).

    q_1 = σ_w²/M0 + σ_b² (S.179; its "σ²" is σ_w²), q_{l+1} = σ_w² E[φ(u)²]_{u~N(0,q_l)} + σ_b².
    (S.176 with ``q_0 = 1/M0`` read literally would pass the input through φ; the network
    does not, so the recursion starts at l = 1.)
    """
    q = [net.sigma_w2 / net.input_dim + net.sigma_b2]
    for _ in range(1, net.depth):
        qa = np.array(q[-1])
        second = float(gaussian_expectation(net.activation, qa, qa, qa, "phi", method, order))
        q.append(net.sigma_w2 * second + net.sigma_b2)
    return q


def layer_gammas(net: Network, method: str = "auto", order: int = DEFAULT_ORDER) -> list[float]:
    """[γ_1, …, γ_{L−1}], γ_l = P(φ′(u) ≠ 0) for u ~ N(0, q_l) (S.140–S.141), via ``Activation.gamma``."""
    q = order_parameters(net, method=method, order=order)
    return [float(net.activation.gamma(q[l - 1])) for l in range(1, net.depth)]


def validate_unit_inputs(x, input_dim: int, name: str = "x", atol: float = 1e-6) -> np.ndarray:
    """(N, M0) float64 array of finite, unit-norm rows (Assumption 2), else ConfigError."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ConfigError(f"{name} must be a 2-D (N, M0) array, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ConfigError(f"{name} has no samples")
    if arr.shape[1] != input_dim:
        raise ConfigError(f"{name} has {arr.shape[1]} features but the network input width is M0 = {input_dim}")
    if not np.all(np.isfinite(arr)):
        raise ConfigError(f"{name} contains non-finite values")
    dev = np.max(np.abs(np.linalg.norm(arr, axis=1) - 1.0))
    if dev > atol:
        raise ConfigError(
            f"{name} rows must have unit norm ||x||_2 = 1 (Assumption 2); max deviation {dev:.3g}"
        )
    return arr


#: elements per block of the small linear algebra helpers (:func:`spd_factor`): 8 MiB temporaries
_BLOCK_ELEMENTS = 1 << 20
#: side of the square tiles of the kernel pipeline: every temporary of :class:`AnalyticKernels` is one
#: 512×512 tile (2 MiB, cache-sized), so the kernels cost the N′×N arrays they return and little more
_TILE = 512


def _relu_both(v1, v2, c):
    """(A, Ξ) of the ReLU from one correlation ρ = c/√(v1 v2) (S.177–S.178): A = √(v1 v2)/(2π)·(√(1−ρ²)
    + (π − arccos ρ)ρ) and Ξ = (π − arccos ρ)/(2π), one ``arccos`` for both. The operations of
    :func:`_corr` and the formulas above in the same order (the same rounding), written into four
    arrays of the broadcast shape (``out=``) instead of a new temporary per operation."""
    shape = np.broadcast_shapes(np.shape(v1), np.shape(v2), np.shape(c))
    s = np.empty(shape)
    np.multiply(v1, v2, out=s)
    np.sqrt(s, out=s)  # √(v1 v2)
    rho = np.empty(shape)
    np.divide(c, s, out=rho)
    np.clip(rho, -1.0, 1.0, out=rho)
    r, tmp = np.empty(shape), np.empty(shape)
    np.subtract(1.0, rho, out=r)
    np.add(1.0, rho, out=tmp)
    np.multiply(r, tmp, out=r)
    np.maximum(r, 0.0, out=r)
    np.sqrt(r, out=r)  # √(1 − ρ²)
    theta_pi = np.arccos(rho, out=tmp)
    np.subtract(np.pi, theta_pi, out=theta_pi)  # π − arccos ρ = π/2 + arcsin ρ
    np.multiply(theta_pi, rho, out=rho)
    np.add(r, rho, out=rho)
    np.divide(s, 2.0 * np.pi, out=s)
    np.multiply(s, rho, out=s)
    np.divide(theta_pi, 2.0 * np.pi, out=theta_pi)
    return s, theta_pi


@dataclass
class AnalyticKernels:
    """Infinite-width kernels between ``x1`` (x′, N′ rows) and ``x2`` (x, N rows), C = 1 blocks.

    ``A``: [A_0, …, A_{L−1}] (N′, N). ``Xi``: [Ξ_1, …, Ξ_{L−1}]. ``B``: [B_1, …, B_L] (B_L = 11ᵀ, a
    read-only broadcast view). ``var1`` / ``var2``: [Q_l(x′,x′) diag, …] and [Q_l(x,x) diag, …] for
    l = 1 … L, the per-sample pre-activation variances used for the cross kernels.
    ``layer_ntks``: [Θ_1, …, Θ_L] divided by N = len(x2) (S.68); ``ntk`` = Σ_l Θ_l.

    Memory and time. Every entry (i, j) of every kernel depends only on x′_i, x_j and the per-sample
    variances, so the kernels are computed a 512×512 tile at a time (a few tile-sized temporaries per
    thread) and each list only when first used: ``ntk`` alone (exact NGD) and each ``feature_gram``
    hold one N′×N array, ``layer_ntks`` L (layer-wise NGD), ``A`` L, ``Xi`` and ``B`` L − 1 each
    (K-FAC). Each first use is one pass over the tiles, on as many threads as the BLAS pool has
    (:func:`ngdref.threads.workers`); at x′ = x only the tiles on and below the diagonal are computed and
    mirrored (the kernels are symmetric: half the work), the diagonal tiles symmetrised.
    ``keep_grams``: layers l whose feature Gram Ã_{l−1} (:meth:`feature_gram`) the first pass through
    layer l also stores, since it computes A_{l−1} on the way (the prediction's f_0 covariance comes
    with Θ at no extra pass).
    """

    network: Network
    x1: np.ndarray
    x2: np.ndarray
    var1: list
    var2: list
    symmetric: bool = False
    method: str = "auto"
    order: int = DEFAULT_ORDER
    keep_grams: tuple = ()
    _A: list | None = field(default=None, repr=False)
    _Xi: list | None = field(default=None, repr=False)
    _B: list | None = field(default=None, repr=False)
    _layer_ntks: list | None = field(default=None, repr=False)
    _ntk: np.ndarray | None = field(default=None, repr=False)
    _grams: dict = field(default_factory=dict, repr=False)
    _factors: dict = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        """N, the number of columns (training samples x)."""
        return int(self.x2.shape[0])

    @property
    def depth(self) -> int:
        return self.network.depth

    # ---- the tile pipeline --------------------------------------------------------------------
    def _tiles(self):
        n1, n2 = self.x1.shape[0], self.x2.shape[0]
        for r0 in range(0, n1, _TILE):
            for c0 in range(0, r0 + 1 if self.symmetric else n2, _TILE):
                yield r0, min(n1, r0 + _TILE), c0, min(n2, c0 + _TILE)

    def _tile(self, r0: int, r1: int, c0: int, c1: int, layers: int, x2t, gemm_lock):
        """A_0 … A_{layers−1} and Ξ_1 … Ξ_{layers−1} on one tile (S.169–S.175); ``x2t`` = x2ᵀ, contiguous."""
        net = self.network
        sw2, sb2 = net.sigma_w2, net.sigma_b2
        with gemm_lock:  # one BLAS call at a time, on the BLAS pool's own threads
            a0 = self.x1[r0:r1] @ x2t[:, c0:c1]
        a0 /= net.input_dim
        A, Xi = [a0], []
        for l in range(1, layers):
            q1, q2 = self.var1[l - 1][r0:r1], self.var2[l - 1][c0:c1]
            cov = np.multiply(A[-1], sw2)
            cov += sb2
            if self.symmetric and r0 == c0:  # the diagonal is exactly the variance: ρ = 1 there
                rows = np.arange(r1 - r0)
                cov[rows, rows] = q1
            v1, v2 = q1[:, None], q2[None, :]
            if self.method == "auto" and net.activation.name == "relu":
                a, xi = _relu_both(v1, v2, cov)
            else:
                a = gaussian_expectation(net.activation, v1, v2, cov, "phi", self.method, self.order)
                xi = gaussian_expectation(net.activation, v1, v2, cov, "dphi", self.method, self.order)
            A.append(a)
            Xi.append(xi)
        return A, Xi

    def _ntk_tiles(self, A, Xi):
        """(B_1 … B_{L−1}, Θ_1 … Θ_L) on one tile: B_L = 11ᵀ, B_l = σ_w² Ξ_l ⊙ B_{l+1} (S.172),
        Θ_l = (σ_w² B_l ⊙ A_{l−1} + σ_b² B_l)/N (S.68), in place and in the order of the formulas."""
        L, n = self.depth, self.n
        sw2, sb2 = self.network.sigma_w2, self.network.sigma_b2
        bs, thetas = [None] * (L - 1), [None] * L
        b = None  # B_L = 11ᵀ
        for l in range(L - 1, -1, -1):  # layer l + 1
            if l < L - 1:
                nb = np.multiply(Xi[l], sw2)
                if b is not None:
                    nb *= b
                b = bs[l] = nb
            if b is None:
                t = np.multiply(A[l], sw2)
                t += sb2
            else:
                t = np.multiply(b, sw2)
                t *= A[l]
                if sb2 != 0.0:
                    t += np.multiply(b, sb2)
            t /= n
            thetas[l] = t
        return bs, thetas

    def _pass(self, layers: int, kinds: tuple, bias: bool = True) -> dict:
        """One pass of the tile pipeline writing the requested full lists: "A" (A_0 … A_{L−1}), "Xi"
        (Ξ_1 … Ξ_{L−1}), "B" (B_1 … B_{L−1}; B_L is the broadcast 11ᵀ), "ntk" (Θ_1 … Θ_L, S.68 with 1/N),
        "theta" (Θ = Σ_l Θ_l) and "gram" ([Ã_{layers−1}], with σ_b² 11ᵀ if ``bias``), plus the feature
        Grams of :attr:`keep_grams` not yet stored."""
        L = self.depth
        sw2, sb2 = self.network.sigma_w2, self.network.sigma_b2
        shape = (self.x1.shape[0], self.x2.shape[0])
        sizes = {"A": L, "Xi": L - 1, "B": L - 1, "ntk": L, "theta": 1, "gram": 1}
        out = {k: [np.empty(shape) for _ in range(sizes[k])] for k in kinds}
        extra = [l for l in self.keep_grams if l <= layers and l not in self._grams and not ("gram" in kinds and l == layers)]
        grams = {l: np.empty(shape) for l in extra}
        x2t = np.ascontiguousarray(self.x2.T)
        lock = threading.Lock()

        def gram(A, l, with_bias=True):
            g = sw2 * A[l - 1]
            return g + sb2 if with_bias else g

        def work(tile):
            r0, r1, c0, c1 = tile
            A, Xi = self._tile(r0, r1, c0, c1, layers, x2t, lock)
            blocks = {"A": A, "Xi": Xi}
            if "B" in out or "ntk" in out or "theta" in out:
                blocks["B"], blocks["ntk"] = self._ntk_tiles(A, Xi)
                if "theta" in out:
                    acc = blocks["ntk"][0].copy() if "ntk" in out else blocks["ntk"][0]
                    for t in blocks["ntk"][1:]:
                        acc += t  # Σ_l Θ_l in layer order
                    blocks["theta"] = [acc]
            if "gram" in out:
                blocks["gram"] = [gram(A, layers, bias)]
            pairs = [(full, blk) for k in out for full, blk in zip(out[k], blocks[k])]
            pairs += [(grams[l], gram(A, l)) for l in extra]
            for full, blk in pairs:
                if self.symmetric and r0 == c0:
                    blk = 0.5 * (blk + blk.T)  # exactly symmetric diagonal tiles
                full[r0:r1, c0:c1] = blk
                if self.symmetric and r0 != c0:
                    full[c0:c1, r0:r1] = blk.T

        tiles = list(self._tiles())
        # as many threads as the BLAS pool may use (a sweep pinned to one thread per cell gets one);
        # the GEMMs go one at a time on the BLAS pool's own threads (``lock``), not at one thread
        with Pool(min(workers(), len(tiles)), "ngdref-kernel") as pool:
            pool.map(work, tiles)
        self._grams.update(grams)
        return out

    @property
    def A(self) -> list:
        if self._A is None:
            self._A = self._pass(self.depth, ("A",))["A"]
        return self._A

    @property
    def Xi(self) -> list:
        if self._Xi is None:
            self._Xi = self._pass(self.depth, ("Xi",))["Xi"]
        return self._Xi

    @property
    def B(self) -> list:
        if self._B is None:
            self._B = self._pass(self.depth, ("B",))["B"] + [
                np.broadcast_to(np.float64(1.0), (self.x1.shape[0], self.x2.shape[0]))]
        return self._B

    @property
    def layer_ntks(self) -> list:
        """[Θ_1, …, Θ_L] (S.68, divided by N)."""
        if self._layer_ntks is None:
            self._layer_ntks = self._pass(self.depth, ("ntk",))["ntk"]
        return self._layer_ntks

    @property
    def ntk(self) -> np.ndarray:
        """Θ(x′, x) = Σ_l Θ_l (S.169–S.170), the C = 1 block; without the per-layer Θ_l, one
        N′×N array computed a tile at a time (the same formula, entry by entry)."""
        if self._layer_ntks is not None:
            return sum(self._layer_ntks)
        if self._ntk is None:
            self._ntk = self._pass(self.depth, ("theta",))["theta"][0]
        return self._ntk

    def feature_gram(self, layer: int, bias: bool = True) -> np.ndarray:
        """Ã_{l−1} = σ_w² A_{l−1} + σ_b² 11ᵀ (the limit of a_{l−1}(x′) a_{l−1}(x)ᵀ), 1-based ``layer``.

        ``bias=False`` drops the σ_b² 11ᵀ term (weights only). From the per-layer list A or a Gram kept
        by an earlier pass (:attr:`keep_grams`) if there is one; otherwise one new N′×N array computed a
        tile at a time."""
        sw2, sb2 = self.network.sigma_w2, self.network.sigma_b2
        if self._A is not None:
            g = sw2 * self._A[layer - 1]
            return g + sb2 if bias else g
        if bias and layer in self._grams:
            return self._grams[layer]
        out = self._pass(layer, ("gram",), bias)["gram"][0]
        if bias and layer in self.keep_grams:
            self._grams[layer] = out
        return out

    def factor(self, layer: int | None = None, rcond: float = SPD_RCOND):
        """Cholesky factor (:func:`spd_factor`) of the training-set Θ (``layer=None``) or Θ_l (1-based),
        computed once and kept with the kernels: exact NGD's Θ̄(x′, x) and its isotropy check
        (:func:`kernel_inverse_operator`) share one factorisation of Θ, BD and tri-diagonal one of each
        Θ_l. Memory: one N×N array per factor, released with the kernels; factoring Θ releases the
        cached Θ itself (after it, exact NGD needs only the factor; a caller that needs Θ too holds its
        own reference, as the isotropy operator does, and ``ntk`` recomputes it otherwise)."""
        if not self.symmetric:
            raise ConfigError("factors exist for the training-set kernels analytic_kernels(net, x_train) only")
        key = (layer, float(rcond))
        if key not in self._factors:
            mat = self.ntk if layer is None else self.layer_ntks[layer - 1]
            what = "Θ (NTK)" if layer is None else f"Θ_{layer}"
            hint = singular_input_hint(self.network, 1 if layer is None else layer, self.n)
            self._factors[key] = spd_factor(mat, what, hint, rcond, symmetric=True)  # mirrored tiles
            if layer is None:
                self._ntk = None
        return self._factors[key]

    def full(self, matrix: np.ndarray) -> np.ndarray:
        """I_C ⊗ matrix: a C = 1 block expanded to the network's C outputs (output-major)."""
        return np.kron(np.eye(self.network.n_outputs), matrix)


def analytic_kernels(
    net: Network,
    x1,
    x2=None,
    order: int = DEFAULT_ORDER,
    method: str = "auto",
    keep_grams: tuple = (),
) -> AnalyticKernels:
    """Infinite-width A_l, Ξ_l, B_l, Θ_l and Θ between x′ = ``x1`` and x = ``x2`` (Appendix E).

    ``x2=None`` gives the Gram kernels of ``x1`` (N = len(x1)). Inputs must be (N, M0)
    with unit-norm rows. ``order`` is the Gauss–Hermite order per dimension (quadrature
    path only); ``method="quadrature"`` forces quadrature for every activation. The
    per-sample variances are computed here; the N′×N kernels when first used
    (:class:`AnalyticKernels`, "Memory and time"). ``keep_grams``: layers whose feature Gram
    (:meth:`AnalyticKernels.feature_gram`) the first pass through them also keeps.
    """
    if not isinstance(net, Network):
        raise ConfigError(f"net must be an ngdref.Network, got {type(net).__name__}")
    a = validate_unit_inputs(x1, net.input_dim, "x1")
    symmetric = x2 is None
    b = a if symmetric else validate_unit_inputs(x2, net.input_dim, "x2")
    sw2, sb2, act = net.sigma_w2, net.sigma_b2, net.activation
    if method not in ("auto", "quadrature"):
        raise ConfigError(f"method must be 'auto' or 'quadrature', got {method!r}")
    if int(order) < 2:
        raise ConfigError(f"quadrature order must be >= 2, got {order}")

    def expect(v, which):
        return gaussian_expectation(act, v, v, v, which, method, order)

    d1 = np.sum(a * a, axis=1) / net.input_dim  # A_0(x′, x′) diagonal
    d2 = d1 if symmetric else np.sum(b * b, axis=1) / net.input_dim
    var1, var2 = [], []
    for l in range(1, net.depth + 1):
        q1, q2 = sw2 * d1 + sb2, sw2 * d2 + sb2  # Q_l diagonals (S.175)
        if np.any(q1 <= 0) or np.any(q2 <= 0):
            raise ConfigError("pre-activation variances must be positive")
        var1.append(q1)
        var2.append(q2)
        if l < net.depth:
            d1 = expect(q1, "phi")
            d2 = d1 if symmetric else expect(q2, "phi")
    keep = tuple(int(l) for l in keep_grams)
    if any(not 1 <= l <= net.depth for l in keep):
        raise ConfigError(f"keep_grams must be layers 1 … {net.depth}, got {keep_grams}")
    return AnalyticKernels(net, a, b, var1, var2, symmetric, method, int(order), keep)


# --------------------------------------------------------------------------------------
# Linear algebra helpers
# --------------------------------------------------------------------------------------
def spd_factor(mat: np.ndarray, what: str, hint: str = "", rcond: float = SPD_RCOND, symmetric: bool = False):
    """Cholesky factor of a training-set kernel, or NgdrefError if it is (numerically) singular.

    Memory: one N×N array besides ``mat`` (its symmetric part, factored in place; a plain copy when
    the caller knows ``mat`` is exactly symmetric, ``symmetric=True``: then (mat + matᵀ)/2 = mat);
    the norm for the condition estimate is summed a block of rows at a time."""
    mat = np.array(mat, dtype=np.float64, copy=True) if symmetric else _symmetric_part(mat)
    step = max(1, _BLOCK_ELEMENTS // max(mat.shape[0], 1))
    colsum = np.zeros(mat.shape[1])
    for r0 in range(0, mat.shape[0], step):
        colsum += np.sum(np.abs(mat[r0 : r0 + step]), axis=0)
    anorm = float(np.max(colsum))
    if not np.isfinite(anorm):
        raise ValueError("array must not contain infs or NaNs")
    try:  # mat is symmetric: its transpose is the same matrix in Fortran order, which LAPACK factors
        # in place (a C-ordered array would be copied by f2py on every LAPACK call: factor, dpocon, solves)
        cf = sla.cho_factor(mat.T, lower=True, overwrite_a=True, check_finite=False)
    except (np.linalg.LinAlgError, sla.LinAlgError):
        raise NgdrefError(f"{what} on the training set is not positive definite{hint}") from None
    rc, info = sla.lapack.dpocon(cf[0], anorm, uplo="L")
    if info != 0 or not rc > rcond:
        raise NgdrefError(
            f"{what} on the training set is numerically singular (reciprocal condition "
            f"number {rc:.2g} <= {rcond:g}){hint}"
        )
    return cf


def _symmetric_part(mat: np.ndarray) -> np.ndarray:
    """(mat + matᵀ)/2 as a new array, a block at a time (no N×N temporaries)."""
    n = mat.shape[0]
    out = np.empty_like(mat, dtype=np.float64)
    step = max(1, int(math.isqrt(_BLOCK_ELEMENTS)))
    for i in range(0, n, step):
        ii = slice(i, min(n, i + step))
        for j in range(0, n, step):
            jj = slice(j, min(n, j + step))
            out[ii, jj] = 0.5 * (mat[ii, jj] + mat[jj, ii].T)
    return out


def right_solve(cross: np.ndarray, cf) -> np.ndarray:
    """cross · K⁻¹ for SPD K given its Cholesky factor (K symmetric: (K⁻¹ crossᵀ)ᵀ); one new array."""
    return sla.cho_solve(cf, cross.T, check_finite=False).T


def check_pair(cross: AnalyticKernels, train: AnalyticKernels) -> None:
    if not train.symmetric:
        raise ConfigError("train must be analytic_kernels(net, x_train) (the training-set Gram kernels)")
    if cross.network != train.network:
        raise ConfigError("cross and train kernels were computed for different networks")
    if cross.x2.shape != train.x1.shape or not np.array_equal(cross.x2, train.x1):
        raise ConfigError("cross kernels must be computed against the training inputs: analytic_kernels(net, x_test, x_train)")


def singular_input_hint(net: Network, layer: int, n: int) -> str:
    """Why Θ_1 may be singular. Lemma B.3 (ii) asks for σ_b > 0 or full-rank A_0, but by
    Oppenheim's inequality det(B_1 ⊙ A_0) >= det B_1 Π (A_0)_nn > 0, so Θ_1 is PD in exact
    arithmetic whenever B_1 is; with M0 < N and σ_b = 0 it can still be numerically singular
    (e.g. smooth φ with inputs on a low-dimensional sphere), which is then refused."""
    if layer == 1 and not net.has_bias and net.input_dim < n:
        return (
            f" (A_0 = XXᵀ/M0 has rank M0 = {net.input_dim} < N = {n} and σ_b = 0, Lemma B.3 (ii); "
            "use σ_b² > 0, M0 >= N, or K-FAC with Forster-transformed inputs)"
        )
    return ""


def layer_projections(cross: AnalyticKernels, train: AnalyticKernels, rcond: float = SPD_RCOND,
                      layers=None) -> list:
    """[Θ_l(x′, x) Θ_l⁻¹ for l in ``layers``] (default 1 … L), each Θ_l factored once
    (:meth:`AnalyticKernels.factor`)."""
    layers = range(1, train.depth + 1) if layers is None else layers
    return [right_solve(cross.layer_ntks[l - 1], train.factor(l, rcond)) for l in layers]


def kernel_inverse_operator(terms, shape) -> LinearOperator:
    """v ↦ Σ_k w_k K′_k (K_k⁻¹ v) for ``terms`` = [(w_k, K′_k, Cholesky factor of K_k)], as a SciPy
    ``LinearOperator`` of ``shape`` (N′, N) (an int N: N×N). With K′_k = K_k: the training-set
    Θ̄(x, x) = Σ_l w_l Θ_l Θ_l⁻¹ of exact NGD (one term, Eq. 13) and layer-wise NGD (Eq. 16) applied to
    k vectors at O(N²k), without forming it (a 2N³ triangular solve); Θ̄(x, x) = αI in exact arithmetic,
    and what this operator returns differs from αv by the rounding of the factorisation and solves,
    which is what an isotropy check should see. With K′ = Θ(x′, x): exact NGD's Θ̄(x′, x) applied to the
    few residuals of a prediction (Eq. 14) at O(N² + N′N) each instead of the 2N²N′ solve that forms it."""
    terms = list(terms)
    shape = (shape, shape) if isinstance(shape, int) else tuple(shape)

    def matmat(v):
        v = np.asarray(v, dtype=np.float64)
        out = np.zeros((shape[0],) + v.shape[1:])
        for w, mat, cf in terms:
            out += w * (mat @ sla.cho_solve(cf, v, check_finite=False))
        return out

    from scipy.sparse.linalg import LinearOperator

    return LinearOperator(shape, matvec=matmat, matmat=matmat, dtype=np.float64)


def predict(theta_bar_test, alpha: float, y, f0_train=None, f0_test=None) -> np.ndarray:
    """Trained-model prediction f_∞(x′) = f_0(x′) + α⁻¹ Θ̄(x′, x)(y − f_0(x)) (Eq. 14, Section 4.4).

    ``theta_bar_test`` is (N′, N) (the C = 1 block, applied to every output column) or
    (CN′, CN) (output-major); ``y`` is (N,) or (N, C). f_0 = 0 (the mean over random
    initialisations, the kernel-regression prediction α⁻¹ Θ̄ y of Fig. 2) by default.
    """
    tb = np.asarray(theta_bar_test, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if tb.ndim != 2 or y.ndim not in (1, 2):
        raise ConfigError(f"theta_bar_test must be 2-D and y 1-D or 2-D, got {tb.shape} and {y.shape}")
    if not (np.isfinite(alpha) and alpha > 0):
        raise ConfigError(f"alpha must be positive, got {alpha}")
    r = y - (0.0 if f0_train is None else np.asarray(f0_train, dtype=np.float64).reshape(y.shape))
    n = y.shape[0]
    if tb.shape[1] == n:
        out = tb @ r / alpha
    elif y.ndim == 2 and tb.shape[1] == y.size:
        c = y.shape[1]
        out = (tb @ r.T.reshape(-1) / alpha).reshape(c, -1).T
    else:
        raise ConfigError(f"theta_bar_test of shape {tb.shape} does not match y of shape {y.shape}")
    if f0_test is not None:
        out = out + np.asarray(f0_test, dtype=np.float64).reshape(out.shape)
    return out
