"""Analytic infinite-width kernels (Appendix E) and Θ̄(x′, x) (Eq. 13, 16, 19, S.105–S.111, S.137).

NumPy only, on purpose: the subject is host code (the analytic kernels, Gaussian expectations and
prediction are float64 NumPy/SciPy by design). The finite networks here (M up to 4096) are only
the empirical side of the wide limit; the finite-width structured paths run on every backend in
test_network.py, test_fisher*.py and test_train*.py."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from scipy import integrate
from scipy.stats import multivariate_normal

from ngdref import Network
from ngdref.activations import get_activation
from ngdref.errors import ConfigError, NgdrefError
from ngdref.fisher import get_fisher
from ngdref.fisher.kfac import kfac_alpha
from ngdref.kernels import analytic_kernels, gaussian_expectation, order_parameters, predict
from ngdref.ntk import layer_ntks

from .conftest import unit_rows


def _analytic(name, cross, train, forster=False, **options):
    """The approximation's infinite-width Θ̄(x′, x) (C = 1 block), from its own module."""
    return get_fisher(name, train.network, **options).analytic_theta_bar(cross, train, forster=forster)


def theta_bar_exact(cross, train):
    return _analytic("exact", cross, train)


def theta_bar_block_diagonal(cross, train):
    return _analytic("bd", cross, train)


def theta_bar_tridiagonal(cross, train):
    return _analytic("tridiag", cross, train)


def theta_bar_layerwise(cross, train, sigma):
    return _analytic("layer", cross, train, sigma=sigma)


def theta_bar_kfac(cross, train, forster=False):
    """K-FAC with the bias folded into the Kronecker factor (S.123, first paragraph)."""
    return _analytic("kfac", cross, train, forster=forster, bias="folded")

def _pdf(z):
    return np.exp(-0.5 * np.square(z)) / math.sqrt(2.0 * math.pi)


# (v1, v2, c): unequal variances, both signs of correlation, independence
TRIPLES = [(0.7, 1.3, 0.5), (1.0, 1.0, -0.8), (0.5, 2.0, 0.0), (1.6, 0.4, 0.6)]


# --------------------------------------------------------------------------------------
# Gaussian expectations: closed forms vs independent numerics
# --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _leggauss(n):
    return np.polynomial.legendre.leggauss(n)


def _gl_pieces(lo, hi, n):
    """Gauss–Legendre nodes/weights on [lo, hi] (arrays of intervals → (..., n))."""
    t, w = _leggauss(n)
    lo, hi = np.asarray(lo, dtype=float)[..., None], np.asarray(hi, dtype=float)[..., None]
    half = 0.5 * (hi - lo)
    return lo + half * (t + 1.0), half * w


def _piecewise_legendre_expectation(g, v1, v2, c, kink, n=120, zmax=12.0):
    """E[g(u) g(u′)] by tensor Gauss–Legendre split at the kink/step of g (independent of ngdref):
    the integrand is smooth on every piece, so the rule converges spectrally."""
    s1 = math.sqrt(v1)
    m = c / s1
    sd = math.sqrt(v2 - m * m)
    k1 = float(np.clip(kink / s1, -zmax, zmax))
    total = 0.0
    for lo, hi in ((-zmax, k1), (k1, zmax)):
        z1, w1 = _gl_pieces(lo, hi, n)  # (n,)
        k2 = np.clip((kink - m * z1) / sd, -zmax, zmax)
        inner = 0.0
        for a, b in ((np.full_like(k2, -zmax), k2), (k2, np.full_like(k2, zmax))):
            z2, w2 = _gl_pieces(a, b, n)  # (n, n)
            inner = inner + np.sum(w2 * g(m * z1[:, None] + sd * z2) * _pdf(z2), axis=1)
        total += float(np.sum(w1 * g(s1 * z1) * inner * _pdf(z1)))
    return total


def _degenerate_expectation(g, v1, v2, sign, kink):
    """E[g(σ1 z) g(±σ2 z)] (ρ = ±1) by 1-D adaptive quadrature."""
    s1, s2 = math.sqrt(v1), math.sqrt(v2)
    f = lambda z: g(s1 * z) * g(sign * s2 * z) * _pdf(z)
    pts = sorted({kink / s1, sign * kink / s2})
    edges = [-np.inf, *pts, np.inf]
    return sum(integrate.quad(f, lo, hi, epsabs=1e-14, epsrel=1e-14)[0] for lo, hi in zip(edges, edges[1:]))


PIECEWISE = [("relu", 0.0), ("shifted-relu", 1.0), ("shifted-relu", 0.3)]


