"""NGD training vs the closed-form dynamics (Eq. 5, 10, 22, 24), cross-entropy (Appendix D).

Every test takes the ``backend`` fixture except the configuration errors (no arrays)."""

from __future__ import annotations

import numpy as np
import pytest

from ngdref import Network, get_backend, to_device, to_host
from ngdref.backend import dtype_name_of
from ngdref.data import load_dataset
from ngdref.dynamics import isotropic_trajectory, linearized_trajectory, resolvent_factor
from ngdref.errors import ConfigError
from ngdref.fisher import get_fisher
from ngdref.losses import cross_entropy_metric, softmax
from ngdref.train import TrainConfig, train

from . import oracles as O
from .conftest import theta_bar as coefficient, unit_rows

B = get_backend()


@pytest.fixture(scope="module")
def mnist20():
    return load_dataset("mnist", (0, 7), n_train=20, n_test=20, seed=0)


def _run(ds, fim, width, steps=1, sigma_b2=0.0, backend=B, **kw):
    net = Network.build(ds.input_dim, width, 3, ds.n_outputs, "relu", sigma_b2=sigma_b2)
    return train(net, ds, TrainConfig(fim=fim, steps=steps, **kw), backend, seed=0)


@pytest.mark.parametrize("fim", ["exact", "bd", "kfac", "unit"])
def test_one_step_with_c1_converges_and_tracks_theory_better_when_wider(mnist20, fim, backend):
    narrow, wide = _run(mnist20, fim, 256, backend=backend), _run(mnist20, fim, 2048, backend=backend)
    for r in (narrow, wide):
        assert r.ok
        # Eq. 10 with c = 1: y after one step where Θ̄ = αI exactly (exact, bd, kfac at any width);
        # unit-wise Θ̄ = diag(#alive units + 1) (S.137) is isotropic only as M → ∞
        bound = 1e-12 if fim != "unit" else 1e-2 * r.records[0]["train_loss"]
        assert r.records[1]["theory_train_loss"] < bound
    l0 = wide.records[0]["train_loss"]
    assert wide.records[1]["train_loss"] < 0.1 * l0  # measured at M = 2048: exact 1%, bd 0.6%, kfac 7%
    dev_n = narrow.records[1]["max_abs_f_minus_flin_train"]
    dev_w = wide.records[1]["max_abs_f_minus_flin_train"]
    assert dev_w < 0.75 * dev_n  # O(1/√M): 2048/256 = 8 → ideally ÷2.8


def test_gd_follows_eq5_at_large_width(mnist20, backend):
    r = _run(mnist20, "gd", 2048, steps=5, sigma_b2=0.5, backend=backend)
    assert r.ok
    for rec in r.records:
        assert abs(rec["train_loss"] - rec["theory_train_loss"]) < 2e-3 * r.records[0]["train_loss"]
        assert rec["max_abs_f_minus_flin_test"] < 1e-2
    assert r.records[-1]["train_loss"] < r.records[0]["train_loss"]


def test_eq22_parameter_solution_first_order(mnist20, backend):
    err = [_run(mnist20, "bd", m, steps=2, backend=backend).summary["eq22_relative_error"] for m in (256, 2048)]
    assert err[1] < err[0] and err[1] < 0.3


def test_linearized_model_matches_closed_form(mnist20, backend):
    r = _run(mnist20, "bd", 256, steps=3, linearized=True, lr_scale=0.5, backend=backend)
    for rec in r.records:
        assert abs(rec["linearized_model_train_loss"] - rec["theory_train_loss"]) < 1e-10 + 1e-8 * rec["theory_train_loss"]


