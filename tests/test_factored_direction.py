"""Factored directions (``precondition_factors``) and their application without a parameter-sized Δθ
(``ngdref.train.apply_factors``: one BLAS GEMM into θ on NumPy, a block of rows at a time on the strict
backend; ``factored_distances``) — issue 17's memory path for training.

Twins: each factor pair's product against the explicit P×P oracle of tests/oracles.py (and against
``precondition``'s arrays); the blocked update and the blocked Eq. 22 sums against the whole-array
path (the direction of ``precondition`` applied whole), with blocks forced small so that layers are
cut into several blocks and a shorter last one; ``train`` records with and without the blocked path.
Every test takes the ``backend`` fixture (numpy and the strict array API)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import ngdref.train as T
from ngdref import Network, get_backend, to_device, to_host
from ngdref.backend import dtype_name_of
from ngdref.data import load_dataset
from ngdref.fisher import get_fisher
from ngdref.losses import CrossEntropyLoss, MSELoss
from ngdref.train import TrainConfig, apply_factors, factored_distances, ngd_step, squared_distance, train

from . import oracles as O
from .conftest import unit_rows


class _Unfactored:
    """``fim`` with no factored direction: callers take the whole-array ``precondition`` path."""

    def __init__(self, fim):
        self._fim = fim

    def __getattr__(self, name):
        return getattr(self._fim, name)

    def precondition_factors(self, signals, v, output_metric=None):
        return None

    def precondition_factors_many(self, signals, vs, output_metric=None):
        return None


def _flat(params) -> np.ndarray:
    return np.concatenate([np.asarray(to_host(p), dtype=np.float64).reshape(-1) for p in params])


def _rel(got, want) -> float:
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def _small_blocks(monkeypatch, entries: int = 24) -> None:
    """Blocks of ``entries // fan`` rows: every hidden layer of the nets below is cut into several
    blocks with a shorter last one (e.g. 10 rows of fan 7: 3 + 3 + 3 + 1)."""
    monkeypatch.setattr(T, "_UPDATE_BLOCK", entries)


# (name, options, ρ): every approximation with a factored direction
FACTORED = [
    ("gd", {}, 0.0),
    ("exact", {}, 1e-2),
    ("exact", {}, 0.0),
    ("bd", {}, 1e-2),
    ("tridiag", {}, 1e-2),
    ("layer", {"sigma": [[2.0, 0.5, 0.0], [0.5, 1.5, 0.25], [0.0, 0.25, 1.0]]}, 1e-2),
    ("kfac", {"bias": "separate"}, 1e-2),
    ("kfac", {"bias": "folded"}, 1e-2),
    ("unit", {}, 1e-2),
    ("unit", {}, 0.0),
]


@pytest.mark.parametrize("c", [1, 2])
@pytest.mark.parametrize("name,opts,rho", FACTORED,
                         ids=[f"{n}-{'-'.join(str(v) for v in o.values() if isinstance(v, str))}-{r:g}"
                              for n, o, r in FACTORED])
def test_factor_product_is_the_oracles_direction(backend, name, opts, rho, c):
    """left_l @ right_l is G⁻¹Jᵀv/N of the explicit P×P oracle, layer by layer, and ``precondition``'s
    array; left_l is (M_l, r), right_l (r, fan_l) with r <= CN + 1, in the network's dtype."""
    rng = np.random.default_rng(11)
    net = Network((6, 10, 9, c), "tanh", 2.0, 0.3)
    x, v = unit_rows(rng, 5, 6), rng.standard_normal((c, 5))
    p = net.init(0, backend)
    s = net.signals(p, to_device(x, backend))
    fim = get_fisher(name, net, rho, **opts)
    factors = fim.precondition_factors(s, to_device(v, backend))
    assert factors is not None and len(factors) == net.depth
    products = []
    for l, (left, right) in enumerate(factors, start=1):
        m, fan = net.layer_shape(l)
        assert left.shape[0] == m and right.shape[1] == fan and left.shape[1] == right.shape[0] <= c * 5 + 1
        assert dtype_name_of(left) == dtype_name_of(right) == "float64"
        products.append(to_host(left @ right))
    want = O.oracle(name, net, net.init(0), x, rho, **opts).precondition(v)
    assert _rel(_flat(products), want) < 1e-9


