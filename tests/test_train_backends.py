"""Training's pieces on every core backend (numpy, strict, cupy when present): the NGD step (Eq. 7),
the linearised-model step (S.23–S.24), the losses (Eq. 3, Appendix D), the closed forms (Eq. 10,
22, 24), the observers' host transfers, and ``train`` end to end against NumPy float64 and in float32.

The two transfer-counting tests run on strict only: they count its one device → host exit
(``_ngdref_host``), which NumPy does not have. ``train`` against NumPy float64 takes
``device_backend`` (NumPy is the reference there)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import ngdref.train as T
from ngdref import Network, get_backend, to_device, to_host
from ngdref.backend import dtype_name_of
from ngdref.data import load_dataset
from ngdref.dynamics import isotropic_trajectory, linearized_trajectory, parameter_displacement
from ngdref.fisher import get_fisher
from ngdref.losses import CrossEntropyLoss, MSELoss, accuracy, cross_entropy_loss, get_loss, mse_loss, softmax
from ngdref.network import function_vector
from ngdref.train import (DistanceRecorder, LinearizedModel, LossRecorder, Step, TheoryRecorder, TrainConfig,
                          fetch, linearized_output, linearized_step, ngd_step, squared_distance, train)

from . import oracles as O
from .conftest import unit_rows

NP = get_backend("numpy")


def _tiny(c: int = 1):
    """A tanh network with biases small enough for the P×P oracles, 5 unit-norm inputs."""
    net = Network((6, 10, 9, c), "tanh", 2.0, 0.3)
    x = unit_rows(np.random.default_rng(3), 5, 6)
    return net, x


def _flat(params) -> np.ndarray:
    return np.concatenate([np.asarray(to_host(p), dtype=np.float64).reshape(-1) for p in params])


def _rel(got, want) -> float:
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


# ---- the NGD step (Eq. 7) --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["exact", "bd", "kfac", "unit"])
def test_ngd_step_is_eq7_and_keeps_or_overwrites_theta(backend, name):
    """θ − η G⁻¹Jᵀ(f − y)/N with the oracle's G; in_place=False leaves θ_t alone, True overwrites it."""
    net, x = _tiny()
    y = np.random.default_rng(4).standard_normal((5, 1))
    eta = 0.3
    p = net.init(0, backend)
    s = net.signals(p, to_device(x, backend))
    fim = get_fisher(name, net, 1e-3)
    want = _flat(p) - eta * O.oracle(name, net, net.init(0), x, 1e-3).direction(y)
    before = _flat(p)
    residual = MSELoss().residual(s.f, to_device(y, backend))

    new = ngd_step(fim, p, s, residual, eta)
    assert all(a is not b for a, b in zip(new, p))
    assert np.array_equal(_flat(p), before)  # θ_t kept
    assert _rel(_flat(new), want) < 1e-9

    same = ngd_step(fim, p, s, residual, eta, in_place=True)
    assert same is p and np.array_equal(_flat(p), _flat(new))


@pytest.mark.parametrize("name", ["exact", "bd"])
def test_ngd_step_cross_entropy_uses_the_s159_metric(backend, name):
    """θ − η (JᵀΛ̃J/N + ρI)⁻¹Jᵀ(σ − y)/N (S.159), C = 3."""
    net, x = _tiny(3)
    y = np.eye(3)[[0, 1, 2, 1, 0]]
    loss = CrossEntropyLoss(rho_tilde=0.1)
    p = net.init(0, backend)
    s = net.signals(p, to_device(x, backend))
    yb = to_device(y, backend)
    new = ngd_step(get_fisher(name, net, 1e-2), p, s, loss.residual(s.f, yb), 0.5, loss.output_metric(s.f))
    f = O.outputs(O.Net.of(net), net.init(0), x)
    orc = O.oracle(name, net, net.init(0), x, 1e-2, output_metric=O.softmax_metric(f, 0.1))
    want = _flat(p) - 0.5 * orc.precondition((softmax(f) - y).T)
    assert _rel(_flat(new), want) < 1e-9