def test_min_norm_solution_b4(backend):
    """Ridge-less limit of argmin ‖y − J θ‖²/2N + λ/2 θᵀGθ equals G⁻¹Jᵀ Θ̄⁻¹ y/N (S.125–S.127)."""
    rng = np.random.default_rng(0)
    net = Network((6, 10, 9, 1), "tanh", 2.0, 0.3)
    p = net.init(0)
    x = unit_rows(rng, 4, 6)
    y = rng.standard_normal(4)
    j = O.jacobian(O.Net.of(net), p, x)
    s = net.signals(net.init(0, backend), to_device(x, backend))
    for name in ("bd", "exact", "kfac"):
        fim = get_fisher(name, net, 1e-3)
        g = O.metric(name, net, p, x, 1e-3)  # G_0, the oracle's (tests/oracles.py)
        theta_bar = to_host(coefficient(fim, s))

        def ridge(lam):
            return np.linalg.solve(lam * g + j.T @ j / 4, j.T @ y / 4)

        def ngd(lam):  # S.126: G⁻¹Jᵀ(λI + Θ̄)⁻¹y/N with the structured G⁻¹Jᵀ/N
            v = np.linalg.solve(lam * np.eye(4) + theta_bar, y).reshape(1, 4)
            return to_host(net.flatten(fim.precondition(s, to_device(v, backend))))

        assert np.max(np.abs(ridge(1e-2) - ngd(1e-2))) < 1e-8 * np.max(np.abs(ngd(1e-2)))
        errs = [np.max(np.abs(ridge(lam) - ngd(0.0))) for lam in (1e-3, 1e-5)]
        assert errs[1] < 0.05 * errs[0]  # O(λ): the ridge-less limit is the NGD solution (Eq. 22, t → ∞)


def test_closed_forms(backend):
    lam = np.array([0.0, 0.5, 2.0])
    np.testing.assert_allclose(resolvent_factor(lam, 0.1, 3), [0.3, (1 - 0.95**3) / 0.5, (1 - 0.8**3) / 2.0])
    theta_bar = to_device(2.5 * np.eye(3), backend)
    f0, y = to_device(np.array([0.3, -0.1, 0.2]), backend), to_device(np.array([0.5, -0.5, 0.5]), backend)
    tr, _ = linearized_trajectory(theta_bar, f0, y, 0.2, 4)
    np.testing.assert_allclose(tr, isotropic_trajectory(f0, y, 2.5, 0.2, 4), atol=1e-14)


def test_cross_entropy_metric_is_s159(rng, backend):
    """Λ(σ) + ρ̃I: per sample diag(σ_n) − σ_nσ_nᵀ (S.158–S.159), output-major, against the literal one."""
    f = 3.0 * rng.standard_normal((5, 3))
    for rho_tilde in (0.0, 0.1):
        got = to_host(cross_entropy_metric(to_device(f, backend), rho_tilde))
        np.testing.assert_allclose(got, O.softmax_metric(f, rho_tilde), atol=1e-15)


# (name, ρ, options): exact (S.159) and layer-wise (S.164) with Σ = I, Eq. 19 and a dense Σ
CE_CASES = [
    ("exact", 0.0, {}),
    ("exact", 1e-2, {}),
    ("bd", 0.0, {}),
    ("bd", 1e-2, {}),
    ("tridiag", 0.0, {}),
    ("tridiag", 1e-2, {}),
    ("layer", 0.0, {"sigma": np.array([[2.0, 0.5, 0.2], [0.5, 1.0, 0.3], [0.2, 0.3, 1.5]])}),
    ("layer", 1e-2, {"sigma": np.array([[2.0, 0.5, 0.2], [0.5, 1.0, 0.3], [0.2, 0.3, 1.5]])}),
]


@pytest.mark.parametrize("name,rho,opts", CE_CASES, ids=[f"{n}-{r}" + ("-sigma" if o else "") for n, r, o in CE_CASES])
@pytest.mark.parametrize("rho_tilde", [0.1, 1.0])
def test_cross_entropy_direction_matches_oracle(name, rho, opts, rho_tilde, backend):
    """G⁻¹Jᵀ(σ − y)/N with G = Jᵀ(Σ ⊗ Λ̃)J/N + ρI (S.159, S.164) on every core backend, C = 3."""
    rng = np.random.default_rng(1)
    net = Network((6, 10, 9, 3), "tanh", 2.0, 0.2)
    p = net.init(0)
    x = unit_rows(rng, 4, 6)
    y = np.eye(3)[[0, 1, 2, 1]]
    f = O.outputs(O.Net.of(net), p, x)
    resid = (softmax(f) - y).T
    orc = O.oracle(name, net, p, x, rho, output_metric=O.softmax_metric(f, rho_tilde), **opts)
    want = orc.precondition(resid)
    pb = net.init(0, backend)
    s = net.signals(pb, to_device(x, backend))
    rb = to_device(resid, backend)
    got = to_host(net.flatten(get_fisher(name, net, rho, **opts).precondition(s, rb, cross_entropy_metric(s.f, rho_tilde))))
    assert np.max(np.abs(got - want)) < max(1e-9, 1e4 * O.EPS * orc.condition()) * np.max(np.abs(want))


