"""gd, exact, layer-wise (bd, tridiag, any Σ) and K-FAC (both bias modes): the structured path on
every core backend vs the explicit P×P oracles of tests/oracles.py, isotropy with the paper's α,
special cases and error paths.

Every test of a structured computation takes the ``backend`` fixture (parameters and inputs built
there, compared on the host); NumPy-only are the two tests without arrays (α and Σ at
construction, configuration errors)."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest

from ngdref import Network, to_device, to_host
from ngdref.diagnostics import isotropy
from ngdref.errors import ConfigError, NgdrefError
from ngdref.fisher import KFAC, LayerWiseFisher, get_fisher, tridiagonal_sigma

from . import oracles as O
from .conftest import structured, theta_bar, unit_rows

# well-conditioned tiny nets: N = 4 samples, fan-in >= N
CONFIGS = [
    ((6, 10, 1), "tanh", 0.0),
    ((6, 12, 10, 1), "relu", 0.5),
    ((5, 10, 9, 2), "tanh", 0.3),
    ((6, 9, 10, 9, 1), "erf", 0.0),
    ((5, 9, 8, 9, 10, 2), "tanh", 0.2),
]


def _dense_sigma(depth: int) -> np.ndarray:
    """A dense, positive definite, non-constant Σ for the general layer-wise FIM (Eq. 15)."""
    i = np.arange(depth)
    return 0.5 ** np.abs(i[:, None] - i[None, :]) + np.diag(1.0 + 0.25 * i)


# (name, options): every approximation of this file, K-FAC with both S.123 bias modes
FIMS = [
    ("gd", {}),
    ("exact", {}),
    ("bd", {}),
    ("tridiag", {}),
    ("layer", {"sigma": "dense"}),
    ("kfac", {"bias": "separate"}),
    ("kfac", {"bias": "folded"}),
]


def _options(opts: dict, depth: int) -> dict:
    return {k: (_dense_sigma(depth) if v == "dense" else v) for k, v in opts.items()}


def _setup(widths, act, sb2, seed=0, n=4, n_test=3):
    rng = np.random.default_rng(seed)
    net = Network(widths, act, 2.0, sb2)
    return net, net.init(seed + 1), unit_rows(rng, n, widths[0]), unit_rows(rng, n_test, widths[0]), rng.standard_normal((n, widths[-1]))


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


def _tolerance(orc: O.Oracle) -> float:
    """1e-9, widened to 1e4·eps·κ(G) when the pseudo-inverse of an ill-conditioned G is compared
    (products of Kronecker-factor eigenvalues make κ(G) large for K-FAC at ρ = 0)."""
    return max(1e-9, 1e4 * O.EPS * orc.condition())


@functools.lru_cache(maxsize=None)
def _oracle_case(widths, act, sb2, name, opts_key, rho):
    """(Δθ, Θ̄(x, x), Θ̄(x′, x), tol) of the oracle, once per case (shared by the backends)."""
    net, p, x, xt, y = _setup(widths, act, sb2)
    orc = O.oracle(name, net, p, x, rho, **_options(dict(opts_key), net.depth))
    return orc.direction(y), orc.theta_bar(), orc.theta_bar(xt), _tolerance(orc)


# ---- structured path vs explicit oracle ----------------------------------------------------
@pytest.mark.parametrize("widths,act,sb2", CONFIGS)
@pytest.mark.parametrize("name,opts", FIMS, ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o in FIMS])
@pytest.mark.parametrize("rho", [0.0, 1e-2])
def test_structured_matches_explicit_oracle(widths, act, sb2, name, opts, rho, backend):
    if name == "gd" and rho:
        pytest.skip("gd has no damping")
    net, _, x, xt, y = _setup(widths, act, sb2)
    if name == "tridiag" and net.depth % 3 == 2 and net.depth > 2 and rho == 0:
        with pytest.raises(NgdrefError, match="Lemma 4.3"):
            get_fisher(name, net, rho)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fim = get_fisher(name, net, rho, **_options(opts, net.depth))
        d, c_train, c_test = structured(fim, net, x, xt, y, backend)
    want_d, want_train, want_test, tol = _oracle_case(widths, act, sb2, name, tuple(opts.items()), rho)
    assert _rel(d, want_d) < tol
    assert _rel(c_train, want_train) < tol
    assert _rel(c_test, want_test) < tol


@pytest.mark.parametrize("name", ["gd", "exact", "bd", "tridiag", "kfac"])
def test_backends_agree_with_numpy(name, device_backend):
    """The same structured computation on every other core backend agrees with NumPy to rounding (1e-12)."""
    net, _, x, xt, y = _setup((6, 12, 10, 1), "relu", 0.5)
    fim = get_fisher(name, net, 0.0)
    ref = structured(fim, net, x, xt, y)
    got = structured(fim, net, x, xt, y, device_backend)
    for a, b in zip(got, ref):
        assert _rel(a, b) < 1e-12


@pytest.mark.parametrize("c", [1.0, 2.5])
@pytest.mark.parametrize("rho", [0.0, 0.05])
def test_layer_with_constant_sigma_matches_oracle(c, rho, backend):
    """S.91: Σ = c·11ᵀ makes the layer-wise FIM c·F + ρI (the exact FIM scaled); checked against the
    oracle's masked metric, not against ExactFisher (which the code delegates to)."""
    net, p, x, xt, y = _setup((6, 12, 10, 1), "relu", 0.5)
    sigma = c * np.ones((3, 3))
    orc = O.oracle("layer", net, p, x, rho, sigma=sigma)
    d, c_train, c_test = structured(LayerWiseFisher(net, rho, sigma=sigma), net, x, xt, y, backend)
    assert _rel(d, orc.direction(y)) < 1e-9
    assert _rel(c_train, orc.theta_bar()) < 1e-9
    assert _rel(c_test, orc.theta_bar(xt)) < 1e-9