@pytest.mark.parametrize("name,shift", PIECEWISE)
def test_piecewise_closed_forms_match_independent_quadrature(name, shift):
    act = get_activation(name, shift)
    t = -shift if name == "shifted-relu" else 0.0
    phi = lambda u: np.maximum(u, t)
    dphi = lambda u: np.where(u > t, 1.0, 0.0)
    for v1, v2, c in TRIPLES:
        assert gaussian_expectation(act, v1, v2, c, "phi") == pytest.approx(
            _piecewise_legendre_expectation(phi, v1, v2, c, t), abs=1e-10
        )
        assert gaussian_expectation(act, v1, v2, c, "dphi") == pytest.approx(
            _piecewise_legendre_expectation(dphi, v1, v2, c, t), abs=1e-10
        )
    for v1, v2 in [(0.7, 0.7), (0.7, 1.3)]:  # ρ = ±1 (x′ = x and antipodal inputs)
        for sign in (1, -1):
            c = sign * math.sqrt(v1 * v2)
            for which, g in (("phi", phi), ("dphi", dphi)):
                got = gaussian_expectation(act, v1, v2, c, which)
                assert np.isfinite(got)
                assert got == pytest.approx(_degenerate_expectation(g, v1, v2, sign, t), abs=1e-10)


@pytest.mark.parametrize("shift", [0.3, 1.0, 2.5])
def test_shifted_relu_xi_is_bivariate_normal_cdf(shift):
    """Ξ of the shifted ReLU is P(u > −s, u′ > −s) = P(u < s, u′ < s)."""
    act = get_activation("shifted-relu", shift)
    for v1, v2, c in TRIPLES:
        cdf = multivariate_normal.cdf([shift, shift], [0.0, 0.0], [[v1, c], [c, v2]], abseps=1e-12, releps=1e-12)
        assert gaussian_expectation(act, v1, v2, c, "dphi") == pytest.approx(cdf, abs=1e-9)


def _random_triples(rng, n=30):
    v1 = rng.uniform(0.2, 2.0, n)
    v2 = rng.uniform(0.2, 2.0, n)
    c = rng.uniform(-0.95, 0.95, n) * np.sqrt(v1 * v2)
    return v1, v2, c


@pytest.mark.parametrize("name", ["erf", "linear"])
def test_smooth_closed_forms_match_gauss_hermite(name, rng):
    act = get_activation(name)
    v1, v2, c = _random_triples(rng)
    for which in ("phi", "dphi"):
        closed = gaussian_expectation(act, v1, v2, c, which)
        quad = gaussian_expectation(act, v1, v2, c, which, method="quadrature", order=96)
        np.testing.assert_allclose(quad, closed, rtol=0, atol=1e-8)


@pytest.mark.parametrize("name", ["relu", "shifted-relu"])
def test_kinked_quadrature_converges_to_closed_form(name, rng):
    """Gauss–Hermite of a kinked φ converges only algebraically (~1/order): honest tolerances."""
    act = get_activation(name, 1.0)
    v1, v2, c = _random_triples(rng)
    closed = gaussian_expectation(act, v1, v2, c, "phi")
    errs = [
        np.max(np.abs(gaussian_expectation(act, v1, v2, c, "phi", method="quadrature", order=n) - closed))
        for n in (32, 256)
    ]
    assert errs[1] < 1e-3
    assert errs[1] < errs[0] / 3
    xi = gaussian_expectation(act, v1, v2, c, "dphi")
    xi_q = gaussian_expectation(act, v1, v2, c, "dphi", method="quadrature", order=256)
    assert np.max(np.abs(xi_q - xi)) < 5e-2  # step function: ~1/√order, no better


def test_tanh_quadrature_is_converged(rng):
    act = get_activation("tanh")
    v1, v2, c = _random_triples(rng)
    for which in ("phi", "dphi"):
        a = gaussian_expectation(act, v1, v2, c, which, order=64)
        b = gaussian_expectation(act, v1, v2, c, which, order=128)
        ref = gaussian_expectation(act, v1, v2, c, which, order=300)  # > 150 nodes: scipy rule
        np.testing.assert_allclose(a, ref, rtol=0, atol=1e-5)  # the default order 64: ~1e-6
        np.testing.assert_allclose(b, ref, rtol=0, atol=1e-8)


def test_gaussian_expectation_validates():
    act = get_activation("tanh")
    with pytest.raises(ConfigError):
        gaussian_expectation(act, 1.0, 1.0, 0.5, "psi")
    with pytest.raises(ConfigError):
        gaussian_expectation(act, 1.0, 0.0, 0.0)
    with pytest.raises(ConfigError):
        gaussian_expectation(act, 1.0, 1.0, 0.5, method="magic")


