"""The isotropy check of the analytic predictions (ngdref.experiments.prediction) against the explicit
entry-wise measure max|Θ̄(x, x)/α − I| it replaced, and the regression matrices against their explicit
twins (np.linalg.solve on the analytic kernels). The probe measure is array-level (numpy and strict
backends); the analytic kernels and their operators are host NumPy by design (tests/test_kernels.py)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from scipy.sparse.linalg import LinearOperator

from ngdref import Network
from ngdref.backend import to_device
from ngdref.data import load_dataset
from ngdref.experiments.prediction import ISOTROPY_CHECK, AnalyticPredictor, isotropy_deviation
from ngdref.fisher import get_fisher
from ngdref.kernels import analytic_kernels



def explicit_deviation(matrix: np.ndarray, alpha: float) -> float:
    """The measure before the probes: max_ij |Θ̄(x, x)/α − I|_ij, from the full matrix."""
    return float(np.max(np.abs(matrix / alpha - np.eye(matrix.shape[0]))))


def _probe_bounds_hold(new: float, old: float, n: int) -> bool:
    """isotropy_deviation's documented bounds: 0.1·old/max|V| <= new <= N·old (max|V| < 6 for 8N draws)."""
    return 0.1 * old / 6.0 <= new <= n * old * (1 + 1e-12)


@pytest.mark.parametrize("scale", [1e-13, 1e-3, 0.3])
def test_probe_deviation_brackets_the_explicit_one(backend, scale):
    """Isotropic up to rounding (scale 1e-13) and not (1e-3, 0.3): the probe measure stays within its documented
    bounds of the entry-wise one."""
    rng = np.random.default_rng(7)
    n, alpha = 40, 4.0  # a power of two: (αv)/α = v exactly
    s = rng.standard_normal((n, n))
    m = alpha * (np.eye(n) + scale * (s + s.T) / 2)
    old = explicit_deviation(m, alpha)
    new = isotropy_deviation(to_device(m, backend), alpha)
    assert _probe_bounds_hold(new, old, n), (new, old)
    assert isotropy_deviation(to_device(alpha * np.eye(n), backend), alpha) == 0.0


def test_probe_deviation_sees_a_single_bad_entry(backend):
    """One off-diagonal entry is enough: the probes are dense, not a sample of entries."""
    n, alpha = 60, 2.0
    m = alpha * np.eye(n)
    m[17, 43] += 1e-4 * alpha
    new = isotropy_deviation(to_device(m, backend), alpha)
    assert 1e-6 < new <= 1e-4


def _inputs(rng, n, m0, near_duplicate=None):
    x = rng.standard_normal((n, m0))
    if near_duplicate is not None:  # two almost equal inputs: Θ ill-conditioned, ΘΘ⁻¹ = I only to cond·eps
        x[1] = x[0] + near_duplicate * rng.standard_normal(m0)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("name,kw", [("exact", {}), ("bd", {}), ("tridiag", {}),
                                     ("layer", {"sigma": np.diag([1.0, 2.0, 3.0])}),
                                     ("layer", {"sigma": 2.0 * np.ones((3, 3))})])
@pytest.mark.parametrize("near_duplicate", [None, 1e-3])
def test_operator_theta_bar_train_is_the_explicit_one(name, kw, near_duplicate):
    """Exact and layer-wise NGD give Θ̄(x, x) as an operator Σ_l w_lΘ_l(Θ_l⁻¹v) from their factors: it agrees
    with the explicit Θ̄(x, x) of analytic_theta_bar(train, train) on vectors, and its probe deviation with
    the explicit entry-wise one — both at rounding level (well conditioned), both well above it (a
    near-duplicate input pair, cond(Θ_l) ≈ 1e6–1e8): an operator returning αv would fail the second case."""
    rng = np.random.default_rng(3)
    net = Network.build(12, 8, 3, 1, "relu", sigma_w2=2.0, sigma_b2=0.3)
    n = 10
    train = analytic_kernels(net, _inputs(rng, n, 12, near_duplicate))
    fim = get_fisher(name, net, **kw)
    alpha = fim.analytic_alpha(n)
    op, explicit = fim.analytic_theta_bar_train(train), fim.analytic_theta_bar(train, train)
    v = rng.standard_normal((n, 3))
    # well conditioned: both to rounding; a near-duplicate pair: both to cond(Θ_l)·eps ≈ 1e-8
    np.testing.assert_allclose(op @ v, explicit @ v, rtol=0, atol=(1e-12 if near_duplicate is None else 1e-7) * alpha)
    old, new = explicit_deviation(explicit, alpha), isotropy_deviation(op, alpha)
    if near_duplicate is None:
        assert old < 1e-13 and new < 1e-13
    else:
        assert new > 1e-13 and (old > 1e-13 or name == "tridiag")  # Θ_2 alone is well conditioned enough
        assert new < 1e-6 and new <= 10 * n * max(old, 1e-13)