def test_linearized_step_is_s24(backend):
    """f^lin = f_0 + J_0Δθ (S.23) and Δθ − η G_0⁻¹J_0ᵀ(f^lin − y)/N (S.24), with G_0, J_0 of θ_0."""
    net, x = _tiny()
    rng = np.random.default_rng(5)
    y = rng.standard_normal((5, 1))
    p0 = net.init(0)
    orc = O.oracle("bd", net, p0, x, 1e-3)
    delta_h = [0.01 * rng.standard_normal(a.shape) for a in p0]
    f_lin = O.outputs(orc.net, p0, x).T.reshape(-1) + orc.j @ _flat(delta_h)
    want = _flat(delta_h) - 0.2 * orc.precondition(f_lin - y.T.reshape(-1))

    s0 = net.signals(net.init(0, backend), to_device(x, backend))
    delta = [to_device(d, backend) for d in delta_h]
    assert _rel(to_host(function_vector(linearized_output(s0, delta))), f_lin) < 1e-12
    new = linearized_step(get_fisher("bd", net, 1e-3), s0, delta, to_device(y, backend), 0.2)
    assert _rel(_flat(new), want) < 1e-9
    assert np.array_equal(_flat(delta), _flat(delta_h))  # not in place unless asked


# ---- losses (Eq. 3, Appendix D) --------------------------------------------------------------


@pytest.mark.parametrize("c", [1, 3])
def test_losses_on_backend(backend, c):
    rng = np.random.default_rng(6)
    f = 2.0 * rng.standard_normal((7, c))
    y = 0.5 * np.sign(rng.standard_normal((7, 1))) if c == 1 else np.eye(c)[rng.integers(0, c, 7)]
    fb, yb = to_device(f, backend), to_device(y, backend)
    sig = np.exp(f) / np.sum(np.exp(f), axis=1, keepdims=True)
    want_ce = -np.sum(y * np.log(sig)) / 7
    want_acc = np.mean((f[:, 0] > 0) == (y[:, 0] > 0)) if c == 1 else np.mean(f.argmax(1) == y.argmax(1))
    assert mse_loss(fb, yb) == pytest.approx(np.sum((f - y) ** 2) / 14, rel=1e-14)
    assert get_loss("mse").value(fb, yb) == mse_loss(fb, yb)
    assert cross_entropy_loss(fb, yb) == pytest.approx(want_ce, rel=1e-13)
    assert get_loss("ce", 0.5).value(fb, yb) == cross_entropy_loss(fb, yb)
    assert accuracy(fb, yb) == pytest.approx(want_acc, abs=0)
    np.testing.assert_allclose(to_host(MSELoss().residual(fb, yb)), (f - y).T, rtol=0, atol=0)
    np.testing.assert_allclose(to_host(CrossEntropyLoss().residual(fb, yb)), (sig - y).T, atol=1e-15)
    assert MSELoss().output_metric(fb) is None
    np.testing.assert_allclose(to_host(CrossEntropyLoss(rho_tilde=0.1).output_metric(fb)),
                               O.softmax_metric(f, 0.1), atol=1e-15)
    assert math.isnan(accuracy(fb[:0, :], yb[:0, :]))


# ---- closed forms (Eq. 10, 22, 24) ----------------------------------------------------------


def test_closed_forms_take_backend_arrays(backend):
    """Eq. 10 / 24 from device arrays equal the NumPy ones; Eq. 22 is G_0⁻¹J_0ᵀ/N Θ̄⁻¹(I − (I − ηΘ̄)^t)(y − f_0)
    with the oracle's G_0 (bd, ρ = 1e-3)."""
    net, x = _tiny()
    rng = np.random.default_rng(7)
    y = rng.standard_normal((5, 1))
    orc = O.oracle("bd", net, net.init(0), x, 1e-3)
    tb = orc.theta_bar()
    f0 = O.outputs(orc.net, orc.params, x).reshape(-1)
    dev = {k: to_device(v, backend) for k, v in (("tb", tb), ("f0", f0), ("y", y.reshape(-1)))}
    tr_np, te_np = linearized_trajectory(tb, f0, y.reshape(-1), 0.4, 3, tb[:2], f0[:2])
    tr, te = linearized_trajectory(dev["tb"], dev["f0"], dev["y"], 0.4, 3, dev["tb"][:2, :], dev["f0"][:2])
    assert np.array_equal(tr, tr_np) and np.array_equal(te, te_np)
    assert np.array_equal(isotropic_trajectory(dev["f0"], dev["y"], 2.0, 0.4, 3),
                          isotropic_trajectory(f0, y.reshape(-1), 2.0, 0.4, 3))
    s0 = net.signals(net.init(0, backend), to_device(x, backend))
    got = parameter_displacement(get_fisher("bd", net, 1e-3), s0, dev["tb"], dev["f0"], dev["y"], 0.4, 3)
    lam, vec = np.linalg.eigh(tb)
    v = vec @ ((1 - (1 - 0.4 * lam) ** 3) / lam * (vec.T @ (y.reshape(-1) - f0)))
    assert _rel(_flat(got), orc.precondition(v)) < 1e-9


