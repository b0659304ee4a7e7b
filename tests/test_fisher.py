"""gd, exact, layer-wise (bd, tridiag, any Σ) and K-FAC: structured path vs explicit oracle,
isotropy with the paper's α, special cases and error paths."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from ngdref import Network, to_device, to_host
from ngdref.errors import ConfigError, NgdrefError
from ngdref.fisher import KFAC, LayerWiseFisher, get_fisher, tridiagonal_sigma
from ngdref.diagnostics import isotropy

from .conftest import unit_rows

# well-conditioned tiny nets: N = 4 samples, fan-in >= N
CONFIGS = [
    ((6, 10, 1), "tanh", 0.0),
    ((6, 12, 10, 1), "relu", 0.5),
    ((5, 10, 9, 2), "tanh", 0.3),
    ((6, 9, 10, 9, 1), "erf", 0.0),
    ((5, 9, 8, 9, 10, 2), "tanh", 0.2),
]
NAMES = ["gd", "exact", "bd", "tridiag", "kfac"]


def _setup(widths, act, sb2, seed=0, n=4, n_test=3):
    rng = np.random.default_rng(seed)
    net = Network(widths, act, 2.0, sb2)
    return net, net.init(seed + 1), unit_rows(rng, n, widths[0]), unit_rows(rng, n_test, widths[0]), rng.standard_normal((n, widths[-1]))


def _tolerance(fim, p, x):
    """1e-9, widened to 1e4·eps·κ(G) when the pseudo-inverse of an ill-conditioned G is compared
    (products of Kronecker-factor eigenvalues make κ(G) large for K-FAC at ρ = 0)."""
    ev = np.linalg.eigvalsh(fim.explicit_metric(p, x))
    kept = ev[ev > ev.size * np.finfo(float).eps * ev.max()]
    return max(1e-9, 1e4 * np.finfo(float).eps * kept.max() / kept.min())


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("widths,act,sb2", CONFIGS)
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("rho", [0.0, 1e-2])
def test_structured_matches_explicit_oracle(widths, act, sb2, name, rho):
    if name == "gd" and rho:
        pytest.skip("gd has no damping")
    net, p, x, xt, y = _setup(widths, act, sb2)
    if name == "tridiag" and net.depth % 3 == 2 and net.depth > 2 and rho == 0:
        with pytest.raises(NgdrefError, match="Lemma 4.3"):
            get_fisher(name, net, rho)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fim = get_fisher(name, net, rho)
    tol = _tolerance(fim, p, x)
    assert _rel(to_host(net.flatten(fim.direction(p, x, y))), fim.explicit_direction(p, x, y)) < tol
    assert _rel(fim.coefficient_matrix(p, x, xt), fim.explicit_coefficient(p, x, xt)) < tol
    assert _rel(fim.coefficient_matrix(p, x), fim.explicit_coefficient(p, x)) < tol


@pytest.mark.parametrize("name", NAMES)
def test_structured_path_runs_on_strict_backend(name, backend):
    net, p, x, xt, y = _setup((6, 12, 10, 1), "relu", 0.5)
    fim = get_fisher(name, net, 0.0)
    ref_d = net.flatten(fim.direction(p, x, y))
    ref_c = fim.coefficient_matrix(p, x, xt)
    pb, xb, xtb, yb = net.init(1, backend), to_device(x, backend), to_device(xt, backend), to_device(y, backend)
    d = to_host(net.flatten(fim.direction(pb, xb, yb)))
    c = to_host(fim.coefficient_matrix(pb, xb, xtb))
    assert _rel(d, ref_d) < 1e-12 and _rel(c, ref_c) < 1e-12


def test_layer_with_all_ones_sigma_is_exact():
    """S.91: Σ = 11ᵀ makes the layer-wise FIM the exact FIM."""
    net, p, x, xt, y = _setup((6, 12, 10, 1), "relu", 0.5)
    for rho in (0.0, 0.05):
        layer = LayerWiseFisher(net, rho, sigma=np.ones((3, 3)))
        exact = get_fisher("exact", net, rho)
        assert _rel(to_host(net.flatten(layer.direction(p, x, y))), to_host(net.flatten(exact.direction(p, x, y)))) < 1e-12
        assert _rel(layer.coefficient_matrix(p, x, xt), exact.coefficient_matrix(p, x, xt)) < 1e-12
        assert _rel(layer.explicit_metric(p, x), exact.explicit_metric(p, x)) < 1e-14


def test_kfac_single_sample_is_block_diagonal():
    net, p, x, xt, y = _setup((6, 10, 8, 1), "tanh", 0.0, n=1)
    kfac, bd = get_fisher("kfac", net), get_fisher("bd", net)
    assert _rel(kfac.explicit_metric(p, x), bd.explicit_metric(p, x)) < 1e-12
    assert _rel(to_host(net.flatten(kfac.direction(p, x, y))), to_host(net.flatten(bd.direction(p, x, y)))) < 1e-9


def test_gd_is_the_ntk():
    from ngdref import empirical_ntk

    net, p, x, xt, y = _setup((6, 10, 8, 1), "tanh", 0.3)
    gd = get_fisher("gd", net)
    assert _rel(gd.coefficient_matrix(p, x, xt), empirical_ntk(net, p, xt, x, method="explicit")) < 1e-12


def test_no_double_damping():
    """G + ρI is what is inverted, once: the explicit metric minus ρI equals F."""
    net, p, x, _, _ = _setup((6, 10, 1), "tanh", 0.0)
    rho = 0.37
    for name in ("exact", "bd", "tridiag"):
        g0 = get_fisher(name, net, 0.0).explicit_metric(p, x)
        g1 = get_fisher(name, net, rho).explicit_metric(p, x)
        np.testing.assert_allclose(g1 - g0, rho * np.eye(net.n_params), atol=1e-14)
    # and the structured coefficient equals J (F + ρI)^{-1} Jᵀ/N built from F alone
    from ngdref import jacobian

    j = jacobian(net, p, x)
    f = j.T @ j / 4
    want = j @ np.linalg.solve(f + rho * np.eye(f.shape[0]), j.T) / 4
    assert _rel(get_fisher("exact", net, rho).coefficient_matrix(p, x), want) < 1e-10


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
def test_isotropic_with_papers_alpha(name, widths, sb2, alpha):
    """Θ̄(x, x) = αI (Eq. 12) at moderate width, N = 20, M0 = 100 >= N."""
    rng = np.random.default_rng(0)
    net = Network(widths, "relu", 2.0, sb2)
    x = unit_rows(rng, 20, widths[0])
    fim = get_fisher(name, net, 0.0)
    assert fim.analytic_alpha(20) == pytest.approx(alpha)
    d = isotropy(fim.coefficient_matrix(net.init(0), x), alpha)
    assert d["deviation_from_alpha_I"] < 1e-8


def test_kfac_forster_alpha():
    """M0 < N: Forster-transformed inputs give Θ̄ = (N(L−1)+M0) I (S.111)."""
    from ngdref.data import forster_transform

    rng = np.random.default_rng(1)
    n, m0 = 30, 10
    x = forster_transform(unit_rows(rng, n, m0))
    net = Network((m0, 512, 512, 1), "relu", 2.0, 0.0)
    fim = get_fisher("kfac", net)
    alpha = fim.analytic_alpha(n)
    assert alpha == n * 2 + m0
    d = isotropy(fim.coefficient_matrix(net.init(0), x), alpha)
    assert d["deviation_from_alpha_I"] < 1e-8
    raw = isotropy(fim.coefficient_matrix(net.init(0), unit_rows(rng, n, m0)), alpha)
    assert raw["condition_number"] > 1.1  # S.109: not isotropic without the transform


def test_kfac_separate_bias_is_not_claimed_isotropic():
    net = Network((20, 64, 64, 1), "relu", 2.0, 0.5)
    assert KFAC(net).analytic_alpha(10) is None and "11" in KFAC(net).alpha_note()
    assert KFAC(net, bias="folded").analytic_alpha(10) == 30


def test_tridiag_alpha_and_singular_sigma():
    for depth, alpha in [(3, 1), (4, 2), (6, 2), (7, 3)]:
        net = Network((4,) + (6,) * (depth - 1) + (1,), "tanh")
        assert get_fisher("tridiag", net).analytic_alpha(4) == pytest.approx(alpha)
    net5 = Network((4, 6, 6, 6, 6, 1), "tanh")
    with pytest.raises(NgdrefError, match="Lemma 4.3"):
        get_fisher("tridiag", net5, 0.0)
    with pytest.warns(RuntimeWarning, match="singular"):
        fim = get_fisher("tridiag", net5, 1e-3)
    assert fim.analytic_alpha(4) is None
    np.testing.assert_array_equal(tridiagonal_sigma(3), [[1, 1, 0], [1, 1, 1], [0, 1, 1]])


def test_layerwise_warns_on_a_singular_layer_kernel_only_for_non_diagonal_sigma():
    """Θ_3 = a_2 a_2ᵀ has rank ≤ M + 1 = 5 < N = 10: S.89 with Θ_3⁺ is not G⁺∇L for tridiag (warn),
    while for BD (Σ = I) it still is (no warning)."""
    rng = np.random.default_rng(0)
    net = Network((6, 8, 4, 1), "tanh", 2.0, 0.3)
    p, x = net.init(0), unit_rows(rng, 10, 6)
    y = rng.standard_normal((10, 1))
    with pytest.warns(RuntimeWarning, match="Θ_3 is singular"):
        get_fisher("tridiag", net, 0.0).direction(p, x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        get_fisher("bd", net, 0.0).direction(p, x, y)


def test_bad_input_errors():
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
def test_directions_are_fresh_arrays(name):
    """train() scales and applies Δθ in place: no direction may share memory with θ or the signals."""
    rng = np.random.default_rng(0)
    net = Network((5, 9, 8, 1), "relu", 2.0, 0.5)
    p, x = net.init(0), unit_rows(rng, 6, 5)
    s = net.signals(p, x)
    inputs = list(p) + list(s.a) + list(s.h) + list(s.u) + [np.asarray(d) for d in s.delta]
    d1 = get_fisher(name, net, 0.0 if name == "gd" else 1e-3).direction(p, x, rng.standard_normal((6, 1)), s)
    for d in d1:
        assert not any(np.shares_memory(d, other) for other in inputs)
    assert len({id(d) for d in d1}) == len(d1)