# --------------------------------------------------------------------------------------
# Order parameters and kernel structure
# --------------------------------------------------------------------------------------
def test_order_parameters_relu_closed_form():
    """S.179: q_1 = σ_w²/M0 + σ_b², q_l = σ_w² q_{l−1}/2 + σ_b²."""
    net = Network.build(20, 8, 4, 1, "relu", sigma_w2=1.7, sigma_b2=0.3)
    q = order_parameters(net)
    assert len(q) == 4
    assert q[0] == pytest.approx(1.7 / 20 + 0.3, abs=1e-15)
    for l in range(1, 4):
        assert q[l] == pytest.approx(1.7 / 2 * q[l - 1] + 0.3, abs=1e-14)


@pytest.mark.parametrize("act", ["relu", "tanh", "erf", "shifted-relu", "linear"])
def test_order_parameters_match_kernel_diagonals(act, rng):
    net = Network.build(12, 8, 3, 1, act, sigma_w2=2.0, sigma_b2=0.2)
    x = unit_rows(rng, 5, 12)
    k = analytic_kernels(net, x)
    q = order_parameters(net)
    for l in range(1, 4):
        np.testing.assert_allclose(k.var1[l - 1], q[l - 1], rtol=1e-13)
        if l < 3:
            np.testing.assert_allclose(np.diag(k.A[l]), (q[l] - 0.2) / 2.0, rtol=1e-12)


@pytest.mark.parametrize("act", ["relu", "tanh", "erf", "shifted-relu", "linear"])
@pytest.mark.parametrize("sb2", [0.0, 0.4])
@pytest.mark.parametrize("m0,n", [(16, 9), (4, 14)])
def test_kernels_symmetric_psd(act, sb2, m0, n, rng):
    """Every Gram kernel at x′ = x is symmetric PSD; B_l, Θ_l (l >= 2) PD; Θ_1 PD if σ_b > 0."""
    net = Network.build(m0, 8, 3, 1, act, sigma_w2=2.0, sigma_b2=sb2)
    k = analytic_kernels(net, unit_rows(rng, n, m0))
    mats = k.A + k.Xi + k.B + k.layer_ntks + [k.ntk]
    for mat in mats:
        assert mat.shape == (n, n)
        np.testing.assert_array_equal(mat, mat.T)
        ev = np.linalg.eigvalsh(mat)
        assert ev[0] >= -1e-12 * ev[-1]
    if act != "linear":  # Assumption 1 (non-polynomial φ) gives PD kernels (Lemmas B.1–B.3)
        for mat in k.B[:-1] + k.layer_ntks[1:] + k.A[1:]:
            assert np.linalg.eigvalsh(mat)[0] > 0
    np.testing.assert_array_equal(k.B[-1], np.ones((n, n)))
    if m0 < n:
        assert np.linalg.matrix_rank(k.A[0]) == m0  # A_0 = XXᵀ/M0 singular
        if sb2 > 0 and act != "linear":  # Lemma B.3 (ii): Θ_1 PD thanks to the bias
            ev1 = np.linalg.eigvalsh(k.layer_ntks[0])
            assert ev1[0] > 1e-6 * ev1[-1]


@pytest.mark.parametrize("act", ["relu", "tanh", "shifted-relu"])
def test_cross_kernels_are_blocks_of_the_joint_gram(act, rng):
    """Kernels between x′ and x equal the off-diagonal block of the kernels of [x′; x]."""
    net = Network.build(10, 8, 4, 1, act, sigma_w2=1.5, sigma_b2=0.3)
    x1, x2 = unit_rows(rng, 4, 10), unit_rows(rng, 6, 10)
    cross = analytic_kernels(net, x1, x2)
    joint = analytic_kernels(net, np.vstack([x1, x2]))
    blk = (slice(0, 4), slice(4, 10))
    for a, b in zip(cross.A + cross.Xi + cross.B, joint.A + joint.Xi + joint.B):
        assert a.shape == (4, 6)
        np.testing.assert_allclose(a, b[blk], rtol=1e-12, atol=1e-14)
    # Θ is divided by N = len(x2) = 6, the joint Gram by 10
    np.testing.assert_allclose(cross.ntk * 6, joint.ntk[blk] * 10, rtol=1e-12)
    for l in range(1, 5):
        np.testing.assert_allclose(cross.var1[l - 1], joint.var1[l - 1][:4], rtol=1e-13)
        np.testing.assert_allclose(cross.var2[l - 1], joint.var1[l - 1][4:], rtol=1e-13)


def test_multi_output_ntk_is_kronecker(rng):
    net = Network.build(8, 6, 3, 2, "tanh", sigma_b2=0.1)
    k = analytic_kernels(net, unit_rows(rng, 3, 8))
    full = k.full(k.ntk)
    assert full.shape == (6, 6)
    np.testing.assert_array_equal(full[:3, 3:], 0)
    np.testing.assert_array_equal(full[3:, 3:], k.ntk)