def test_cross_entropy_training_decreases_loss(backend):
    ds = load_dataset("mnist", (0, 1, 2), n_train=30, n_test=30, seed=0)
    net = Network.build(784, 256, 3, 3, "relu", sigma_b2=0.5)
    for name in ("exact", "bd"):
        r = train(net, ds, TrainConfig(fim=name, steps=4, loss="ce"), backend)
        losses = [rec["train_loss"] for rec in r.records]
        assert r.ok and losses[-1] < 0.5 * losses[0]
    with pytest.raises(ConfigError, match="MSE loss only"):
        train(net, ds, TrainConfig(fim="kfac", steps=1, loss="ce"), B)


def test_divergence_stops_with_step(mnist20, backend):
    r = _run(mnist20, "gd", 512, steps=20, lr_scale=5.0, backend=backend)  # |1 − c| = 4 on the top mode
    assert r.status == "diverged" and f"step {r.records[-1]['step']}" in r.message
    assert len(r.records) < 21


def test_non_finite_stops_with_step(mnist20, backend):
    with np.errstate(all="ignore"):
        r = _run(mnist20, "gd", 64, steps=5, lr=1e300, backend=backend)
    assert r.status in ("non-finite", "diverged") and "step 1" in r.message


def test_bad_config(mnist20):  # no arrays: refused before training starts
    for kw, msg in (({"lr_scale": 0.0}, "lr-scale"), ({"steps": -1}, "steps"), ({"lr": -1.0}, "learning rate"),
                    ({"loss": "hinge"}, "unknown loss")):
        with pytest.raises(ConfigError, match=msg):
            _run(mnist20, "bd", 32, **kw)


def test_float32_training_stays_float32(mnist20, backend):
    """(θ_t staying float32 through train: tests/test_train_backends.py.)"""
    b32 = get_backend(backend.name, "float32")
    net = Network.build(784, 128, 3, 1, "relu", sigma_b2=0.5)
    seen = []
    r = train(net, mnist20, TrainConfig(fim="bd", steps=2), b32, progress=lambda t, rec: seen.append(rec))
    assert r.ok and len(seen) == 3
    p = net.init(0, b32)
    s = net.signals(p, to_device(mnist20.x_train, b32))
    for name in ("exact", "bd", "kfac"):
        d = get_fisher(name, net).direction(p, s.h[0], to_device(mnist20.y_train, b32), s)
        assert all(dtype_name_of(a) == "float32" for a in d)
        assert dtype_name_of(coefficient(get_fisher(name, net), s)) == "float32"


# ---- the set-up's Θ̄ pair (issue 17): one set of factorisations for x and x′ --------------------
@pytest.mark.parametrize("widths,act,sb2,name,rho", [
    ((6, 12, 10, 1), "relu", 0.5, "unit", 1e-2),  # damped: x and x′ columns in one solve per unit
    ((5, 10, 9, 2), "tanh", 0.3, "unit", 1e-2),  # C = 2
    ((6, 12, 10, 1), "relu", 0.5, "unit", 0.0),  # exact zero-damping mode: S.137 on x, solves on x′
    ((3, 8, 9, 1), "relu", 0.5, "unit", 0.0),  # first layer singular (M0 + 1 < N): pseudo-inverse mode
    ((6, 12, 10, 1), "relu", 0.5, "kfac", 1e-3),  # the base class's pair, another family
    ((6, 12, 10, 1), "relu", 0.5, "bd", 0.0),  # the base class's coefficient_pair: two coefficient calls
])
def test_setup_coefficients_match_oracle(widths, act, sb2, name, rho, backend):
    """train's (Θ̄(x, x), Θ̄(x′, x)) at θ_0 equal the explicit P×P twin J G⁻¹ Jᵀ / N."""
    from ngdref.train import coefficients

    rng = np.random.default_rng(0)
    net = Network(widths, act, 2.0, sb2)
    x, xt = unit_rows(rng, 5, widths[0]), unit_rows(rng, 3, widths[0])
    p = net.init(1, backend)
    s, st = net.signals(p, to_device(x, backend)), net.signals(p, to_device(xt, backend))
    fim = get_fisher(name, net, rho)
    c_train, c_test = coefficients(fim, s, st)
    orc = O.oracle(name, net, net.init(1), x, rho)
    tol = max(1e-9, 50 * O.EPS * orc.condition())
    for got, want in ((c_train, orc.theta_bar()), (c_test, orc.theta_bar(xt))):
        got = to_host(got)
        assert got.shape == want.shape
        assert np.max(np.abs(got - want)) / np.max(np.abs(want)) < tol
    alone, none = coefficients(fim, s, None)  # no test inputs: Θ̄(x, x) alone, checked against the oracle
    assert none is None
    got = to_host(alone)
    assert np.max(np.abs(got - orc.theta_bar())) / np.max(np.abs(orc.theta_bar())) < tol