def test_kfac_single_sample_is_block_diagonal(backend):
    """N = 1: K-FAC's Kronecker blocks are the BD blocks (tests/test_oracles.py); the structured K-FAC
    step and Θ̄ equal the oracle BD ones."""
    net, p, x, xt, y = _setup((6, 10, 8, 1), "tanh", 0.0, n=1)
    orc = O.oracle("bd", net, p, x)
    d, c_train, c_test = structured(get_fisher("kfac", net, 0.0), net, x, xt, y, backend)
    assert _rel(d, orc.direction(y)) < 1e-9
    assert _rel(c_train, orc.theta_bar()) < 1e-9
    assert _rel(c_test, orc.theta_bar(xt)) < 1e-9


@pytest.mark.parametrize("bias", ["separate", "folded"])
@pytest.mark.parametrize("rho", [0.0, 1e-2])
def test_kfac_theta_bar_does_not_depend_on_threads(bias, rho, monkeypatch):
    """K-FAC's Θ̄ computes its layers' terms on a thread pool (NumPy, BLAS at one thread): the same
    values for 1, 2 and 3 threads (bit for bit), and the oracle's (C = 2: tiled output blocks)."""
    import ngdref.threads as ngdref_threads

    net, p, x, xt, y = _setup((7, 9, 8, 2), "tanh", 0.3, n=5)
    fim = get_fisher("kfac", net, rho, bias=bias)
    orc = O.oracle("kfac", net, p, x, rho, bias=bias)
    s, st = net.signals(p, x), net.signals(p, xt)
    runs = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(ngdref_threads, "THREADS", threads)
        runs.append((to_host(theta_bar(fim, s)), to_host(theta_bar(fim, s, st))))
    for train, test in runs[1:]:
        assert np.array_equal(train, runs[0][0]) and np.array_equal(test, runs[0][1])
    assert _rel(runs[1][0], orc.theta_bar()) < _tolerance(orc)
    assert _rel(runs[1][1], orc.theta_bar(xt)) < _tolerance(orc)