def test_input_validation(rng):
    net = Network.build(5, 4, 2)
    x = unit_rows(rng, 3, 5)
    with pytest.raises(ConfigError, match="2-D"):
        analytic_kernels(net, x[0])
    with pytest.raises(ConfigError, match="M0 = 5"):
        analytic_kernels(net, unit_rows(rng, 3, 4))
    with pytest.raises(ConfigError, match="unit norm"):
        analytic_kernels(net, 2 * x)
    with pytest.raises(ConfigError, match="unit norm"):
        analytic_kernels(net, x, 0.5 * x)
    with pytest.raises(ConfigError, match="no samples"):
        analytic_kernels(net, np.zeros((0, 5)))
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ConfigError, match="non-finite"):
        analytic_kernels(net, bad)


# --------------------------------------------------------------------------------------
# Analytic vs finite-width kernels
# --------------------------------------------------------------------------------------
def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


WIDE_CONFIGS = [(act, sb2) for act in ("relu", "tanh") for sb2 in (0.0, 0.5)]
N_WIDE, N_WIDE_TEST, M0_WIDE = 10, 4, 64


@pytest.fixture(scope="module")
def wide_networks():
    """Empirical kernels of L = 3 networks at M = 256 and 4096, 3 seeds, for every config.

    Inputs share a common direction (pairwise cosines ≈ 0.5) so that off-diagonal kernel
    entries are not tiny. One draw θ_0 per (width, seed) serves all configs: the weights of
    a given seed do not depend on φ, and σ_b = 0 networks drop the bias column.
    """
    rng = np.random.default_rng(2024)
    mu = rng.standard_normal(M0_WIDE)
    xa = mu / np.linalg.norm(mu) + rng.standard_normal((N_WIDE + N_WIDE_TEST, M0_WIDE)) / 8.0
    xa /= np.linalg.norm(xa, axis=1, keepdims=True)
    tr, te = slice(0, N_WIDE), slice(N_WIDE, None)
    out = {}
    for width in (256, 4096):
        for seed in range(3):
            base = Network.build(M0_WIDE, width, 3, 1, "relu", sigma_b2=0.5).init(seed)
            for act, sb2 in WIDE_CONFIGS:
                net = Network.build(M0_WIDE, width, 3, 1, act, sigma_w2=2.0, sigma_b2=sb2)
                s = net.signals(base if sb2 > 0 else [p[:, :-1] for p in base], xa)
                th = [t * len(xa) / N_WIDE for t in layer_ntks(s)]  # divided by N = 10 training samples
                h, d = s.h, [dl[0] for dl in s.delta]
                out.setdefault((act, sb2, width), []).append(
                    {
                        "A": [h[l][tr] @ h[l][tr].T / width for l in (1, 2)],
                        "B": [d[l][tr] @ d[l][tr].T for l in (0, 1)],
                        "theta": [t[tr, tr] for t in th],
                        "theta_cross": [t[te, tr] for t in th],
                    }
                )
    return xa[tr], xa[te], out


@pytest.mark.slow
@pytest.mark.parametrize("act,sb2", WIDE_CONFIGS)
def test_analytic_kernels_are_the_wide_limit(act, sb2, wide_networks):
    """A_1, A_2, B_1, B_2, Θ_1..Θ_3, Θ and Θ(x′, x) of finite networks (mean of 3 seeds) → analytic.

    The relative Frobenius error falls by about √(4096/256) = 4 between the widths.
    """
    x, xt, emp = wide_networks
    errs = {}
    for width in (256, 4096):
        net = Network.build(M0_WIDE, width, 3, 1, act, sigma_w2=2.0, sigma_b2=sb2)
        an, ac = analytic_kernels(net, x), analytic_kernels(net, xt, x)
        runs = emp[(act, sb2, width)]

        def mean(f):
            return np.mean([f(r) for r in runs], axis=0)

        pairs = (
            [(mean(lambda r, l=l: r["A"][l]), an.A[l + 1]) for l in (0, 1)]
            + [(mean(lambda r, l=l: r["B"][l]), an.B[l]) for l in (0, 1)]
            + [(mean(lambda r, l=l: r["theta"][l]), an.layer_ntks[l]) for l in range(3)]
            + [(mean(lambda r: sum(r["theta"])), an.ntk), (mean(lambda r: sum(r["theta_cross"])), ac.ntk)]
        )
        errs[width] = np.array([_rel(e, r) for e, r in pairs])
    ratio = errs[256] / errs[4096]
    assert np.all(errs[4096] < 0.05), errs[4096]
    assert np.all(ratio > 1.5), ratio
    assert np.exp(np.mean(np.log(ratio))) > 3.0, ratio