@pytest.mark.parametrize("c", [1, 2])
@pytest.mark.parametrize("name,rho", [("unit", 1e-2), ("unit", 0.0), ("bd", 1e-2)])
def test_factors_of_several_vectors_are_the_oracles(backend, name, rho, c):
    """precondition_factors_many(s, [v_1, v_2, v_3]): each list's products are G⁻¹Jᵀv_j/N of the explicit P×P
    oracle (unit-wise: the three vectors share each unit's factorisation; bd: the default, one call per v)."""
    rng = np.random.default_rng(16)
    net = Network((6, 10, 9, c), "relu", 2.0, 0.3)
    x, vs = unit_rows(rng, 5, 6), [rng.standard_normal((c, 5)) for _ in range(3)]
    p = net.init(0, backend)
    s = net.signals(p, to_device(x, backend))
    many = get_fisher(name, net, rho).precondition_factors_many(s, [to_device(v, backend) for v in vs])
    orc = O.oracle(name, net, net.init(0), x, rho)
    assert len(many) == 3
    for factors, v in zip(many, vs):
        assert _rel(_flat([left @ right for left, right in factors]), orc.precondition(v)) < 1e-9


@pytest.mark.parametrize("c,g,rho", [(1, 1, 1e-2), (1, 1, 0.0), (2, 2, 1e-2), (2, 2, 0.0)])
def test_block_partition_factors_of_several_vectors_are_the_oracles(backend, c, g, rho):
    """Block partition's precondition_factors_many(s, [v_1, v_2, v_3]), the three vectors solved together per tile:
    each list's products are the P×P oracle's G⁻¹Jᵀv_j/N (C = 2 with tiles of 2 units, which are dual there)."""
    rng = np.random.default_rng(16)
    net = Network((6, 10, 9, c), "relu", 2.0, 0.3)
    x, vs = unit_rows(rng, 5, 6), [rng.standard_normal((c, 5)) for _ in range(3)]
    p = net.init(0, backend)
    s = net.signals(p, to_device(x, backend))
    many = get_fisher("block", net, rho, g=g).precondition_factors_many(s, [to_device(v, backend) for v in vs])
    orc = O.oracle("block", net, net.init(0), x, rho, g=g)
    assert len(many) == 3
    for factors, v in zip(many, vs):
        assert _rel(_flat([left @ right for left, right in factors]), orc.precondition(v)) < 1e-9


def test_train_shares_step_0_with_eq22(backend, monkeypatch):
    """train's step 0 and its Eq. 22 check get their factors from one precondition_factors_many call (unit-wise:
    one factorisation per unit); every record and the summary equal those of separate calls to 1e-10."""
    calls = []
    real = T.get_fisher

    def counting(*a, **k):
        fim = real(*a, **k)
        many = fim.precondition_factors_many

        def spy(signals, vs, output_metric=None):
            calls.append(len(vs))
            return many(signals, vs, output_metric)

        fim.precondition_factors_many = spy
        return fim

    ds = load_dataset("gaussian", (0, 1), n_train=12, n_test=8, seed=1, input_dim=8)
    net = Network.build(8, 24, 3, 1, "relu", sigma_b2=0.5)
    config = TrainConfig(fim="unit", steps=3, damping=1e-3)
    monkeypatch.setattr(T, "get_fisher", counting)
    shared = train(net, ds, config, backend, seed=2)
    assert calls == [2, 1, 1]  # step 0 with Eq. 22's vector, steps 1 and 2 alone (through precondition_factors)
    monkeypatch.setattr(T, "get_fisher", lambda *a, **k: _NoMany(real(*a, **k)))
    separate = train(net, ds, config, backend, seed=2)
    assert shared.status == separate.status == "ok" and "eq22_relative_error" in shared.summary
    for g, w in [*zip(shared.records, separate.records), (shared.summary, separate.summary)]:
        for k, wv in w.items():
            if isinstance(wv, float) and k not in ("seconds", "setup_seconds"):
                assert math.isclose(g[k], wv, rel_tol=1e-10, abs_tol=1e-12), (k, g[k], wv)


class _NoMany(_Unfactored):
    """``fim`` with its factored direction but no shared one: step 0 and Eq. 22 make their own factors."""

    def precondition_factors(self, signals, v, output_metric=None):
        return self._fim.precondition_factors(signals, v, output_metric)