def test_gd_is_the_ntk(backend):
    """G = I: Θ̄(x′, x) = J(x′)J(x)ᵀ/N, the empirical NTK (Eq. 5–6), from the oracle's Jacobian."""
    net, p, x, xt, y = _setup((6, 10, 8, 1), "tanh", 0.3)
    gd = get_fisher("gd", net, 0.0)
    pb = net.init(1, backend)  # = p
    s, st = net.signals(pb, to_device(x, backend)), net.signals(pb, to_device(xt, backend))
    assert _rel(to_host(theta_bar(gd, s, st)), O.ntk(net, p, xt, x)) < 1e-12
    assert _rel(to_host(theta_bar(gd, s)), O.ntk(net, p, x, x)) < 1e-12


@pytest.mark.parametrize("name", ["exact", "bd", "tridiag", "layer", "kfac"])
def test_damping_enters_once(name, backend):
    """A damping comparable to F (ρ = 0.37): the structured step and Θ̄ equal the oracle's, which adds ρI
    once (masked FIMs) or once per Kronecker factor (K-FAC, Eq. 20) — a second ρ would show at O(1)."""
    net, p, x, xt, y = _setup((6, 10, 1) if name != "layer" else (6, 10, 9, 1), "tanh", 0.3)
    opts = {"sigma": _dense_sigma(net.depth)} if name == "layer" else {}
    orc = O.oracle(name, net, p, x, 0.37, **opts)
    d, c_train, c_test = structured(get_fisher(name, net, 0.37, **opts), net, x, xt, y, backend)
    assert _rel(d, orc.direction(y)) < 1e-10
    assert _rel(c_train, orc.theta_bar()) < 1e-10
    assert _rel(c_test, orc.theta_bar(xt)) < 1e-10