@pytest.mark.slow
def test_theta_bar_of_wide_networks_converges_to_analytic(wide_networks):
    """Exact and BD Θ̄(x′, x) of finite networks (Θ(x′,x)Θ⁻¹, Σ_l Θ_l(x′,x)Θ_l⁻¹) → analytic, ~1/√M."""
    x, xt, emp = wide_networks
    errs = {}
    for width in (256, 4096):
        net = Network.build(M0_WIDE, width, 3, 1, "relu", sigma_w2=2.0, sigma_b2=0.5)
        train, cross = analytic_kernels(net, x), analytic_kernels(net, xt, x)
        ref_exact, ref_bd = theta_bar_exact(cross, train), theta_bar_block_diagonal(cross, train)
        e = []
        for r in emp[("relu", 0.5, width)]:
            th, thc = r["theta"], r["theta_cross"]
            emp_exact = np.linalg.solve(sum(th), sum(thc).T).T
            emp_bd = sum(np.linalg.solve(t, c.T).T for c, t in zip(thc, th))
            e.append([_rel(emp_exact, ref_exact), _rel(emp_bd, ref_bd)])
        errs[width] = np.mean(e, axis=0)
    assert np.all(errs[4096] < 0.5), errs  # Θ⁻¹ amplifies kernel noise by cond(Θ_l) ~ 10²–10³
    assert np.all(errs[256] / errs[4096] > 2.5), errs


# --------------------------------------------------------------------------------------
# Θ̄ on the training set: the isotropic condition Θ̄ = α I
# --------------------------------------------------------------------------------------
def _isotropic(tb, alpha, tol=1e-8):
    np.testing.assert_allclose(tb, alpha * np.eye(tb.shape[0]), rtol=0, atol=tol * max(1.0, alpha))


@pytest.mark.parametrize("act,sb2", [("relu", 0.0), ("tanh", 0.5), ("shifted-relu", 0.2), ("erf", 0.0)])
def test_layerwise_theta_bar_is_isotropic(act, sb2, rng):
    for L in (3, 4):
        net = Network.build(16, 8, L, 1, act, sigma_w2=2.0, sigma_b2=sb2)
        k = analytic_kernels(net, unit_rows(rng, 10, 16))
        _isotropic(theta_bar_exact(k, k), 1.0)
        _isotropic(theta_bar_block_diagonal(k, k), L)
        _isotropic(theta_bar_tridiagonal(k, k), {3: 1.0, 4: 2.0}[L])
        a = rng.standard_normal((L, L))
        sigma = a @ a.T + L * np.eye(L)
        alpha = float(np.ones(L) @ np.linalg.solve(sigma, np.ones(L)))
        _isotropic(theta_bar_layerwise(k, k, sigma), alpha)


def test_tridiagonal_theta_bar_singular_depth(rng):
    net = Network.build(8, 8, 5, 1, "relu")
    k = analytic_kernels(net, unit_rows(rng, 6, 8))
    with pytest.raises(NgdrefError, match="Lemma 4.3"):
        theta_bar_tridiagonal(k, k)
    with pytest.raises(ConfigError, match="depth"):
        theta_bar_layerwise(k, k, np.eye(3))


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_kfac_theta_bar_is_isotropic(act, rng):
    """S.107: α = N L (σ_b = 0, M0 >= N); with the bias folded into the Kronecker factor (S.123) too."""
    n, L = 10, 3
    x = unit_rows(rng, n, 16)
    k0 = analytic_kernels(Network.build(16, 8, L, 1, act, sigma_w2=2.0, sigma_b2=0.0), x)
    _isotropic(theta_bar_kfac(k0, k0), n * L)
    assert kfac_alpha(n, L, 16) == n * L
    kb = analytic_kernels(Network.build(16, 8, L, 1, act, sigma_w2=2.0, sigma_b2=0.5), x)
    _isotropic(theta_bar_kfac(kb, kb), n * L)
    assert kfac_alpha(n, L, 16, bias=True) == n * L
    # folded bias with M0 + 1 = N: the augmented first-layer Gram is still invertible
    x9 = unit_rows(rng, n, 9)
    k9 = analytic_kernels(Network.build(9, 8, L, 1, act, sigma_w2=2.0, sigma_b2=0.5), x9)
    _isotropic(theta_bar_kfac(k9, k9), n * L)
    assert kfac_alpha(n, L, 9, bias=True) == n * L