def _kernels(net, ds):
    return analytic_kernels(net, ds.x_train), analytic_kernels(net, ds.x_test, ds.x_train)


def _assert_reg(reg, twin, rtol=1e-10):
    """``reg`` (an array, or exact NGD's operator r ↦ Θ(x′, x)(Θ⁻¹r), applied to I) against its twin."""
    dense = reg @ np.eye(twin.shape[1])
    np.testing.assert_allclose(dense, twin, rtol=0, atol=rtol * np.max(np.abs(twin)))


def test_predictor_isotropic_and_not():
    """N = 12 > M0 = 5: exact, BD and tri-diagonal are isotropic (α⁻¹Θ̄(x′, x), their regression matrices the
    sums of Θ_l(x′, x)Θ_l⁻¹ that np.linalg.solve gives); K-FAC's first-layer factor is the projection P′P⁺
    (S.108), it has no α and no isotropy check, and its regression matrix is Θ̄(x′, x)Θ̄(x, x)⁻¹ (Eq. 10)."""
    net = Network.build(5, 16, 3, 1, "relu", sigma_w2=2.0, sigma_b2=0.0)
    ds = load_dataset("gaussian", (0, 1), 12, 4, seed=11, input_dim=5)
    pred = AnalyticPredictor(net, ds, ["exact", "bd", "tridiag", "kfac"])
    train, cross = _kernels(net, ds)
    twins = {  # Θ(x′, x)Θ⁻¹ and Σ_l w_l Θ_l(x′, x)Θ_l⁻¹ / α, by a general solve
        "exact": np.linalg.solve(train.ntk, cross.ntk.T).T,
        "bd": sum(np.linalg.solve(t, c.T).T for t, c in zip(train.layer_ntks, cross.layer_ntks)) / 3.0,
        "tridiag": np.linalg.solve(train.layer_ntks[1], cross.layer_ntks[1].T).T,
    }
    for name, twin in twins.items():
        st = pred.methods[name]
        assert st["formula"].startswith("α⁻¹") and st["isotropy_deviation"] < 1e-12
        assert st["isotropy_check"] == ISOTROPY_CHECK
        _assert_reg(st["reg"], twin)
    kf = pred.methods["kfac"]
    assert kf["alpha"] is None and kf["isotropy_deviation"] is None and kf["isotropy_check"] is None
    assert kf["formula"].startswith("Θ̄(x′,x) Θ̄⁻¹")
    fim = get_fisher("kfac", net)
    _assert_reg(kf["reg"], np.linalg.solve(fim.analytic_theta_bar(train, train).T,
                                           fim.analytic_theta_bar(cross, train).T).T, 1e-9)
    assert "reg" not in pred.info()["exact"]
    assert isinstance(pred.methods["exact"]["reg"], LinearOperator)  # no 2N²N′ solve for exact NGD
    y = np.asarray(ds.y_train)
    np.testing.assert_allclose(pred.methods["exact"]["reg"] @ y, twins["exact"] @ y, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fail_first", [False, True])
def test_f0_covariance_factor(monkeypatch, fail_first):
    """The blocks of f_0's joint covariance factor, [[L₁₁, 0], [L₂₁, L₂₂]], multiply back to the analytic
    covariance σ_w²A_{L−1} + σ_b² (+ jitter on the diagonal), L₁₁ lower triangular although it overwrote
    K(x, x) in place; ``fail_first``: the first factorisation overwrites K and then fails, and the retry
    (10× the jitter) must rebuild K from the triangle the factorisation left alone."""
    import ngdref.experiments.prediction as prediction

    real, calls = prediction.sla.cho_factor, []

    def flaky(a, **kw):
        out = real(a, **kw)
        if sys._getframe(1).f_globals["__name__"] != prediction.__name__:
            return out  # Θ's factor (ngdref.kernels)
        calls.append(1)
        if fail_first and len(calls) == 1:
            raise np.linalg.LinAlgError("forced")
        return out

    monkeypatch.setattr(prediction.sla, "cho_factor", flaky)
    net = Network.build(6, 16, 3, 1, "relu", sigma_w2=2.0, sigma_b2=0.2)
    ds = load_dataset("gaussian", (0, 1), 9, 4, seed=2, input_dim=6)
    pred = AnalyticPredictor(net, ds, ["exact"])
    x = np.vstack([ds.x_train, ds.x_test])
    k = analytic_kernels(net, x).feature_gram(3)
    scale = float(np.mean(np.diag(k)))
    assert pred.jitter == pytest.approx(scale * (1e-11 if fail_first else 1e-12), rel=1e-12)
    assert len(calls) == (2 if fail_first else 1) and "error" not in pred.methods["exact"]
    l11, l21, l22 = pred.l11, pred.l21, pred.l22
    assert np.array_equal(l11, np.tril(l11)) and np.array_equal(l22, np.tril(l22))
    n = 9
    full = np.block([[l11, np.zeros((n, 4))], [l21, l22]])
    np.testing.assert_allclose(full @ full.T, k + pred.jitter * np.eye(n + 4), rtol=0, atol=1e-12 * scale)


def test_predictor_non_isotropic_branch(monkeypatch):
    """A wrong α (2 instead of exact NGD's 1) makes Θ̄(x, x)/α = I/2: the probe deviation is 0.5, as the
    entry-wise one; the predictor then forms Θ̄(x, x) from the operator's approximation explicitly and
    solves Eq. 10, which gives the same regression matrix Θ(x′, x)Θ⁻¹ (α cancels)."""
    from ngdref.fisher.exact import ExactFisher

    monkeypatch.setattr(ExactFisher, "analytic_alpha", lambda self, n: 2.0)
    net = Network.build(6, 16, 3, 1, "relu", sigma_w2=2.0, sigma_b2=0.1)
    ds = load_dataset("gaussian", (0, 1), 9, 3, seed=5, input_dim=6)
    st = AnalyticPredictor(net, ds, ["exact"]).methods["exact"]
    train, cross = _kernels(net, ds)
    old = explicit_deviation(get_fisher("exact", net).analytic_theta_bar(train, train), 2.0)
    assert abs(old - 0.5) < 1e-12 and abs(st["isotropy_deviation"] - 0.5) < 1e-12
    assert st["formula"].startswith("Θ̄(x′,x) Θ̄⁻¹")
    _assert_reg(st["reg"], np.linalg.solve(train.ntk, cross.ntk.T).T)


@pytest.mark.parametrize("tile", [3, 4, 10, 1024])
def test_triangle_helpers_across_tiles(tile, monkeypatch):
    """``_lower_from_upper`` and ``_zero_upper`` against NumPy's triu/tril on a 10 × 10 matrix in tiles of 3 and 4
    (several tiles, the last ones clipped), 10 (one exact tile) and 1024 (one clipped tile): off-diagonal tiles
    are copied or zeroed whole, diagonal ones by their triangles."""
    import ngdref.experiments.prediction as prediction

    monkeypatch.setattr(prediction, "_TILE", tile)
    mat = np.random.default_rng(5).standard_normal((10, 10))
    sym = mat.copy()
    prediction._lower_from_upper(sym)
    assert np.array_equal(sym, np.triu(mat) + np.triu(mat, 1).T)
    low = mat.copy()
    prediction._zero_upper(low)
    assert np.array_equal(low, np.tril(mat))
