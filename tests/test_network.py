"""Network (Eq. 1–2), signals (S.64–S.65), explicit Jacobians and the empirical NTK (Eq. 6, S.68).

Every test of an array computation runs on each core backend (the ``backend`` fixture) against a
host reference: central differences of the oracle's literal forward pass, Eq. 1 written out, the
explicit J. Host-only: the parameter count (no arrays) and the allocation peak of ``jacobian``
(tracemalloc sees host memory only)."""

from __future__ import annotations

import numpy as np
import pytest

from ngdref import ACTIVATIONS, Network, empirical_ntk, jacobian, jvp, layer_jacobian, to_device, to_host, unit_jacobian, vjp
from ngdref.errors import ConfigError, MemoryLimitError
from ngdref.memory import set_max_bytes
from ngdref.ntk import layer_ntks

from . import oracles as O
from .conftest import NETWORK_CASES, unit_rows

CASES = NETWORK_CASES


def _finite_difference_jacobian(net, params, x, eps=1e-6):
    """Central differences of the oracle's literal forward pass (Eq. 1), host float64."""
    onet, theta = O.Net.of(net), net.flatten(params)
    cols = []
    for i in range(theta.size):
        tp, tm = theta.copy(), theta.copy()
        tp[i] += eps
        tm[i] -= eps
        fp = O.outputs(onet, net.unflatten(tp), x).T.reshape(-1)
        fm = O.outputs(onet, net.unflatten(tm), x).T.reshape(-1)
        cols.append((fp - fm) / (2 * eps))
    return np.stack(cols, axis=1)


@pytest.mark.parametrize("widths,act,sb2", CASES)
def test_jacobian_matches_central_differences(widths, act, sb2, rng, backend):
    net = Network(widths, act, sigma_w2=1.7, sigma_b2=sb2)
    x = unit_rows(rng, 3, widths[0])
    j = to_host(jacobian(net, net.init(3, backend), to_device(x, backend)))
    assert j.shape == (widths[-1] * 3, net.n_params)
    j_fd = _finite_difference_jacobian(net, net.init(3), x)
    assert np.max(np.abs(j - j_fd)) < 1e-7 * max(1.0, np.max(np.abs(j)))


def test_parameter_count_and_bias_policy():
    with_bias = Network((4, 6, 3), "relu", sigma_b2=0.5)
    without = Network((4, 6, 3), "relu", sigma_b2=0.0)
    assert with_bias.n_params == 6 * 5 + 3 * 7
    assert without.n_params == 6 * 4 + 3 * 6
    assert with_bias.has_bias and not without.has_bias


def test_flatten_order_and_unit_blocks(rng, backend):
    net = Network((3, 4, 2), "tanh", sigma_b2=0.5)
    host = net.init(0)
    params = net.init(0, backend)
    theta = net.flatten(params)
    back = net.unflatten(theta)
    for p, q in zip(host, back):
        np.testing.assert_array_equal(p, to_host(q))
    # unit (layer 2, unit 1) = [W_{2,1,:}, b_{2,1}]
    np.testing.assert_array_equal(to_host(theta[net.unit_slice(2, 1)]), host[1][1])
    x = to_device(unit_rows(rng, 5, 3), backend)
    s = net.signals(params, x)
    j = to_host(jacobian(net, params, x, s))
    np.testing.assert_allclose(to_host(unit_jacobian(s, 2, 1)), j[:, net.unit_slice(2, 1)], rtol=0, atol=0)
    off = net.layer_offsets
    np.testing.assert_array_equal(to_host(layer_jacobian(s, 1)), j[:, off[0] : off[1]])