def _forster(x, iters=5000):
    """Fixed-point Forster iteration X ← normalise(X (XᵀX)^{-1/2}) → X̄ᵀX̄ = (N/M0) I, unit rows."""
    n, m = x.shape
    for _ in range(iters):
        w, v = np.linalg.eigh(x.T @ x)
        if np.max(np.abs(w * m / n - 1)) < 1e-13:
            break
        x = x @ (v * w**-0.5) @ v.T
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return x


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_kfac_forster_first_layer(act, rng):
    """M0 < N: with Forster-transformed inputs Θ̄ = (N(L−1) + M0) I (S.110–S.111); without, S.109."""
    n, m0, L = 14, 5, 3
    xbar = _forster(unit_rows(rng, n, m0))
    np.testing.assert_allclose(xbar.T @ xbar, n / m0 * np.eye(m0), atol=1e-12)
    net = Network.build(m0, 8, L, 1, act, sigma_w2=2.0, sigma_b2=0.0)
    k = analytic_kernels(net, xbar)
    _isotropic(theta_bar_kfac(k, k, forster=True), n * (L - 1) + m0)
    _isotropic(theta_bar_kfac(k, k), n * (L - 1) + m0)  # projection form S.108 agrees
    assert kfac_alpha(n, L, m0, forster=True) == n * (L - 1) + m0
    # cross kernel: S.110 = projection form
    xt = unit_rows(rng, 4, m0)
    c = analytic_kernels(net, xt, xbar)
    np.testing.assert_allclose(theta_bar_kfac(c, k, forster=True), theta_bar_kfac(c, k), atol=1e-10)
    # raw inputs: diag = N(L−1) + N·leverage (S.109), not isotropic; forster=True refuses them
    x = unit_rows(rng, n, m0)
    kr = analytic_kernels(net, x)
    tb = theta_bar_kfac(kr, kr)
    lev = np.diag(x @ np.linalg.solve(x.T @ x, x.T))
    np.testing.assert_allclose(tb, n * (L - 1) * np.eye(n) + n * np.diag(lev), atol=1e-8 * n * L)
    with pytest.raises(ConfigError, match="Forster"):
        theta_bar_kfac(kr, kr, forster=True)
    kb = analytic_kernels(Network.build(m0, 8, L, 1, act, sigma_w2=2.0, sigma_b2=0.5), xbar)
    with pytest.raises(ConfigError, match="bias"):
        theta_bar_kfac(kb, kb, forster=True)
    # folded bias, M0 + 1 < N: the projection form (S.108 for [σ_w x/√M0, σ_b]), not isotropic
    p = np.hstack([np.sqrt(2.0 / m0) * xbar, np.full((n, 1), np.sqrt(0.5))])
    lev_b = np.diag(p @ np.linalg.solve(p.T @ p, p.T))
    np.testing.assert_allclose(np.diag(theta_bar_kfac(kb, kb)), n * (L - 1) + n * lev_b, rtol=1e-8)
    with pytest.raises(NgdrefError, match="S.109"):
        kfac_alpha(n, L, m0)


def test_kfac_restrictions(rng):
    x = unit_rows(rng, 5, 8)
    k2 = analytic_kernels(Network.build(8, 6, 3, 2, "relu"), x)
    with pytest.raises(NgdrefError, match="C = 1"):
        theta_bar_kfac(k2, k2)
    k = analytic_kernels(Network.build(8, 6, 3, 1, "relu", sigma_b2=0.1), x)
    with pytest.raises(ConfigError, match="without bias"):
        theta_bar_kfac(k, k, forster=True)
    k0 = analytic_kernels(Network.build(8, 6, 3, 1, "relu"), x)
    with pytest.raises(ConfigError, match="M0 < N"):
        theta_bar_kfac(k0, k0, forster=True)


def test_singular_a0_without_bias(rng):
    """M0 < N, σ_b = 0: Θ_1 = σ_w² B_1 ⊙ A_0/N is PD in exact arithmetic (Oppenheim), used when
    well conditioned; a numerically singular one is refused with a clear error."""
    n, m0 = 14, 4
    net = Network.build(m0, 8, 3, 1, "relu", sigma_w2=2.0, sigma_b2=0.0)
    k = analytic_kernels(net, unit_rows(rng, n, m0))
    _isotropic(theta_bar_block_diagonal(k, k), 3.0)
    _isotropic(theta_bar_exact(k, k), 1.0)
    # inputs on a circle (M0 = 2, N = 100) make the smooth erf kernels numerically singular
    angles = np.linspace(0, 2 * np.pi, 100, endpoint=False)
    circle = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    ks = analytic_kernels(Network.build(2, 8, 3, 1, "erf", sigma_w2=2.0, sigma_b2=0.0), circle)
    with pytest.raises(NgdrefError, match="Lemma B.3"):
        theta_bar_block_diagonal(ks, ks)
    with pytest.raises(NgdrefError, match="Θ"):
        theta_bar_exact(ks, ks)