@pytest.mark.parametrize("name", ["exact", "bd"])
def test_cross_entropy_factors_use_the_s159_metric(backend, name):
    """(JᵀΛ̃J/N + ρI)⁻¹Jᵀv/N (S.159) from the factors, C = 3."""
    rng = np.random.default_rng(12)
    net = Network((6, 10, 9, 3), "tanh", 2.0, 0.3)
    x, v = unit_rows(rng, 5, 6), rng.standard_normal((3, 5))
    p = net.init(0, backend)
    s = net.signals(p, to_device(x, backend))
    metric = CrossEntropyLoss(rho_tilde=0.1).output_metric(s.f)
    factors = get_fisher(name, net, 1e-2).precondition_factors(s, to_device(v, backend), metric)
    f = O.outputs(O.Net.of(net), net.init(0), x)
    orc = O.oracle(name, net, net.init(0), x, 1e-2, output_metric=O.softmax_metric(f, 0.1))
    assert _rel(_flat([left @ right for left, right in factors]), orc.precondition(v)) < 1e-9


@pytest.mark.parametrize("opts,rho", [({}, 1e-2), ({}, 0.0), ({"g": 2}, 1e-2), ({"g": 3}, 0.0)])
def test_block_partition_factors_where_every_tile_is_dual_and_whole_rows(backend, opts, rho):
    """Block partition's factors (coef_l (M_l, N), a_{l−1}) exist where every tile holds whole rows and is dual
    (|R|·fan_l > CN): their product is the oracle's direction. Where a layer's tiles are primal (C = 2, g = 1:
    layer 1's fan 7 and the output units' 10 are <= CN = 10; g >= 2 makes them dual) or hold part of a row (k = 3)
    there are none, and training takes ``precondition``."""
    rng = np.random.default_rng(11)
    x = unit_rows(rng, 5, 6)
    for c, k, factored in ((1, "all", True), (2, "all", opts.get("g", 1) >= 2), (1, 3, False)):
        net = Network((6, 10, 9, c), "tanh", 2.0, 0.3)
        v = rng.standard_normal((c, 5))
        p = net.init(0, backend)
        s = net.signals(p, to_device(x, backend))
        fim = get_fisher("block", net, rho, k=k, **opts)
        factors = fim.precondition_factors(s, to_device(v, backend))
        assert (factors is not None) == factored
        if factors is None:
            continue
        for l, (left, right) in enumerate(factors, start=1):
            assert left.shape == (net.layer_shape(l)[0], 5) and right.shape == (5, net.layer_shape(l)[1])
        want = O.oracle("block", net, net.init(0), x, rho, k=k, **opts).precondition(v)
        assert _rel(_flat([to_host(left @ right) for left, right in factors]), want) < 1e-9
        assert _rel(_flat(fim.precondition(s, to_device(v, backend))), want) < 1e-9


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ["exact", "bd", "kfac", "unit", "block"])
def test_blocked_step_is_the_whole_direction_applied(backend, name, dtype, monkeypatch):
    """ngd_step by row blocks (several per layer, a shorter last one) equals θ − η·precondition(…) applied
    whole (the unfactored path), in and out of place; out of place θ_t is kept and θ_{t+1} is new arrays
    of θ's dtype."""
    _small_blocks(monkeypatch)
    be = get_backend(backend.name, dtype)
    rng = np.random.default_rng(13)
    net = Network((7, 10, 9, 1), "relu", 2.0, 0.5)
    x, y = unit_rows(rng, 6, 7), rng.standard_normal((6, 1))
    p = net.init(0, be)
    s = net.signals(p, to_device(x, be))
    residual = MSELoss().residual(s.f, to_device(y, be))
    fim = get_fisher(name, net, 1e-3)
    before = _flat(p)
    whole = ngd_step(_Unfactored(fim), p, s, residual, 0.3)
    blocked = ngd_step(fim, p, s, residual, 0.3)
    tol = 1e-14 if dtype == "float64" else 1e-6
    assert np.array_equal(_flat(p), before)
    assert all(a is not b for a, b in zip(blocked, p))
    assert {dtype_name_of(a) for a in blocked} == {dtype}
    assert _rel(_flat(blocked), _flat(whole)) < tol
    same = ngd_step(fim, p, s, residual, 0.3, in_place=True)
    assert same is p and _rel(_flat(p), _flat(whole)) < tol