def test_eq1_forward_literal(rng, backend):
    """u_l = σ_w/√M_{l−1} W_l h_{l−1} + σ_b b_l, written out once by hand."""
    net = Network((3, 5, 2), "tanh", sigma_w2=2.0, sigma_b2=0.5)
    p = net.init(1)
    x = unit_rows(rng, 4, 3)
    w1, b1, w2, b2 = p[0][:, :3], p[0][:, 3], p[1][:, :5], p[1][:, 5]
    h1 = np.tanh(np.sqrt(2.0) / np.sqrt(3) * x @ w1.T + np.sqrt(0.5) * b1)
    f = np.sqrt(2.0) / np.sqrt(5) * h1 @ w2.T + np.sqrt(0.5) * b2
    np.testing.assert_allclose(to_host(net.output(net.init(1, backend), to_device(x, backend))), f, rtol=1e-13)


@pytest.mark.parametrize("widths,act,sb2", CASES)
def test_structured_ntk_equals_explicit(widths, act, sb2, rng, backend):
    net = Network(widths, act, sigma_w2=2.0, sigma_b2=sb2)
    params = net.init(7, backend)
    x = to_device(unit_rows(rng, 5, widths[0]), backend)
    xt = to_device(unit_rows(rng, 3, widths[0]), backend)
    for a, b in [(x, None), (xt, x)]:
        ks = to_host(empirical_ntk(net, params, a, b, method="structured"))
        ke = to_host(empirical_ntk(net, params, a, b, method="explicit"))
        assert np.max(np.abs(ks - ke)) <= 1e-12 * np.max(np.abs(ke))


def test_jvp_vjp_match_explicit(rng, backend):
    net = Network((4, 6, 5, 2), "tanh", sigma_b2=0.3)
    params = net.init(2, backend)
    x = to_device(unit_rows(rng, 5, 4), backend)
    s = net.signals(params, x)
    j = to_host(jacobian(net, params, x, s))
    v_params = net.init(9, backend)
    jv = to_host(jvp(s, v_params)).reshape(-1)
    np.testing.assert_allclose(jv, j @ to_host(net.flatten(v_params)), rtol=1e-12, atol=1e-12)
    v = rng.standard_normal((2, 5))
    g = vjp(s, to_device(v, backend))
    np.testing.assert_allclose(to_host(net.flatten(g)), j.T @ v.reshape(-1), rtol=1e-12, atol=1e-12)


def test_layer_kernels_sum_to_ntk(rng, backend):
    """Σ_l Θ_l (S.68) is the oracle's J Jᵀ/N, and the library's explicit J Jᵀ/N."""
    net = Network((4, 8, 8, 1), "relu", sigma_b2=0.5)
    p = net.init(0, backend)
    x = unit_rows(rng, 6, 4)
    xb = to_device(x, backend)
    total = sum(to_host(t) for t in layer_ntks(net.signals(p, xb)))
    np.testing.assert_allclose(total, to_host(empirical_ntk(net, p, xb, method="explicit")), rtol=1e-12)
    np.testing.assert_allclose(total, O.ntk(net, net.init(0), x, x), rtol=1e-12)


def test_same_seed_same_network_different_seed_differs(rng, backend):
    net = Network((4, 6, 1), "relu", sigma_b2=0.5)
    x = unit_rows(rng, 3, 4)
    a, b, c = net.init(5, backend), net.init(5, backend), net.init(6, backend)
    fa = to_host(net.output(a, to_device(x, backend)))
    fb = to_host(net.output(b, to_device(x, backend)))
    fc = to_host(net.output(c, to_device(x, backend)))
    np.testing.assert_array_equal(fa, fb)
    assert np.max(np.abs(fa - fc)) > 1e-3
    # the same seed gives the same parameters on every backend (drawn on the host)
    np.testing.assert_array_equal(to_host(net.flatten(a)), net.flatten(net.init(5)))