def test_unit_wise_theta_bar_of_tanh_is_the_finite_networks(rng):
    """φ′ ≠ 0 everywhere: the analytic unit-wise Θ̄ (S.128, γ = 1) is (Σ_{l<L} M_l) I, and a finite tanh
    network's Θ̄ = J G_unit⁺ Jᵀ/N from the explicit oracle (tests/oracles.py) is that plus the output
    unit's I (S.137), exactly, at any width (K = a aᵀ positive definite: M_{l−1} + 1 >= N)."""
    from ngdref.fisher import get_fisher

    from . import oracles as O

    net = Network.build(8, [10, 9], 3, 1, "tanh", sigma_w2=2.0, sigma_b2=0.5)
    x = unit_rows(rng, 5, 8)
    k = analytic_kernels(net, x)
    fim = get_fisher("unit", net, 0.0)
    analytic = fim.analytic_theta_bar(k, k)
    finite = O.oracle("unit", net, net.init(2), x).theta_bar()
    np.testing.assert_allclose(analytic + np.eye(5), finite, atol=1e-9)
    np.testing.assert_allclose(analytic, 19.0 * np.eye(5), rtol=1e-12)
    with pytest.raises(NgdrefError, match="no analytic"):  # S.156: nothing known for x′ ≠ x
        fim.analytic_theta_bar(analytic_kernels(net, unit_rows(rng, 3, 8), x), k)


@pytest.mark.parametrize("act", ["relu", "shifted-relu"])
def test_unit_wise_theta_bar_counts_alive_units_of_wide_networks(act, rng):
    """ReLU-like φ: by S.137 a finite network's Θ̄_nn is the number of units with δ_{l,i}(x_n) ≠ 0 (plus
    the output unit, checked against the oracle in tests/test_oracles.py). Counted in the oracle's
    literal forward pass of a wide network, it matches the analytic diagonal Σ γ_l M_l (S.128, S.157)
    within the binomial spread (√(Σ M_l/4) per sample, at most; seen: < 1 %)."""
    from ngdref.fisher import get_fisher

    from . import oracles as O

    width, n = 2048, 12
    net = Network.build(40, width, 3, 1, act, shift=1.0, sigma_w2=2.0, sigma_b2=0.5)
    x = unit_rows(rng, n, 40)
    k = analytic_kernels(net, x)
    alpha = float(np.mean(np.diag(get_fisher("unit", net, 0.0).analytic_theta_bar(k, k))))
    _, _, deltas = O.backward(O.Net.of(net), net.init(5), x)
    alive = sum(np.count_nonzero(d[0], axis=1) for d in deltas[:-1])  # hidden units, per sample
    assert abs(np.mean(alive) - alpha) < 2.5 * np.sqrt(2 * width / 4.0)  # 80 of ≈ 2048 (ReLU), 3500
    if act == "relu":
        assert alpha == pytest.approx(width)  # γ = 1/2 per hidden layer (S.157, s = 0)
    else:
        assert 1.5 * width < alpha < 1.9 * width  # 1/2 + erf(s/√(2q_l))/2 per layer, s = 1


# --------------------------------------------------------------------------------------
# Test-set Θ̄ and prediction
# --------------------------------------------------------------------------------------
METHODS = [("exact", {}), ("bd", {}), ("tridiag", {}), ("kfac", {"bias": "folded"}),
           ("layer", {"sigma": np.diag([1.0, 2.0, 3.0])})]


@pytest.mark.parametrize("method,kw", METHODS)
def test_prediction_interpolates_training_targets(method, kw, rng):
    """f_∞ = α⁻¹ Θ̄(x′, x) y: equals y on the training set; cross rows at training points are α e_n."""
    net = Network.build(12, 8, 3, 1, "relu", sigma_w2=2.0, sigma_b2=0.3)
    x = unit_rows(rng, 8, 12)
    xt = np.vstack([unit_rows(rng, 3, 12), x[2:4]])
    y = rng.standard_normal(8)
    fim = get_fisher(method, net, **kw)
    alpha = fim.analytic_alpha(8)
    train, cross = analytic_kernels(net, x), analytic_kernels(net, xt, x)
    tb_train, tb_test = fim.analytic_theta_bar(train, train), fim.analytic_theta_bar(cross, train)
    assert tb_test.shape == (5, 8)
    np.testing.assert_allclose(predict(tb_train, alpha, y), y, atol=1e-9)
    np.testing.assert_allclose(tb_test[3:], alpha * np.eye(8)[2:4], atol=1e-8 * alpha)
    f0_train, f0_test = rng.standard_normal(8), rng.standard_normal(5)
    f0_test[3:] = f0_train[2:4]  # f_0 is a function: the same at the same inputs
    out = predict(tb_test, alpha, y, f0_train, f0_test)
    np.testing.assert_allclose(out, f0_test + tb_test @ (y - f0_train) / alpha, atol=1e-12)
    np.testing.assert_allclose(out[3:], y[2:4], atol=1e-8)