def _unit_case(net, data_seed: int, init_seed: int, backend):
    """5 training and 3 test rows for ``net``, its signals on ``backend``, unit-wise NGD at ρ = 1e-2 and its
    explicit P×P twin with the twin's tolerance: (rng, x′, s, s′, fim, oracle, tol)."""
    rng = np.random.default_rng(data_seed)
    x, xt = unit_rows(rng, 5, net.widths[0]), unit_rows(rng, 3, net.widths[0])
    p = net.init(init_seed, backend)
    s, st = net.signals(p, to_device(x, backend)), net.signals(p, to_device(xt, backend))
    orc = O.oracle("unit", net, net.init(init_seed), x, 1e-2)
    return rng, xt, s, st, get_fisher("unit", net, 1e-2), orc, max(1e-9, 50 * O.EPS * orc.condition())


@pytest.mark.parametrize("c", [1, 2])
def test_unit_shared_eigenbasis_paths_match_oracle(c, backend, monkeypatch):
    """Unit-wise's shared-eigenbasis units (damped, alive on every sample, e_i constant over the samples: the
    last hidden layer's fully alive ReLU units) — the direction (_solve_shared) and Θ̄(x′, x)
    (_cross_term_shared, Eq. 11 with the blocks of Eq. 23) — against the explicit P×P twin, C = 1 and 2; a spy
    checks both paths really ran."""
    from ngdref.fisher.unitwise import UnitWiseFisher
    from ngdref.train import coefficients

    calls = []
    for name in ("_solve_shared", "_cross_term_shared"):
        original = getattr(UnitWiseFisher, name)

        def spy(self, *a, _name=name, _f=original, **k):
            calls.append(_name)
            return _f(self, *a, **k)

        monkeypatch.setattr(UnitWiseFisher, name, spy)
    rng, xt, s, st, fim, orc, tol = _unit_case(Network((6, 12, 10, c), "relu", 2.0, 0.5), 4, 1, backend)
    c_train, c_test = coefficients(fim, s, st)
    v = rng.standard_normal((c, 5))
    direction = np.concatenate([to_host(d).ravel() for d in fim.precondition(s, to_device(v, backend))])
    for got, want in ((to_host(c_train), orc.theta_bar()), (to_host(c_test), orc.theta_bar(xt)),
                      (direction, orc.precondition(v))):
        assert np.max(np.abs(got - want)) / np.max(np.abs(want)) < tol
    assert {"_solve_shared", "_cross_term_shared"} <= set(calls)


def test_unit_shared_eigenbasis_units_whose_sign_varies_match_oracle(backend, monkeypatch):
    """_cross_term_shared takes units with g = δ/√e constant over the samples by one (C·N′, c) × (c, N) GEMM and
    the others by (C·N′, c) × (c, N²) GEMMs: with φ(u) = |u| (φ′ = sign u) the last hidden layer's e_i is
    constant but g_i = sign(u_i) varies over the samples, so the second path runs (spy) — against the P×P twin."""
    from ngdref.activations import Activation
    from ngdref.backend import namespace_of
    from ngdref.fisher.unitwise import UnitWiseFisher
    from ngdref.train import coefficients

    absolute = Activation("abs", lambda u: namespace_of(u).abs(u), lambda u: namespace_of(u).sign(u))
    calls = []
    original = UnitWiseFisher._cross_term_shared_general

    def spy(self, lay, ids, *a):
        calls.append(int(ids.size))
        return original(self, lay, ids, *a)

    monkeypatch.setattr(UnitWiseFisher, "_cross_term_shared_general", spy)
    _, xt, s, st, fim, orc, tol = _unit_case(Network((6, 12, 10, 1), absolute, 2.0, 0.5), 8, 2, backend)
    c_train, c_test = coefficients(fim, s, st)
    for got, want in ((to_host(c_train), orc.theta_bar()), (to_host(c_test), orc.theta_bar(xt))):
        assert np.max(np.abs(got - want)) / np.max(np.abs(want)) < tol
    assert calls and calls[0] > 0