# ---- observers and their host transfers -----------------------------------------------------


def test_squared_distance_clamps_the_last_block(backend, monkeypatch):
    """Blocks of rows that do not divide a layer: the array API refuses out-of-bounds slices."""
    monkeypatch.setattr(T, "_DISTANCE_BLOCK", 12)  # (10, 3) layers: blocks of 4 rows, the last of 2
    rng = np.random.default_rng(8)
    a, b, c = ([rng.standard_normal((10, 3)), rng.standard_normal((7, 5))] for _ in range(3))
    dev = [[to_device(m, backend) for m in ms] for ms in (a, b, c)]
    want = sum(np.sum((p - q - r) ** 2) for p, q, r in zip(a, b, c))
    assert float(to_host(squared_distance(*dev))) == pytest.approx(want, rel=1e-13)
    assert float(to_host(squared_distance(dev[0], dev[1]))) == pytest.approx(
        sum(np.sum((p - q) ** 2) for p, q in zip(a, b)), rel=1e-13)


def test_distances_do_not_depend_on_the_thread_count(monkeypatch):
    """``squared_distance`` and ``factored_distances`` add their blocks' partial sums in block order whatever
    the number of pool threads that make them: bit for bit the same on 1, 2 and 3 threads (many blocks, uneven
    groups), and equal to the plain sums to 1e-13."""
    from ngdref import threads

    monkeypatch.setattr(T, "_DISTANCE_BLOCK", 12)
    monkeypatch.setattr(T, "_UPDATE_BLOCK", 15)
    rng = np.random.default_rng(9)
    a, b = ([rng.standard_normal((37, 3)), rng.standard_normal((23, 5))] for _ in range(2))
    factors = [(rng.standard_normal((m.shape[0], 2)), rng.standard_normal((2, m.shape[1]))) for m in a]
    results = []
    for n_threads in (1, 2, 3):
        monkeypatch.setattr(threads, "THREADS", n_threads)
        results.append([float(v) for v in (squared_distance(a, b), *T.factored_distances(a, b, factors))])
    assert results[0] == results[1] == results[2]
    deltas = [l @ r for l, r in factors]
    want = [sum(np.sum((p - q) ** 2) for p, q in zip(a, b)),
            sum(np.sum((p - q - d) ** 2) for p, q, d in zip(a, b, deltas)), sum(np.sum(d**2) for d in deltas)]
    assert results[0] == pytest.approx(want, rel=1e-13)


def test_fetch_is_one_transfer(backend, monkeypatch):
    calls = []
    monkeypatch.setattr(T, "to_host", lambda a: calls.append(a) or to_host(a))
    xp = backend.xp
    a, b, c = xp.asarray(1.5, dtype=xp.float64), xp.ones((2, 3), dtype=xp.float64), xp.zeros((4,), dtype=xp.float64)
    ha, hb, hc = fetch(a, b, c)
    assert len(calls) == 1
    assert ha.shape == () and float(ha) == 1.5 and np.array_equal(hb, np.ones((2, 3))) and hc.shape == (4,)


def _counting_strict(monkeypatch) -> list:
    """Count every device → host copy of the strict backend (its only exit is ``_ngdref_host``)."""
    xps = get_backend("strict").xp
    array_type = type(xps.asarray(0.0))
    host, calls = array_type._ngdref_host, []
    monkeypatch.setattr(array_type, "_ngdref_host", lambda self, *a, **k: calls.append(1) or host(self, *a, **k))
    return calls


def test_each_observer_copies_to_the_host_once_per_step(monkeypatch):
    strict = get_backend("strict")
    net, x = _tiny()
    y = to_device(np.random.default_rng(9).standard_normal((5, 1)), strict)
    p0 = net.init(0, strict)
    s0 = net.signals(p0, to_device(x, strict))
    theory = np.zeros((2, 5))
    step = Step(0, p0, s0, s0.f)
    observers = [LossRecorder(MSELoss(), y, y), TheoryRecorder(theory, theory, np.zeros(5), theory, np.zeros(5)),
                 DistanceRecorder(p0), LinearizedModel(get_fisher("bd", net, 1e-3), s0, p0, y)]
    calls = _counting_strict(monkeypatch)
    for obs in observers:
        calls.clear()
        assert obs.observe(step)
        assert len(calls) == 1, type(obs).__name__