def test_exact_prediction_is_ntk_regression(rng):
    """Eq. 14: f_∞(x′) = Θ(x′, x) Θ⁻¹ y (kernel regression with the NTK)."""
    net = Network.build(10, 8, 3, 1, "tanh", sigma_w2=1.5, sigma_b2=0.1)
    x, xt = unit_rows(rng, 7, 10), unit_rows(rng, 4, 10)
    y = rng.standard_normal(7)
    train, cross = analytic_kernels(net, x), analytic_kernels(net, xt, x)
    expected = cross.ntk @ np.linalg.solve(train.ntk, y)
    np.testing.assert_allclose(predict(theta_bar_exact(cross, train), 1.0, y), expected, atol=1e-10)


def test_predict_shapes(rng):
    tb = rng.standard_normal((3, 4))
    y = rng.standard_normal((4, 2))
    np.testing.assert_allclose(predict(tb, 2.0, y), tb @ y / 2.0)
    full = np.kron(np.eye(2), tb)  # I_C ⊗ Θ̄, output-major
    np.testing.assert_allclose(predict(full, 2.0, y), tb @ y / 2.0, atol=1e-14)
    with pytest.raises(ConfigError):
        predict(tb, 1.0, rng.standard_normal(5))
    with pytest.raises(ConfigError):
        predict(tb, 0.0, rng.standard_normal(4))


def test_theta_bar_pair_checks(rng):
    net = Network.build(6, 5, 3, 1, "relu")
    x, xt = unit_rows(rng, 4, 6), unit_rows(rng, 2, 6)
    train, cross = analytic_kernels(net, x), analytic_kernels(net, xt, x)
    with pytest.raises(ConfigError, match="train"):
        theta_bar_exact(train, cross)
    with pytest.raises(ConfigError, match="training inputs"):
        theta_bar_exact(analytic_kernels(net, xt, xt[::-1]), train)
    with pytest.raises(NgdrefError, match="no analytic"):
        get_fisher("diag", net).analytic_theta_bar(cross, train)
    with pytest.raises(NgdrefError, match="separate bias"):
        get_fisher("kfac", Network.build(6, 5, 3, 1, "relu", sigma_b2=0.5)).analytic_theta_bar(
            *(lambda t: (t, t))(analytic_kernels(Network.build(6, 5, 3, 1, "relu", sigma_b2=0.5), x)))
    np.testing.assert_allclose(  # Eq. 19 written out, not the library's tridiagonal_sigma
        theta_bar_tridiagonal(train, train), theta_bar_layerwise(train, train, np.array([[1, 1, 0], [1, 1, 1], [0, 1, 1]]))
    )


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("act", ["relu", "erf"])
def test_tiled_threaded_kernels_match_one_tile(monkeypatch, workers, act, rng):
    """The tile pipeline (tiles of 4 here, so 11 samples span 3×3 tiles, on 1 or 3 threads) gives the
    one-tile kernels: the Gram kernels from the tiles on and below the diagonal, mirrored, exactly
    symmetric; the cross kernels from every tile; a Gram kept by the Θ pass (keep_grams) is the one
    feature_gram computes on its own."""
    import ngdref.kernels as kern
    from ngdref import threads

    net = Network.build(6, 8, 3, 1, act, sigma_w2=2.0, sigma_b2=0.3)
    x, xt = unit_rows(rng, 11, 6), unit_rows(rng, 7, 6)

    def everything():
        out = {}
        for tag, args in (("sym", (x,)), ("cross", (xt, x)), ("full", (x, x))):
            k = analytic_kernels(net, *args, keep_grams=(3,))
            out[tag + "ntk"] = k.ntk
            out[tag + "kept"] = k.feature_gram(3)
            k = analytic_kernels(net, *args)
            out[tag + "gram2"] = k.feature_gram(2, bias=False)
            out.update({f"{tag}{name}{i}": m for name in ("layer_ntks", "A", "Xi", "B")
                        for i, m in enumerate(getattr(k, name)[:3 if name != "B" else 2])})
        return out

    one = everything()  # 11 < _TILE: one tile, as before tiling
    monkeypatch.setattr(kern, "_TILE", 4)
    monkeypatch.setattr(threads, "THREADS", workers)
    tiled = everything()
    for key, ref in one.items():
        np.testing.assert_allclose(tiled[key], ref, rtol=1e-13, atol=1e-16, err_msg=key)
        if key.startswith("sym"):
            assert np.array_equal(tiled[key], tiled[key].T), key
            np.testing.assert_allclose(tiled[key], tiled["full" + key[3:]], rtol=1e-13, atol=1e-16, err_msg=key)
    np.testing.assert_array_equal(tiled["symkept"], analytic_kernels(net, x).feature_gram(3))