def test_float32_stays_float32(rng, backend):
    from ngdref.backend import get_backend

    b32 = get_backend(backend.name, "float32")
    net = Network((4, 6, 5, 2), "erf", sigma_b2=0.3)
    p = net.init(0, b32)
    x = to_device(unit_rows(rng, 3, 4), b32)
    s = net.signals(p, x)
    for arr in [*s.h, *s.a, *s.u, *s.delta, s.f, empirical_ntk(net, p, x)]:
        assert arr.dtype == b32.xp.float32


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_derivatives(name, backend):
    """φ′ is the central difference of φ, both on the backend; φ is the oracle's literal one."""
    from ngdref.activations import get_activation

    act = get_activation(name, shift=0.7)
    u = np.linspace(-2.3, 2.1, 41) + 1e-3  # avoid kinks exactly
    eps = 1e-6
    phi = lambda v: to_host(act.phi(to_device(v, backend)))  # noqa: E731
    np.testing.assert_allclose(to_host(act.dphi(to_device(u, backend))), (phi(u + eps) - phi(u - eps)) / (2 * eps), atol=1e-7)
    np.testing.assert_allclose(phi(u), O._activation(name, 0.7)[0](u), rtol=1e-15, atol=0)


def test_bad_shapes_and_config(backend):
    with pytest.raises(ConfigError, match="depth"):
        Network.build(4, 8, 1)
    with pytest.raises(ConfigError, match="unknown activation"):
        Network((4, 5, 1), "softsign")
    net = Network((4, 5, 1), "relu")
    with pytest.raises(ConfigError, match="M0 = 4"):
        net.output(net.init(0, backend), to_device(np.ones((2, 3)), backend))
    with pytest.raises(ConfigError, match="sigma_b2"):
        Network((4, 5, 1), "relu", sigma_b2=-1)


def test_memory_guard_refuses_before_allocating(rng, backend):
    net = Network((4, 64, 64, 1), "relu")
    p = net.init(0, backend)
    x = to_device(unit_rows(rng, 10, 4), backend)
    set_max_bytes(1000)
    try:
        with pytest.raises(MemoryLimitError, match="explicit Jacobian"):
            jacobian(net, p, x)
        empirical_ntk(net, p, x)  # the structured path is unaffected
    finally:
        set_max_bytes(None)


def _jacobian_module(monkeypatch, fill_block: int):
    import importlib

    jac = importlib.import_module("ngdref.jacobian")  # the package re-exports the function under this name
    monkeypatch.setattr(jac, "_FILL_BLOCK", fill_block)


def test_jacobian_peak_is_one_jacobian_and_equals_the_layer_blocks(rng, monkeypatch):
    """J is filled in place: its allocation peak is J plus one small block (the memory check counts J once).
    NumPy only: tracemalloc sees host allocations, not a device's (the blocked fill on every backend: below)."""
    import tracemalloc

    _jacobian_module(monkeypatch, 1 << 12)
    net = Network((30, 200, 150, 2), "relu", 2.0, 0.3)
    p = net.init(0)
    x = unit_rows(rng, 12, 30)
    s = net.signals(p, x)
    tracemalloc.start()
    j = jacobian(net, p, x, s)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1.1 * j.nbytes
    np.testing.assert_array_equal(j, np.concatenate([layer_jacobian(s, l) for l in (1, 2, 3)], axis=1))


def test_jacobian_filled_in_blocks_is_the_oracles(rng, monkeypatch, backend):
    """J filled a few units at a time (short last blocks included) on the backend is the oracle's
    literal chain rule, and the concatenated layer blocks."""
    _jacobian_module(monkeypatch, 250)  # C·N·fan = 60, 100, 80 a unit: blocks of 4 + 4 + 1, 2 + 2 + 2 + 1, 2
    net = Network((5, 9, 7, 2), "tanh", 2.0, 0.3)
    x = unit_rows(rng, 5, 5)
    p, xb = net.init(0, backend), to_device(x, backend)
    s = net.signals(p, xb)
    j = to_host(jacobian(net, p, xb, s))
    np.testing.assert_allclose(j, O.jacobian(O.Net.of(net), net.init(0), x), rtol=1e-13, atol=1e-15)
    np.testing.assert_array_equal(j, np.concatenate([to_host(layer_jacobian(s, l)) for l in (1, 2, 3)], axis=1))