def test_train_step_costs_one_transfer_per_observer(monkeypatch):
    """bd's structured step runs on the device; the four observers of an MSE run with --linearized
    (losses, theory, distance, linearised model) copy to the host once each per step."""
    ds = load_dataset("gaussian", (0, 1), n_train=10, n_test=6, seed=0, input_dim=8)
    net = Network.build(8, 16, 3, 1, "relu", sigma_b2=0.5)
    calls = _counting_strict(monkeypatch)
    seen = []
    train(net, ds, TrainConfig(fim="bd", steps=3, linearized=True), get_backend("strict"),
          progress=lambda t, rec: seen.append(len(calls)))
    assert np.diff(seen).tolist() == [4, 4, 4]


# ---- train end to end ------------------------------------------------------------------------

CASES = {  # name: (loss, classes, n_test, linearized, fim)
    "mse": ("mse", (0, 1), 8, False, "bd"),
    "mse-no-test": ("mse", (0, 1), 0, False, "unit"),
    "mse-linearized": ("mse", (0, 1), 8, True, "kfac"),
    "mse-linearized-no-test": ("mse", (0, 1), 0, True, "exact"),
    "ce": ("ce", (0, 1, 2), 9, False, "exact"),
    "ce-no-test": ("ce", (0, 1, 2), 0, False, "bd"),
}


def _train_case(case: str, backend, width: int = 32, steps: int = 3):
    loss, classes, n_test, linearized, fim = CASES[case]
    ds = load_dataset("gaussian", classes, n_train=12, n_test=n_test, seed=1, input_dim=8)
    net = Network.build(8, width, 3, len(classes) if loss == "ce" else 1, "relu", sigma_b2=0.5)
    lr = 0.01 if fim == "kfac" else None  # K-FAC with M0 = 8 < N = 12: no α (S.109), so η is given
    config = TrainConfig(fim=fim, steps=steps, loss=loss, linearized=linearized, lr=lr)
    return train(net, ds, config, backend, seed=2)


def _assert_close(got, want, path=""):
    """Same keys; numbers equal to 1e-10 relative (absolute 1e-12 for numbers near zero)."""
    if isinstance(want, dict):
        assert list(got) == list(want), path
        for k in want:
            if k not in ("seconds", "setup_seconds"):
                _assert_close(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, float) and not math.isnan(want):
        assert abs(got - want) <= 1e-10 * max(abs(got), abs(want)) + 1e-12, (path, got, want)
    elif isinstance(want, float):
        assert math.isnan(got), path
    else:
        assert got == want, path


@pytest.mark.parametrize("case", list(CASES))
def test_train_on_backend_matches_numpy(device_backend, case, monkeypatch):
    """Every record and the summary agree to 1e-10. NumPy's θ update goes by the row blocks the other backends
    use (its BLAS β = 1 GEMM, tested in test_backend, rounds the last bit differently): unit-wise at its default
    ρ = 1e-12 leaves the linear regime on this tiny net (‖θ_1 − θ_0‖ = 228 against ‖θ_0‖ = 38, outputs made by
    cancellation), where the loss at θ_1 would carry that last bit to 1.4e-8."""
    import ngdref.backend

    monkeypatch.setattr(ngdref.backend, "_blas_gemm_into", lambda *args: False)
    got, want = _train_case(case, device_backend), _train_case(case, NP)
    assert got.status == want.status == "ok", got.message
    assert len(got.records) == len(want.records) == 4
    for g, w in zip(got.records, want.records):
        _assert_close(g, w)
    _assert_close(got.summary, want.summary)
    if CASES[case][0] == "mse":
        assert "eq22_relative_error" in got.summary
        assert ("linearized_model_train_loss" in got.records[0]) == CASES[case][3]


@pytest.mark.parametrize("case", ["mse-linearized", "ce"])
def test_float32_end_to_end(backend, case, monkeypatch):
    """float32 throughout: θ_t and the linearised model's Δθ stay float32, every record is finite."""
    dtypes, step = [], T.ngd_step

    def spy(*args, **kwargs):  # linearized_step goes through ngd_step too
        out = step(*args, **kwargs)
        dtypes.extend(dtype_name_of(a) for a in out)
        return out

    monkeypatch.setattr(T, "ngd_step", spy)
    b32 = get_backend(backend.name, "float32")
    r = _train_case(case, b32, width=64)
    assert r.ok, r.message
    assert dtypes and set(dtypes) == {"float32"}
    assert len(dtypes) == 3 * 3 * (2 if CASES[case][3] else 1)  # 3 steps × 3 layers (× NGD and linearised)
    for rec in r.records:
        assert all(math.isfinite(v) for v in rec.values()), rec