def test_apply_factors_row_blocks(backend, monkeypatch):
    """θ_l − η·left_l @ right_l for hand-made factors (ranks 1 and 3), blocks of 2 rows over 5 and 4 rows."""
    monkeypatch.setattr(T, "_UPDATE_BLOCK", 8)  # fan 4 and 3: blocks of 2 rows
    rng = np.random.default_rng(14)
    shapes = [((5, 1), (1, 4)), ((4, 3), (3, 3))]
    lefts = [rng.standard_normal(a) for a, _ in shapes]
    rights = [rng.standard_normal(b) for _, b in shapes]
    theta = [rng.standard_normal((a[0], b[1])) for a, b in shapes]
    want = [t - 0.7 * (lf @ r) for t, lf, r in zip(theta, lefts, rights)]
    dev = [[to_device(a, backend) for a in arrs] for arrs in (theta, lefts, rights)]
    factors = list(zip(dev[1], dev[2]))
    new = apply_factors(dev[0], factors, 0.7)
    assert _rel(_flat(new), _flat(want)) < 1e-15 and np.array_equal(_flat(dev[0]), _flat(theta))
    apply_factors(dev[0], factors, 0.7, in_place=True)
    assert _rel(_flat(dev[0]), _flat(want)) < 1e-15


def test_factored_distances_are_the_whole_sums(backend, monkeypatch):
    """(‖θ − θ_0 − Δ‖², ‖Δ‖²) by row blocks equal squared_distance of the whole Δ = left @ right."""
    monkeypatch.setattr(T, "_UPDATE_BLOCK", 9)  # fan 4: blocks of 2 rows over 5
    rng = np.random.default_rng(15)
    left, right = rng.standard_normal((5, 2)), rng.standard_normal((2, 4))
    p, q = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    d = [to_device(a, backend) for a in (p, q, left, right)]
    got = [float(to_host(g)) for g in factored_distances([d[0]], [d[1]], [(d[2], d[3])])]
    shift = left @ right
    assert got[0] == pytest.approx(np.sum((p - q - shift) ** 2), rel=1e-13)
    assert got[1] == pytest.approx(np.sum(shift**2), rel=1e-13)
    whole = to_device(shift, backend)
    assert got[0] == pytest.approx(float(to_host(squared_distance([d[0]], [d[1]], [whole]))), rel=1e-13)


def _records(backend, fim: str, factored: bool, monkeypatch, linearized: bool = False):
    ds = load_dataset("gaussian", (0, 1), n_train=12, n_test=8, seed=1, input_dim=8)
    net = Network.build(8, 24, 3, 1, "relu", sigma_b2=0.5)
    with monkeypatch.context() as m:
        if not factored:
            m.setattr(T, "get_fisher", lambda *a, **k: _Unfactored(get_fisher(*a, **k)))
        # ρ = 1e-3, not the defaults (unit 1e-12, kfac 0): there this tiny net leaves the linear regime and each
        # step amplifies rounding 10²–10⁴-fold, so any two summation orders part after a few steps
        lr = 0.01 if fim == "kfac" else None
        config = TrainConfig(fim=fim, steps=3, linearized=linearized, lr=lr, damping=1e-3)
        return train(net, ds, config, backend, seed=2)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("fim,linearized", [("unit", False), ("kfac", True)])
def test_train_records_with_and_without_the_blocked_path(backend, fim, linearized, dtype, monkeypatch):
    """Every record and the summary (Eq. 22 check included) agree whether the direction is applied by row
    blocks (several per layer) or whole: to 1e-10 of each number in float64, 1e-5 in float32."""
    _small_blocks(monkeypatch, 64)
    be = get_backend(backend.name, dtype)
    got = _records(be, fim, True, monkeypatch, linearized)
    want = _records(be, fim, False, monkeypatch, linearized)
    assert got.status == want.status == "ok", got.message
    assert "eq22_relative_error" in got.summary and len(got.records) == 4
    tol = 1e-10 if dtype == "float64" else 1e-5
    for g, w in [*zip(got.records, want.records), (got.summary, want.summary)]:
        for k, wv in w.items():
            if isinstance(wv, float) and k not in ("seconds", "setup_seconds"):
                assert math.isclose(g[k], wv, rel_tol=tol, abs_tol=1e-12), (k, g[k], wv)