def test_init_stream_does_not_depend_on_the_draw_block(monkeypatch, backend):
    """θ_0 is W_l (row-major) then b_l per layer from default_rng(seed), however init blocks the draws."""
    import importlib

    netmod = importlib.import_module("ngdref.network")
    net = Network((7, 50, 30, 2), "relu", 2.0, 0.5)
    rng = np.random.default_rng(3)
    ref = []
    for l in (1, 2, 3):
        w = rng.standard_normal((net.widths[l], net.widths[l - 1]))
        ref.append(np.concatenate([w, rng.standard_normal((net.widths[l], 1))], axis=1))
    for block in (1 << 20, 13):
        monkeypatch.setattr(netmod, "_INIT_BLOCK", block)
        assert all(np.array_equal(to_host(p), r) for p, r in zip(net.init(3, backend), ref))
    no_bias = Network((7, 5, 4, 1), "relu", 2.0, 0.0)  # b_l still drawn (and dropped): same W as with biases
    with_bias = Network((7, 5, 4, 1), "relu", 2.0, 0.5)
    assert all(np.array_equal(p, q[:, :-1]) for p, q in zip(no_bias.init(1), with_bias.init(1)))


# ---- weights from other frameworks (issue 15) ------------------------------------------------------------
def _standard_arrays(rng, widths, bias=True):
    """Per-layer (out × in) weights and biases as a PyTorch/JAX model holds them (standard parameterisation)."""
    ws = [rng.standard_normal((widths[l], widths[l - 1])) / np.sqrt(widths[l - 1]) for l in range(1, len(widths))]
    bs = [0.1 * rng.standard_normal(widths[l]) for l in range(1, len(widths))] if bias else None
    return ws, bs


@pytest.mark.parametrize("bias", [True, False])
def test_standard_parameterisation_forward_written_out(bias, rng, backend):
    """A standard-parameterised net, u = W′h + b′, written out by hand (tanh hidden layers, linear output),
    equals ngdref's forward after ``from_arrays(..., parameterization="standard")``, for σ_w² = 1.7, σ_b² = 0.3."""
    widths = (4, 7, 5, 2)
    ws, bs = _standard_arrays(rng, widths, bias)
    x = rng.standard_normal((6, 4))
    h = x
    for l, w in enumerate(ws):
        u = h @ w.T + (bs[l] if bias else 0.0)
        h = np.tanh(u) if l < len(ws) - 1 else u
    net, params = Network.from_arrays(ws, bs, parameterization="standard", activation="tanh", sigma_w2=1.7,
                                      sigma_b2=0.3 if bias else None, backend=backend)
    assert net.widths == widths and net.has_bias == bias
    np.testing.assert_allclose(to_host(net.output(params, to_device(x, backend))), h, rtol=1e-12, atol=1e-14)
    # the documented conversion W = √M_{l−1} W′/σ_w, b = b′/σ_b
    np.testing.assert_allclose(to_host(params[1])[:, :7], np.sqrt(7) * ws[1] / np.sqrt(1.7), rtol=1e-14)
    if bias:
        np.testing.assert_allclose(to_host(params[1])[:, 7], bs[1] / np.sqrt(0.3), rtol=1e-14)


@pytest.mark.parametrize("sb2", [0.0, 0.5])
def test_from_arrays_to_arrays_round_trip(sb2, backend):
    """to_arrays(from_arrays(...)) returns the arrays in both parameterisations; from_arrays(to_arrays(θ))
    is θ (the same forward, bit for bit in the NTK parameterisation)."""
    net = Network((5, 6, 4, 3), "relu", 2.0, sb2)
    params = net.init(3, backend)
    for par in ("ntk", "standard"):
        ws, bs = net.to_arrays(params, par)
        assert (bs is None) == (sb2 == 0) and all(isinstance(w, np.ndarray) for w in ws)
        net2, params2 = Network.from_arrays(ws, bs, par, "relu", sigma_w2=2.0, sigma_b2=sb2 if sb2 else None,
                                            backend=backend)
        assert net2 == net
        for p, q in zip(params, params2):
            np.testing.assert_allclose(to_host(q), to_host(p), rtol=1e-15 if par == "standard" else 0, atol=0)
        ws2, bs2 = net2.to_arrays(params2, par)
        for a, b in zip(ws + (bs or []), ws2 + (bs2 or [])):
            np.testing.assert_allclose(a, b, rtol=1e-15)
    w_ntk, _ = net.to_arrays(params)
    w_std, _ = net.to_arrays(params, "standard")
    np.testing.assert_allclose(w_std[0], np.sqrt(2.0) / np.sqrt(5) * w_ntk[0], rtol=1e-15)