def test_exact_damped_theta_bar_spectrum(backend):
    """Exact NGD with ρ > 0: Θ̄(x, x) = Θ(Θ + ρI)⁻¹ has eigenvalues λ/(λ + ρ) for the NTK's eigenvalues λ."""
    net, p, x, _, _ = _setup((6, 10, 9, 2), "tanh", 0.3)
    lam = np.linalg.eigvalsh(O.ntk(net, p, x, x))
    s = net.signals(net.init(1, backend), to_device(x, backend))  # init(1) is p
    for rho in (1e-3, 0.37, 5.0):
        tb = to_host(theta_bar(get_fisher("exact", net, rho), s))
        np.testing.assert_allclose(np.linalg.eigvalsh((tb + tb.T) / 2), lam / (lam + rho), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize(
    "name,widths,sb2,alpha",
    [
        ("exact", (100, 1024, 1024, 1), 0.5, 1.0),
        ("bd", (100, 1024, 1024, 1), 0.5, 3.0),
        ("tridiag", (100, 1024, 1024, 1), 0.5, 1.0),
        ("tridiag", (100, 1024, 1024, 1024, 1), 0.5, 2.0),
        ("kfac", (100, 1024, 1024, 1), 0.0, 3 * 20.0),
    ],
)
def test_isotropic_with_papers_alpha(name, widths, sb2, alpha, backend):
    """Θ̄(x, x) = αI (Eq. 12) at moderate width, N = 20, M0 = 100 >= N."""
    rng = np.random.default_rng(0)
    net = Network(widths, "relu", 2.0, sb2)
    x = unit_rows(rng, 20, widths[0])
    fim = get_fisher(name, net, 0.0)
    assert fim.analytic_alpha(20) == pytest.approx(alpha)
    d = isotropy(to_host(theta_bar(fim, net.signals(net.init(0, backend), to_device(x, backend)))), alpha)
    assert d["deviation_from_alpha_I"] < 1e-8


@pytest.mark.parametrize(
    "name,widths,opts",
    [
        ("exact", (6, 8, 7, 1), {}),
        ("bd", (6, 8, 7, 1), {}),
        ("tridiag", (6, 8, 7, 1), {}),
        ("tridiag", (6, 8, 7, 9, 1), {}),
        ("layer", (6, 8, 7, 9, 1), {"sigma": "dense"}),
        ("kfac", (6, 8, 7, 1), {"bias": "folded"}),
        ("unit", (6, 8, 7, 1), {}),
    ],
)
def test_analytic_alpha_is_the_oracles_isotropy_constant(name, widths, opts, backend):
    """Where the paper's identities hold exactly at finite width (tanh: every unit alive and every
    Gram matrix invertible; M0 >= N), the oracle's Θ̄(x, x) is analytic_alpha(N)·I: Eq. 13, Theorem 4.1
    (1ᵀΣ⁻¹1), Lemma 4.3, S.107 (folded bias), S.128 + the output unit (S.137); so is the structured one."""
    net, p, x, _, _ = _setup(widths, "tanh", 0.4)
    n = x.shape[0]
    opts = _options(opts, net.depth)
    fim = get_fisher(name, net, 0.0, **opts)
    alpha = fim.analytic_alpha(n)
    np.testing.assert_allclose(O.oracle(name, net, p, x, **opts).theta_bar(), alpha * np.eye(n), atol=1e-8 * alpha)
    structured = to_host(theta_bar(fim, net.signals(net.init(1, backend), to_device(x, backend))))  # init(1) is p
    np.testing.assert_allclose(structured, alpha * np.eye(n), atol=1e-8 * alpha)


def test_kfac_forster_alpha(backend):
    """M0 < N: Forster-transformed inputs give Θ̄ = (N(L−1)+M0) I (S.111)."""
    from ngdref.data import forster_transform

    rng = np.random.default_rng(1)
    n, m0 = 30, 10
    x = forster_transform(unit_rows(rng, n, m0))
    net = Network((m0, 512, 512, 1), "relu", 2.0, 0.0)
    fim = get_fisher("kfac", net, 0.0, forster=True)
    alpha = fim.analytic_alpha(n)
    assert alpha == n * 2 + m0 and fim.step_needs_learning_rate(n) is None
    raw_fim = get_fisher("kfac", net, 0.0)  # inputs not declared Forster-transformed: no α (S.109)
    assert raw_fim.analytic_alpha(n) is None and "S.109" in raw_fim.step_needs_learning_rate(n)
    assert "Forster" in raw_fim.alpha_note() and raw_fim.analytic_alpha(m0) == m0 * 3  # d >= N: NL (S.107)
    p = net.init(0, backend)
    d = isotropy(to_host(theta_bar(fim, net.signals(p, to_device(x, backend)))), alpha)
    assert d["deviation_from_alpha_I"] < 1e-8
    raw = isotropy(to_host(theta_bar(fim, net.signals(p, to_device(unit_rows(rng, n, m0), backend)))), alpha)
    assert raw["condition_number"] > 1.1  # S.109: not isotropic without the transform


def test_kfac_bias_modes_alpha_against_oracle(backend):
    """Folded bias: α = NL and the oracle's Θ̄(x, x) is NL·I; separate bias blocks (S.123): no α is
    claimed, and indeed the oracle's Θ̄ is N(2L−1)·I + 11ᵀ (the output bias's rank-one term)."""
    net, p, x, xt, y = _setup((6, 9, 8, 1), "tanh", 0.5)  # tanh: every Gram matrix has full rank
    n = x.shape[0]
    s = net.signals(net.init(1, backend), to_device(x, backend))  # init(1) is p
    folded = KFAC(net, 0.0, bias="folded")
    assert folded.analytic_alpha(n) == n * 3
    np.testing.assert_allclose(O.oracle("kfac", net, p, x, bias="folded").theta_bar(), n * 3 * np.eye(n), atol=1e-8)
    np.testing.assert_allclose(to_host(theta_bar(folded, s)), n * 3 * np.eye(n), atol=1e-8)
    separate = KFAC(net, 0.0)
    assert separate.analytic_alpha(n) is None and "11" in separate.alpha_note()
    want = O.oracle("kfac", net, p, x, bias="separate").theta_bar()
    np.testing.assert_allclose(want, n * 5 * np.eye(n) + np.ones((n, n)), atol=1e-8)
    np.testing.assert_allclose(to_host(theta_bar(separate, s)), want, atol=1e-8)
    assert KFAC(Network((20, 64, 64, 1), "relu", 2.0, 0.5), bias="folded").analytic_alpha(10) == 30


def test_tridiag_alpha_and_singular_sigma():  # no arrays: α and Σ are checked at construction
    for depth, alpha in [(3, 1), (4, 2), (6, 2), (7, 3)]:
        net = Network((4,) + (6,) * (depth - 1) + (1,), "tanh")
        assert get_fisher("tridiag", net, 0.0).analytic_alpha(4) == pytest.approx(alpha)
    net5 = Network((4, 6, 6, 6, 6, 1), "tanh")
    with pytest.raises(NgdrefError, match="Lemma 4.3"):
        get_fisher("tridiag", net5, 0.0)
    with pytest.warns(RuntimeWarning, match="singular"):
        fim = get_fisher("tridiag", net5, 1e-3)
    assert fim.analytic_alpha(4) is None
    np.testing.assert_array_equal(tridiagonal_sigma(3), [[1, 1, 0], [1, 1, 1], [0, 1, 1]])
    np.testing.assert_array_equal(tridiagonal_sigma(6), O.tridiagonal_sigma(6))


@pytest.mark.parametrize("name", ["bd", "tridiag", "layer"])
def test_layerwise_singular_layer_kernel_is_the_pseudo_inverse(name, backend):
    """Θ_3 = a_2 a_2ᵀ/N has rank ≤ M + 1 = 5 < N = 10 (a narrow last hidden layer, no dead unit):
    S.89 with Θ_3⁺ would not be G⁺∇L for a non-diagonal Σ; the ρ = 0 step and Θ̄ are the oracle's
    G⁺ ones, silently (tests/test_layerwise_singular.py has the dead-unit cases and ρ → 0)."""
    rng = np.random.default_rng(0)
    net = Network((6, 8, 4, 1), "tanh", 2.0, 0.3)
    x, xt, y = unit_rows(rng, 10, 6), unit_rows(rng, 3, 6), rng.standard_normal((10, 1))
    opts = {"sigma": _dense_sigma(3)} if name == "layer" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        d, c_train, c_test = structured(get_fisher(name, net, 0.0, **opts), net, x, xt, y, backend, seed=0)
    orc = O.oracle(name, net, net.init(0), x, **opts)
    tol = max(1e-9, 1e4 * O.EPS * orc.condition())
    assert _rel(d, orc.direction(y)) < tol
    assert _rel(c_train, orc.theta_bar()) < tol
    assert _rel(c_test, orc.theta_bar(xt)) < tol


def test_bad_input_errors():  # no arrays: configuration errors
    net = Network((4, 6, 1), "tanh")
    with pytest.raises(ConfigError, match="damping"):
        get_fisher("exact", net, -1.0)
    with pytest.raises(ConfigError, match="unknown Fisher"):
        get_fisher("newton", net)
    with pytest.raises(ConfigError, match="2×2"):
        LayerWiseFisher(net, sigma=np.eye(3))
    with pytest.raises(ConfigError, match="symmetric"):
        LayerWiseFisher(net, sigma=[[1.0, 2.0], [0.0, 1.0]])
    with pytest.raises(ConfigError, match="bias"):
        KFAC(net, bias="merged")


@pytest.mark.parametrize("name", ["gd", "exact", "bd", "tridiag", "kfac", "unit", "diag", "quasi-diag"])
def test_directions_are_fresh_arrays(name, backend):
    """train() scales and applies Δθ in place: no direction may share memory with θ or the signals,
    so writing into every direction (in place, as train does) leaves them all unchanged."""
    rng = np.random.default_rng(0)
    net = Network((5, 9, 8, 1), "relu", 2.0, 0.5)
    p, x = net.init(0, backend), to_device(unit_rows(rng, 6, 5), backend)
    s = net.signals(p, x)
    inputs = [x, s.f, *p, *s.a, *s.h, *s.u, *s.delta]
    before = [np.array(to_host(a), copy=True) for a in inputs]
    fim = get_fisher(name, net, 0.0 if name == "gd" else 1e-3)
    d1 = fim.direction(p, x, to_device(rng.standard_normal((6, 1)), backend), s)
    assert len({id(d) for d in d1}) == len(d1)
    for d in d1:
        d += 1.0
    for a, b in zip(inputs, before):
        np.testing.assert_array_equal(to_host(a), b)