def test_from_arrays_errors():
    ws = [np.ones((3, 2)), np.ones((1, 3))]
    with pytest.raises(ConfigError, match="parameterization"):
        Network.from_arrays(ws, parameterization="mup")
    with pytest.raises(ConfigError, match="columns do not match"):
        Network.from_arrays([np.ones((3, 2)), np.ones((1, 4))])
    with pytest.raises(ConfigError, match="L >= 2"):
        Network.from_arrays([np.ones((3, 2))])
    with pytest.raises(ConfigError, match="sigma_b2 > 0"):
        Network.from_arrays(ws, [np.ones(3), np.ones(1)])
    with pytest.raises(ConfigError, match="expected \\(1,\\)"):
        Network.from_arrays(ws, [np.ones(3), np.ones(2)], sigma_b2=0.5)
    with pytest.raises(ConfigError, match="nonzero biases"):
        Network.from_arrays(ws, [np.ones(3), np.ones(1)], sigma_b2=0.0)
    net, params = Network.from_arrays(ws, [np.zeros(3), np.zeros(1)], sigma_b2=0.0)
    assert not net.has_bias and params[0].shape == (3, 2)
    with pytest.raises(ConfigError, match="W_2 has non-finite"):
        Network.from_arrays([np.ones((3, 2)), np.array([[1.0, np.nan, 1.0]])])
    with pytest.raises(ConfigError, match="b_1 has non-finite"):
        Network.from_arrays(ws, [np.array([0.0, np.inf, 0.0]), np.zeros(1)], sigma_b2=0.5)
    net, params = Network.from_arrays(ws, None, sigma_b2=0.5)  # biases=None with σ_b² > 0: zero bias columns
    assert net.has_bias and params[0].shape == (3, 3) and not np.any(params[0][:, -1])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("c", [1, 3])
def test_signals_and_output_from_one_pass(rng, backend, dtype, c):
    """signals_and_output(θ, x, x′) equals (signals(θ, x), output(θ, x′)) computed apart: every h, a, u, δ
    and f to the GEMM's rounding (1e-13 in float64, 1e-5 in float32), in the network's dtype; a wrong
    input width for x′ is refused like one for x."""
    from ngdref.backend import Backend, dtype_name_of

    be = Backend(backend.name, backend.xp, dtype)
    net = Network((7, 12, 9, c), "relu", 2.0, 0.3)
    p = net.init(1, be)
    x, xt = to_device(unit_rows(rng, 6, 7), be), to_device(unit_rows(rng, 4, 7), be)
    s, ft = net.signals_and_output(p, x, xt)
    want, want_t = net.signals(p, x), net.output(p, xt)
    tol = 1e-13 if dtype == "float64" else 1e-5
    pairs = [(s.f, want.f), (ft, want_t), *zip(s.h, want.h), *zip(s.a, want.a), *zip(s.u, want.u),
             *zip(s.delta, want.delta)]
    for got, ref in pairs:
        g, r = to_host(got), to_host(ref)
        assert g.shape == r.shape and dtype_name_of(got) == dtype
        assert np.max(np.abs(g - r)) <= tol * max(1.0, np.max(np.abs(r)))
    with pytest.raises(ConfigError):
        net.signals_and_output(p, x, to_device(unit_rows(rng, 4, 5), be))
