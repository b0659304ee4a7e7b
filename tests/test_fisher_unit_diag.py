"""Unit-wise (Eq. 23), diagonal and quasi-diagonal (Fig. 3) Fisher approximations.

Structured path on every core backend vs the explicit P×P oracles of tests/oracles.py, the
exact zero-damping identity S.137, a per-unit least-squares oracle at N > 64 (the blocked
solve), Ollivier's update written out, the isotropy of unit-wise NGD against the analytic α
(S.128) and the Fig. 3 comparison of the entry-wise FIMs with the NTK.

Every test of a structured computation takes the ``backend`` fixture (parameters and inputs built
there, compared on the host). NumPy-only: the registry names and the analytic α (no arrays).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from ngdref import Network, get_backend, to_device, to_host
from ngdref.backend import dtype_name_of
from ngdref.diagnostics import isotropy
from ngdref.fisher import DiagonalFisher, QuasiDiagonalFisher, UnitWiseFisher, get_fisher
from ngdref.fisher.unitwise import LAPACK_BLOCK, _spd_solve, unit_alpha

from . import oracles as O
from .conftest import theta_bar, unit_rows

NAMES = ["unit", "diag", "quasi-diag"]
# tiny nets, N = 5 samples (fan-in >= N except the last config, whose first layer has
# M0 + 1 = 4 < N and takes the unit-wise pseudo-inverse fallback); depths 2-4, C = 1, 2
CONFIGS = [
    ((6, 10, 1), "tanh", 0.0),
    ((6, 12, 10, 1), "relu", 0.5),
    ((5, 10, 9, 2), "tanh", 0.3),
    ((6, 9, 10, 9, 1), "erf", 0.2),
    ((7, 8, 9, 2), "relu", 0.4),
    ((3, 8, 9, 1), "relu", 0.5),
]


def _setup(widths, act, sb2, seed=0, n=5, n_test=3):
    rng = np.random.default_rng(seed)
    net = Network(widths, act, 2.0, sb2)
    x, xt = unit_rows(rng, n, widths[0]), unit_rows(rng, n_test, widths[0])
    return net, net.init(seed + 1), x, xt, rng.standard_normal((n, widths[-1]))


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


def _tolerance(orc: O.Oracle) -> float:
    """1e-9, widened to 50·eps·κ(G) for an ill-conditioned G.

    The oracle inverts (or pseudo-inverts) the explicit P×P matrix G, whose accuracy is
    ~eps·κ(G); the structured paths work with N×N systems (unit-wise: κ(K_SS), not κ(G);
    e.g. the erf net has units with tiny δ, κ(G) ~ 1e8, and the oracle is the less
    accurate side).
    """
    return max(1e-9, 50 * O.EPS * orc.condition())


def _on(backend, *arrays):
    return [a if backend is None else to_device(a, backend) for a in arrays]


def _structured(fim, net, x, xt, y, backend=None, seed=1):
    """Δθ (flat), Θ̄(x, x), Θ̄(x′, x) of the structured path on ``backend`` (host arrays back)."""
    p = net.init(seed, backend)
    xb, xtb, yb = _on(backend, x, xt, y)
    s, st = net.signals(p, xb), net.signals(p, xtb)
    d = to_host(net.flatten(fim.direction(p, xb, yb, s)))
    return d, to_host(theta_bar(fim, s)), to_host(theta_bar(fim, s, st))


@functools.lru_cache(maxsize=None)
def _oracle_case(widths, act, sb2, name, rho):
    """(Δθ, Θ̄(x, x), Θ̄(x′, x), tol) of the oracle, once per case (shared by the backends)."""
    net, p, x, xt, y = _setup(widths, act, sb2)
    orc = O.oracle(name, net, p, x, rho)
    return orc.direction(y), orc.theta_bar(), orc.theta_bar(xt), _tolerance(orc)


# ---- structured path vs explicit oracle ----------------------------------------------------
@pytest.mark.parametrize("widths,act,sb2", CONFIGS)
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("rho", [0.0, 1e-2])
def test_structured_matches_explicit_oracle(widths, act, sb2, name, rho, backend):
    net, _, x, xt, y = _setup(widths, act, sb2)
    fim = get_fisher(name, net, rho)
    d, c_train, c_test = _structured(fim, net, x, xt, y, backend)
    want_d, want_train, want_test, tol = _oracle_case(widths, act, sb2, name, rho)
    assert _rel(d, want_d) < tol
    assert _rel(c_train, want_train) < tol
    assert _rel(c_test, want_test) < tol
    if name == "unit":  # the general formula on x′ = x (no closed form)
        s = net.signals(net.init(1, backend), _on(backend, x)[0])
        assert _rel(to_host(theta_bar(fim, s, s)), want_train) < tol


def test_registry_names():  # no arrays
    net = Network((4, 6, 1), "relu", 2.0, 0.1)
    assert isinstance(get_fisher("unit", net), UnitWiseFisher)
    assert isinstance(get_fisher("diag", net), DiagonalFisher)
    assert isinstance(get_fisher("quasi_diag", net), QuasiDiagonalFisher)


# ---- unit-wise: the exact zero-damping limit (S.132–S.137) ------------------------------------
def _dead_relu_setup():
    """ReLU net whose units are dead on some, all or none of the samples (biases pull u_l apart)."""
    net = Network((8, 12, 10, 1), "relu", 2.0, 1.5)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 8))
    return net, net.init(4), x, rng.standard_normal((3, 8)), rng.standard_normal((6, 1))


def test_unit_wise_relu_dead_units_satisfy_s137_exactly(backend):
    net, p, x, xt, y = _dead_relu_setup()
    pb = net.init(4, backend)  # = p
    xb, xtb, yb = _on(backend, x, xt, y)
    s = net.signals(pb, xb)
    hidden = np.concatenate([to_host(d)[0] for d in s.delta[:-1]], axis=1)  # (N, Σ M_l)
    alive = hidden != 0
    per_unit = alive.sum(axis=0)
    assert np.any(per_unit == 0) and np.any((per_unit > 0) & (per_unit < x.shape[0]))  # dead & partly dead
    fim = UnitWiseFisher(net, 0.0)
    s137 = np.diag(alive.sum(axis=1) + 1.0)  # Σ_{l<L,i} diag(1[δ ≠ 0]) + the output unit
    assert np.array_equal(to_host(theta_bar(fim, s)), s137)  # closed form: exactly
    assert _rel(to_host(theta_bar(fim, s, s)), s137) < 1e-10  # general formula
    orc = O.oracle("unit", net, p, x)
    assert _rel(orc.theta_bar(), s137) < 1e-9  # oracle: J G⁺ Jᵀ / N
    assert _rel(to_host(net.flatten(fim.direction(pb, xb, yb))), orc.direction(y)) < 1e-9
    assert _rel(to_host(theta_bar(fim, s, net.signals(pb, xtb))), orc.theta_bar(xt)) < 1e-9


def test_unit_wise_multi_output_training_blocks(backend):
    """C > 1: per-sample C×C blocks Σ_i δ_iδ_iᵀ/‖δ_i‖² (rank-one projectors), zero across samples."""
    net, _, x, _, _ = _setup((6, 12, 10, 3), "tanh", 0.2)
    s = net.signals(net.init(1, backend), *_on(backend, x))
    theta = to_host(theta_bar(UnitWiseFisher(net, 0.0), s)).reshape(3, 5, 3, 5)
    off = theta.copy()
    for n in range(5):
        off[:, n, :, n] = 0.0
    assert np.max(np.abs(off)) == 0.0
    trace = sum(np.trace(theta[:, n, :, n]) for n in range(5)) / 5
    assert trace == pytest.approx(12 + 10 + 3, rel=1e-12)  # each unit's projector has trace 1


def _per_unit_reference(j, unit_cols, v, rho):
    """G_{l,i}⁻¹ J_{l,i}ᵀ v / N from the unit's own columns of the oracle's J: min-norm least squares at ρ = 0."""
    j = j[:, unit_cols]
    vec = np.asarray(v).reshape(-1)
    if rho == 0:
        return np.linalg.lstsq(j, vec, rcond=None)[0]
    n = j.shape[0]
    return np.linalg.solve(j.T @ j / n + rho * np.eye(j.shape[1]), j.T @ vec / n)


@pytest.mark.parametrize("act,rho", [("relu", 0.0), ("tanh", 0.0), ("relu", 1e-3), ("tanh", 1e-3)])
def test_unit_wise_per_unit_oracle_beyond_lapack_block(act, rho, backend):
    """N = 72 > 64 samples: the compacted/blocked batched solves against each unit's own least squares."""
    rng = np.random.default_rng(7)
    n = 72
    net = Network((80, 96, 96, 1), act, 2.0, 0.5)
    p = net.init(8)
    x = rng.standard_normal((n, 80))
    v = (O.outputs(O.Net.of(net), p, x) - rng.standard_normal((n, 1))).T
    s = net.signals(net.init(8, backend), *_on(backend, x))
    out = [to_host(o) for o in UnitWiseFisher(net, rho).precondition(s, *_on(backend, v))]
    j = O.jacobian(O.Net.of(net), p, x)  # (N, P), C = 1
    worst = 0.0
    for layer in (1, 2, 3):
        for unit in rng.choice(net.widths[layer], size=min(8, net.widths[layer]), replace=False):
            ref = _per_unit_reference(j, net.unit_slice(layer, int(unit)), v, rho)
            worst = max(worst, _rel(out[layer - 1][unit], ref))
    assert worst < 1e-9


def test_blocked_spd_solve(backend):
    rng = np.random.default_rng(0)
    p = 2 * LAPACK_BLOCK + 19
    b = rng.standard_normal((4, p, p + 5))
    a = b @ np.swapaxes(b, 1, 2) + 0.1 * np.eye(p)
    r = rng.standard_normal((4, p, 3))
    assert _rel(to_host(_spd_solve(*_on(backend, a, r))), np.linalg.solve(a, r)) < 1e-10


# ---- quasi-diagonal: Ollivier's formula and its special cases ----------------------------------
def test_quasi_diagonal_is_ollivier_update(backend):
    """Δw_j = (G_bb g_j − G_bj g_b)/(G_bb G_jj − G_bj²), Δb = g_b/G_bb − Σ_j (G_bj/G_bb) Δw_j
    (Ollivier's update written out per unit), for the structured step and for the oracle G_qd⁻¹∇L."""
    net, p, x, _, y = _setup((5, 10, 9, 1), "tanh", 0.3)
    rho = 1e-3
    fim = QuasiDiagonalFisher(net, rho)
    j = O.jacobian(O.Net.of(net), p, x)
    grad = j.T @ (O.outputs(O.Net.of(net), p, x) - y).T.reshape(-1) / x.shape[0]
    got = to_host(net.flatten(fim.direction(net.init(1, backend), *_on(backend, x, y))))  # init(1) is p
    from_metric = O.oracle("quasi-diag", net, p, x, rho).direction(y)
    for layer in (1, 2, 3):
        for unit in range(net.widths[layer]):
            sl = net.unit_slice(layer, unit)
            ju, g = j[:, sl], grad[sl]
            gdiag = np.sum(ju * ju, axis=0) / x.shape[0] + rho
            gbj = ju[:, :-1].T @ ju[:, -1] / x.shape[0]
            gbb = gdiag[-1]
            dw = (gbb * g[:-1] - gbj * g[-1]) / (gbb * gdiag[:-1] - gbj**2)
            db = g[-1] / gbb - np.sum(gbj / gbb * dw)
            ollivier = np.concatenate([dw, [db]])
            assert _rel(got[sl], ollivier) < 1e-10
            assert _rel(from_metric[sl], ollivier) < 1e-10


def test_quasi_diagonal_degenerate_relu_units_match_pseudo_inverse(backend):
    """ρ = 0 with units alive on a single sample (singular 2×2 blocks): G_qd⁺, not a division by 0."""
    net = Network((4, 10, 8, 1), "relu", 2.0, 0.5)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4))
    y = rng.standard_normal((3, 1))
    pb, xb, yb = net.init(2, backend), *_on(backend, x, y)
    s = net.signals(pb, xb)
    alive = np.concatenate([to_host(d)[0] != 0 for d in s.delta[:-1]], axis=1).sum(axis=0)
    assert np.any(alive == 1) and np.any(alive == 0)
    fim = QuasiDiagonalFisher(net, 0.0)
    d = to_host(net.flatten(fim.direction(pb, xb, yb)))
    assert np.all(np.isfinite(d))
    orc = O.oracle("quasi-diag", net, net.init(2), x)
    assert _rel(d, orc.direction(y)) < 1e-9
    assert _rel(to_host(theta_bar(fim, s)), orc.theta_bar()) < 1e-9


@pytest.mark.parametrize("widths,seed,n", [((4, 10, 8, 1), 2, 3), ((6, 12, 10, 2), 0, 5)])
def test_quasi_diagonal_direction_equals_its_map(widths, seed, n, backend):
    """The fused direction (pieces applied in place) is M_i g_i with the assembled map M of Θ̄,
    including the degenerate-weight terms (units alive on one sample at ρ = 0)."""
    from ngdref.jacobian import mse_gradient

    net = Network(widths, "relu", 2.0, 0.5)
    rng = np.random.default_rng(seed)
    x, y = _on(backend, rng.standard_normal((n, widths[0])), rng.standard_normal((n, widths[-1])))
    p = net.init(seed, backend)
    s = net.signals(p, x)
    fim = QuasiDiagonalFisher(net, 0.0)
    degenerate = False
    for l, (d, g) in enumerate(zip(fim.direction(p, x, y, s), mse_gradient(s, y)), start=1):
        m = fim.layer_map(s, l)
        degenerate |= bool(np.any(to_host(m.z)[:, :-1] != 0))
        assert _rel(to_host(d), to_host(m.apply(g))) < 1e-12
    if widths == (4, 10, 8, 1):
        assert degenerate  # the ẑ_w branch is exercised


@pytest.mark.parametrize("elements", [1, 48])
@pytest.mark.parametrize("rho", [0.0, 1e-3])
def test_quasi_diagonal_fused_blocks_match_oracle(rho, elements, backend, monkeypatch):
    """The fused, cache-blocked direction with one unit per block (``elements`` = 1) or a few (48 elements:
    4–9 units, sub-blocks of 2): blocks in Ollivier's closed form (ẑ on the bias), blocks with a
    coupled degenerate weight (a unit alive on one sample, ρ = 0) whose sub-blocks take the closed
    form or the pseudo-inverse pieces, dead units and a blank input — against the oracle's G_qd⁺∇L,
    and bit for bit the same on 1 and 3 threads."""
    import ngdref.fisher.diagonal as diagonal
    import ngdref.threads as ngdref_threads

    calls = {"closed": 0, "pieces": 0}
    block, pieces = diagonal._quasi_block, diagonal._quasi_pieces

    def counted_block(*args):
        done = block(*args)
        calls["closed"] += done
        return done

    def counted_pieces(*args):
        calls["pieces"] += 1
        return pieces(*args)

    monkeypatch.setattr(diagonal, "_CACHE_BLOCK", elements)
    monkeypatch.setattr(diagonal, "_SUB_BLOCK", 2)
    monkeypatch.setattr(diagonal, "_quasi_block", counted_block)
    monkeypatch.setattr(diagonal, "_quasi_pieces", counted_pieces)
    net = Network((5, 10, 8, 1), "relu", 2.0, 0.5)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 5))
    x[:, 0] = 0.0  # a blank input: G_jj = G_bj = 0
    y = rng.standard_normal((3, 1))
    s = net.signals(net.init(2), x)
    alive = np.concatenate([d[0] != 0 for d in s.delta[:-1]], axis=1).sum(axis=0)
    assert np.any(alive == 1) and np.any(alive == 0)  # degenerate and dead units
    orc = O.oracle("quasi-diag", net, net.init(2), x, rho)
    pb, xb, yb = net.init(2, backend), *_on(backend, x, y)
    monkeypatch.setattr(ngdref_threads, "THREADS", 1)
    got = to_host(net.flatten(QuasiDiagonalFisher(net, rho).direction(pb, xb, yb)))
    assert _rel(got, orc.direction(y)) < _tolerance(orc)
    assert calls["closed"] >= 3  # the output layer's block, and blocks (or sub-blocks) of the hidden layers
    assert (calls["pieces"] > 0) == (rho == 0.0)
    monkeypatch.setattr(ngdref_threads, "THREADS", 3)
    assert np.array_equal(to_host(net.flatten(QuasiDiagonalFisher(net, rho).direction(pb, xb, yb))), got)


@pytest.mark.parametrize("rho", [0.0, 1e-2])
def test_quasi_diagonal_without_bias_is_diagonal(rho, backend):
    """No bias, no coupling: quasi-diag's step and Θ̄ are the oracle's *diagonal* FIM ones."""
    net, p, x, xt, y = _setup((6, 12, 10, 2), "relu", 0.0)
    orc = O.oracle("diag", net, p, x, rho)
    d, c_train, c_test = _structured(QuasiDiagonalFisher(net, rho), net, x, xt, y, backend)
    tol = _tolerance(orc)
    assert _rel(d, orc.direction(y)) < tol
    assert _rel(c_train, orc.theta_bar()) < tol
    assert _rel(c_test, orc.theta_bar(xt)) < tol


# ---- backends and dtypes ----------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("widths,act,sb2,rho", [((6, 12, 10, 1), "relu", 0.5, 0.0), ((3, 8, 9, 2), "tanh", 0.5, 1e-2)])
def test_structured_path_runs_on_backend(name, widths, act, sb2, rho, device_backend):
    net, p, x, xt, y = _setup(widths, act, sb2)
    fim = get_fisher(name, net, rho)
    ref = _structured(fim, net, x, xt, y)
    got = _structured(fim, net, x, xt, y, device_backend)
    for a, b in zip(got, ref):  # the same computation on every other core backend agrees with NumPy to rounding
        assert _rel(a, b) < 1e-12


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("rho", [0.0, 1e-2])
def test_float32_stays_float32(name, rho, backend):
    b32 = get_backend(backend.name, "float32")
    net, _, x, xt, y = _setup((6, 12, 10, 2), "relu", 0.5)
    p = net.init(1, b32)
    x32, xt32, y32 = _on(b32, x, xt, y)
    fim = get_fisher(name, net, rho)
    s32 = net.signals(p, x32)
    assert all(dtype_name_of(d) == "float32" for d in fim.direction(p, x32, y32, s32))
    assert dtype_name_of(theta_bar(fim, s32, net.signals(p, xt32))) == "float32"
    assert dtype_name_of(theta_bar(fim, s32)) == "float32"


@pytest.mark.parametrize("name", ["diag", "quasi-diag"])
@pytest.mark.parametrize("rho", [0.0, 1e-2])
def test_diagonal_coefficient_on_training_support_matches_oracle(name, rho, backend):
    """Inputs with all-zero pixels (as MNIST's borders) and ReLU units dead on every training
    sample: Θ̄ drops them (they contribute exactly 0) and still equals the explicit oracle."""
    from ngdref.fisher.diagonal import _LayerArrays, _training_support

    net, p, x, xt, y = _setup((10, 12, 11, 1), "relu", 0.5, seed=3, n=6)
    x[:, :4] = 0.0
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    s = net.signals(p, x)
    for l in (1, 2):  # the compression does remove something on both hidden layers
        lay = _LayerArrays.of(s, l)
        support = _training_support(lay)
        assert support is not None
        units, inputs = support
        assert len(units) < lay.d.shape[2] or len(inputs) < lay.a.shape[1]
        assert int(inputs[-1]) == lay.a.shape[1] - 1  # the bias column is kept, and last
    fim = get_fisher(name, net, rho)
    orc = O.oracle(name, net, p, x, rho)
    tol = _tolerance(orc)
    pb, xb, xtb = net.init(4, backend), to_device(x, backend), to_device(xt, backend)  # init(4) is p
    sb = net.signals(pb, xb)
    assert _rel(to_host(theta_bar(fim, sb, net.signals(pb, xtb))), orc.theta_bar(xt)) < tol
    assert _rel(to_host(theta_bar(fim, sb)), orc.theta_bar()) < tol


def test_unit_float32_does_small_algebra_in_float64(backend):
    """On MNIST cond(K) ≈ 1e6–1e8: float32 must still take the exact ρ = 0 path and agree with float64."""
    from ngdref.data import load_dataset
    from ngdref.fisher.unitwise import _EXACT

    b32, b64 = get_backend(backend.name, "float32"), get_backend(backend.name, "float64")
    ds = load_dataset("mnist", n_train=40, n_test=0, seed=0)
    net = Network((784, 256, 256, 1), "relu", 2.0, 0.5)
    x64 = np.asarray(ds.x_train, dtype=np.float64)
    p32 = net.init(3, b32)
    p64 = [to_device(to_host(q), b64) for q in p32]  # the same (float32-rounded) weights
    x32 = x64.astype(np.float32)
    s32, s64 = net.signals(p32, to_device(x32, b32)), net.signals(p64, to_device(x64, b64))
    fim = get_fisher("unit", net, 0.0)
    k = to_host(fim._layer(s32, 2).kernel)
    ev = np.linalg.eigvalsh(k)
    assert ev[-1] / ev[0] > 1.0 / (40 * np.finfo(np.float32).eps)  # float32's own test would fail
    assert all(fim._layer(s32, l).mode == _EXACT for l in (2, 3))
    y = np.asarray(ds.y_train)
    d32 = net.flatten(fim.direction(p32, s32.h[0], to_device(y, b32), s32))
    d64 = net.flatten(fim.direction(p64, s64.h[0], to_device(y, b64), s64))
    assert dtype_name_of(d32) == "float32"
    assert _rel(to_host(d32), to_host(d64)) < 1e-3
    c32, c64 = theta_bar(fim, s32), theta_bar(fim, s64)
    assert dtype_name_of(c32) == "float32" and _rel(to_host(c32), to_host(c64)) < 1e-6


# ---- α and isotropy ---------------------------------------------------------------------------
def test_analytic_alpha_and_notes():  # no arrays: the analytic α (host formulas)
    net = Network((20, 64, 48, 1), "relu", 2.0, 0.5)
    unit = UnitWiseFisher(net)
    assert unit.analytic_alpha(10) == pytest.approx(64 / 2 + 48 / 2 + 1)
    assert unit.analytic_alpha(10) == pytest.approx(unit_alpha(net, include_output_layer=True))
    assert UnitWiseFisher(Network((20, 64, 48, 2), "relu", 2.0, 0.5)).analytic_alpha(10) is None
    for cls in (DiagonalFisher, QuasiDiagonalFisher):
        fim = cls(net)
        assert fim.analytic_alpha(10) is None and "isotropic" in fim.alpha_note()
    assert "S.128" in unit.alpha_note()


def _gaussian_signals(backend, width, act, n=40, m0=100, seed=0):
    """(network, signals on ``backend``, N) of an L = 3 network on Gaussian inputs."""
    rng = np.random.default_rng(seed)
    net = Network.build(m0, width, 3, 1, act, sigma_w2=2.0, sigma_b2=0.5)
    return net, net.signals(net.init(seed + 1, backend), *_on(backend, rng.standard_normal((n, m0)))), n


@pytest.mark.slow
@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_unit_wise_isotropy_matches_analytic_alpha(act, backend):
    conds = []
    for width in (64, 768):
        net, s, n = _gaussian_signals(backend, width, act)
        fim = UnitWiseFisher(net, 0.0)
        iso = isotropy(to_host(theta_bar(fim, s)))
        conds.append(iso["condition_number"])
        if width == 768:
            alpha = fim.analytic_alpha(n)
            assert iso["mean_diagonal"] == pytest.approx(alpha, rel=0.03)
    if act == "tanh":  # φ′ ≠ 0: every unit is alive on every sample, Θ̄ = (Σ M_l + 1) I
        assert conds == pytest.approx([1.0, 1.0], abs=1e-12)
    else:
        assert 1.0 < conds[1] < conds[0] and conds[1] < 1.15


@pytest.mark.slow
def test_unit_wise_damped_path_converges_to_zero_damping_limit(backend):
    """ρ = 1e-12 (Fig. S.2's setting) goes through the damped solves; Θ̄(ρ) → Θ̄(0) linearly in ρ."""
    net, s, _ = _gaussian_signals(backend, 256, "relu", n=30)
    exact = to_host(theta_bar(UnitWiseFisher(net, 0.0), s))
    dev = [_rel(to_host(theta_bar(UnitWiseFisher(net, rho), s)), exact) for rho in (1e-12, 1e-14)]
    assert dev[0] < 1e-3 and dev[1] < dev[0] / 20


@pytest.mark.slow
def test_entrywise_fims_are_better_than_ntk_but_not_isotropic(backend):
    """Fig. 3 (C.3.1, small): L = 3, Gaussian inputs M0 = 100, N = 60, σ_w² = 2, σ_b² = 0.5, ρ = 1e-12."""
    net, s, _ = _gaussian_signals(backend, 384, "relu", n=60)
    cond = {name: isotropy(to_host(theta_bar(get_fisher(name, net, 0.0 if name == "gd" else 1e-12), s)))["condition_number"]
            for name in ("gd", "unit", "diag", "quasi-diag")}
    assert cond["unit"] < 1.2
    for name in ("diag", "quasi-diag"):
        assert 2.0 < cond[name] < cond["gd"] / 2


# ---- entry-wise FIMs at ρ = 0: each entry is cut on its own accuracy, never on P·eps·max F ---------
def _entrywise_case(widths, n, zero_pixels, faint_pixels, faint, dead_units, seed=0):
    """A ReLU net (σ_b² = 0.5) on unit-norm inputs with pixels exactly 0 on every sample, "faint"
    pixels scaled by ``faint`` (F_ii ~ faint² of the rest: tiny, not zero) and first-layer units
    killed on every sample by a bias of −10 (δ ≡ 0 there, so the next layer's input is ≡ 0)."""
    rng = np.random.default_rng(seed)
    net = Network(widths, "relu", 2.0, 0.5)
    x = unit_rows(rng, n, widths[0])
    x[:, :zero_pixels] = 0.0
    x[:, zero_pixels:zero_pixels + faint_pixels] *= faint
    p = net.init(seed + 1)
    p[0][:dead_units, -1] = -10.0
    return net, p, x, rng.standard_normal((n, widths[-1]))


def _dead_and_blank(net, p, x):
    """(units dead on every sample in layer 1, inputs ≡ 0 of layer 1) on the host."""
    s = net.signals(p, x)
    return int(np.sum(~np.any(s.delta[0] != 0, axis=(0, 1)))), int(np.sum(~np.any(s.a[0] != 0, axis=0)))


ENTRYWISE_CASES = [  # (widths, N, zero pixels, faint pixels, faint, dead units)
    ((10, 30, 30, 1), 8, 0, 0, 1.0, 0),  # P·eps32·max F would cut most of the net
    ((64, 200, 200, 1), 20, 16, 8, 1e-4, 12),  # wider, dead units and blank and faint pixels
]


def _float32_and_float64(net, p, x, backend):
    """The same (float32-rounded) weights and inputs on ``backend`` in float32 and in float64:
    (params32, signals32, params64, signals64, x32)."""
    b32, b64 = get_backend(backend.name, "float32"), get_backend(backend.name, "float64")
    p32 = [to_device(q.astype(np.float32), b32) for q in p]
    p64 = [to_device(to_host(q), b64) for q in p32]
    x32 = x.astype(np.float32)
    s32, s64 = net.signals(p32, to_device(x32, b32)), net.signals(p64, to_device(x32.astype(np.float64), b64))
    return p32, s32, p64, s64, x32


@pytest.mark.parametrize("case", ENTRYWISE_CASES)
@pytest.mark.parametrize("name", ["diag", "quasi-diag"])
def test_entrywise_zero_damping_float32_matches_float64(name, case, backend):
    """ρ = 0 in float32 and float64 from the same (float32-rounded) weights and inputs: the step and
    Θ̄ agree to float32 accuracy. A relative cut-off P·eps·max F (the old rule: 1.5e-4 resp. 6e-3 of
    max F in float32 here) dropped most entries in float32 and left the step ~100 % off."""
    net, p, x, y = _entrywise_case(*case)
    if case[-1]:
        dead, blank = _dead_and_blank(net, p, x)
        assert dead >= case[-1] and blank >= case[2]  # the exact zeros are really there
    p32, s32, p64, s64, x32 = _float32_and_float64(net, p, x, backend)
    b32, b64 = get_backend(backend.name, "float32"), get_backend(backend.name, "float64")
    fim = get_fisher(name, net, 0.0)
    d32 = net.flatten(fim.direction(p32, s32.h[0], to_device(y, b32), s32))
    d64 = net.flatten(fim.direction(p64, s64.h[0], to_device(y, b64), s64))
    assert dtype_name_of(d32) == "float32" and np.all(np.isfinite(to_host(d32)))
    keep = np.ones(net.n_params, dtype=bool)
    if name == "quasi-diag":
        keep = ~_pairs_float32_cannot_resolve(net, [to_host(q) for q in p64], x32.astype(np.float64))
        assert keep.mean() > 0.9
    assert _rel(to_host(d32)[keep], to_host(d64)[keep]) < 1e-3
    # Θ̄ sums every unit: a pair that only float64 resolves adds a rank-two instead of a rank-one
    # projector there (O(1) of a unit's share), so with such units Θ̄ is held to 1e-2
    tol = 1e-3 if keep.all() else 1e-2
    assert _rel(to_host(theta_bar(fim, s32)), to_host(theta_bar(fim, s64))) < tol


def _pairs_float32_cannot_resolve(net, p, x):
    """Flat mask of the units with a 2×2 block (b, w_j) that float32 cannot resolve to 1e-3:
    1e-10 < sin² = D_j/G_jj < 1e3·N·eps32 (D_j is known to ~N·eps·G_jj), from float64 on the
    host. Units alive on one sample (sin² = 0, degenerate in both dtypes) are compared."""
    s = net.signals(p, x)
    n, eps32 = x.shape[0], float(np.finfo(np.float32).eps)
    mask = np.zeros(net.n_params, dtype=bool)
    for l in range(1, net.depth + 1):
        d, a = s.delta[l - 1], s.a[l - 1]
        e = np.sum(d * d, axis=0) / n  # (N, M_l)
        gjj, gbb, gbj = e.T @ (a[:, :-1] ** 2), e.T @ (a[:, -1:] ** 2), net.sigma_b * (e.T @ a[:, :-1])
        with np.errstate(divide="ignore", invalid="ignore"):
            sin2 = np.where((gjj > 0) & (gbb > 0), 1.0 - gbj**2 / (gbb * gjj), 1.0)
        for unit in np.nonzero(np.any((sin2 > 1e-10) & (sin2 < 1e3 * n * eps32), axis=1))[0]:
            mask[net.unit_slice(l, int(unit))] = True
    return mask


@pytest.mark.parametrize("name", ["diag", "quasi-diag"])
def test_entrywise_zero_damping_exact_zeros_and_tiny_entries_match_oracle(name, backend):
    """Dead units and blank pixels (F_ii = 0 exactly: inverse 0) next to faint pixels (F_ii ~ 1e-16
    of max F, below P·eps64: inverted, as their own accuracy allows) against the oracle, whose
    entry-wise pseudo-inverse writes the same convention out independently."""
    net, p, x, y = _entrywise_case((12, 14, 12, 1), 6, 3, 3, 1e-8, 3)
    dead, blank = _dead_and_blank(net, p, x)
    assert dead >= 3 and blank >= 3
    orc = O.oracle(name, net, p, x, 0.0)
    f = np.diag(O.metric("diag", net, p, x))
    assert np.any((f > 0) & (f < net.n_params * O.EPS * f.max()))  # what P·eps would have dropped
    pb = [to_device(q, backend) for q in p]
    xb, xtb, yb = _on(backend, x, unit_rows(np.random.default_rng(5), 3, 12), y)
    s = net.signals(pb, xb)
    fim = get_fisher(name, net, 0.0)
    d = to_host(net.flatten(fim.direction(pb, xb, yb, s)))
    want = orc.direction(y)
    tiny = (f > 0) & (f < 1e-6 * f.max())  # their steps are ~1e8 times the others': compare apart
    assert _rel(d[tiny], want[tiny]) < 1e-9 and _rel(d[~tiny], want[~tiny]) < 1e-9
    assert np.all(want[tiny] != 0)  # the faint entries are inverted, not cut
    assert _rel(to_host(theta_bar(fim, s)), orc.theta_bar()) < 1e-9
    assert _rel(to_host(theta_bar(fim, s, net.signals(pb, xtb))), orc.theta_bar(to_host(xtb))) < 1e-9


@pytest.mark.parametrize("name", ["diag", "quasi-diag"])
def test_entrywise_float32_underflow_is_cut_not_inverted(name, backend):
    """Pixels scaled by 1e-20 give F_ii ~ 1e-40: subnormal in float32 (no relative accuracy, 1/F
    overflows), normal in float64. float32 cuts them (inverse 0, a finite step); float64 inverts
    them; every other entry agrees to float32 accuracy."""
    net, p, x, y = _entrywise_case((10, 16, 12, 1), 6, 0, 2, 1e-20, 0)
    p32, s32, p64, s64, x32 = _float32_and_float64(net, p, x, backend)
    b32, b64 = get_backend(backend.name, "float32"), get_backend(backend.name, "float64")
    fim = get_fisher(name, net, 0.0)
    d32 = to_host(net.flatten(fim.direction(p32, s32.h[0], to_device(y, b32), s32))).astype(np.float64)
    d64 = to_host(net.flatten(fim.direction(p64, s64.h[0], to_device(y, b64), s64)))
    assert np.all(np.isfinite(d32))
    p_host = [to_host(q) for q in p64]
    alive = np.any(net.signals(p_host, x32.astype(np.float64)).delta[0] != 0, axis=(0, 1))
    faint, alive_faint = np.zeros(net.n_params, dtype=bool), np.zeros(net.n_params, dtype=bool)
    for unit in range(net.widths[1]):  # the weights from the two faint pixels (of the live units)
        faint[net.unit_slice(1, unit).start + np.arange(2)] = True
        alive_faint[net.unit_slice(1, unit).start + np.arange(2)] = alive[unit]
    assert np.any(alive_faint)
    assert np.max(np.abs(d64[faint])) > 1e10 * np.max(np.abs(d64[~faint]))  # inverted in float64
    if name == "diag":
        assert np.all(d64[alive_faint] != 0.0) and np.all(d32[faint] == 0.0)
    else:  # a cut weight joins the bias direction ẑ (the pseudo-inverse with D_j := 0), weight ~ G_bj
        assert np.max(np.abs(d32[faint])) < 1e-12 * np.max(np.abs(d32))
    keep = ~faint
    if name == "quasi-diag":  # the bias of a unit whose faint weights float64 inverts: Δb ∋ G_bj Δw_j/G_bb
        keep &= ~_pairs_float32_cannot_resolve(net, p_host, x32.astype(np.float64))
        for unit in np.nonzero(alive)[0]:
            keep[net.unit_slice(1, int(unit))] = False
    assert _rel(d32[keep], d64[keep]) < 1e-3


@pytest.mark.parametrize("widths,act,sb2", CONFIGS)
@pytest.mark.parametrize("name", ["diag", "quasi-diag"])
def test_oracle_entrywise_pinv_is_the_eigenvalue_pinv_without_tiny_entries(widths, act, sb2, name):
    """The oracle's entry-wise G⁺ (ρ = 0) is the Moore–Penrose pseudo-inverse: where no entry is
    tiny relative to max G (these nets), it equals the eigenvalue-cut pinv of the P×P G_qd."""
    net, p, x, _, _ = _setup(widths, act, sb2)
    g = O.metric(name, net, p, x, 0.0)
    got, want = O.entrywise_pinv(name, O.Net.of(net), g, x.shape[0]), O.pinv(g)
    assert _rel(got, want) < 1e-8
    assert _rel(g @ got @ g, g) < 1e-10  # G G⁺ G = G


def _relu_case(widths, sb2: float, n: int, data_seed: int, init_seed: int, backend):
    """A ReLU net (σ_w² = 2, σ_b² = ``sb2``), its signals on n unit-norm rows on ``backend`` and a (1, n) vector."""
    rng = np.random.default_rng(data_seed)
    net = Network(widths, "relu", 2.0, sb2)
    x = unit_rows(rng, n, widths[0])
    s = net.signals(net.init(init_seed, backend), to_device(x, backend))
    return net, s, to_device(rng.standard_normal((1, n)), backend)


def test_unit_diagonal_form_matches_the_scaled_form(backend, monkeypatch):
    """The damped per-unit solve (K_SS + ρD⁻²)y = D⁻¹r, z = D⁻¹y against the scaled form (DK_SSD + ρI)z = r that
    the guard falls back to (forced by ``_SHIFT_LIMIT`` = 0): directions and Θ̄ within 3e-11 at ρ = 1e-6 (units
    alive on 1 to N samples, N = 70 > 64 so several chunk sizes). Each form is itself that far from the
    truth: against per-unit primal solves in extended precision the output unit's direction was off by
    5.9e-12 (diagonal form) and 9.4e-12 (scaled) with Cholesky solves, 1.9e-11 and 1.6e-11 with LU ones; the
    two forms differed by 1.5e-11 with Cholesky."""
    import ngdref.fisher.unitwise as U

    net, s, v = _relu_case((9, 48, 40, 1), 0.2, 70, 21, 3, backend)
    fim = get_fisher("unit", net, 1e-6)
    got = [to_host(a) for a in [*fim.precondition(s, v), fim.coefficient(s)]]
    monkeypatch.setattr(U, "_SHIFT_LIMIT", 0.0)
    want = [to_host(a) for a in [*fim.precondition(s, v), fim.coefficient(s)]]
    for g, w in zip(got, want):
        assert _rel(g, w) < 3e-11


def test_unit_theta_bar_does_not_depend_on_the_test_set():
    """Θ̄(x, x) of ``coefficient_pair`` where K_SS is near singular (M0 + 1 = 4 < N = 30, ρ = 1e-12), with 10 and
    with 30 test inputs beside it: the same to 1e-12. Θ̄ multiplies each unit's solution by K-like factors,
    so it needs a small residual, not only a small error in the solution: a product with an explicit inverse
    (tried for its speed when the right-hand sides outnumber the unknowns twice, i.e. only with the larger
    test set) moved Θ̄(x, x) by 1e-6 here."""
    rng = np.random.default_rng(22)
    net = Network((3, 64, 64, 1), "relu", 2.0, 0.5)
    p = net.init(5)
    x, xt = unit_rows(rng, 30, 3), unit_rows(rng, 30, 3)
    s = net.signals(p, x)
    fim = get_fisher("unit", net, 1e-12)
    small = fim.coefficient_pair(net.signals(p, xt[:10]), s)[0]
    large = fim.coefficient_pair(net.signals(p, xt), s)[0]
    assert _rel(large, small) < 1e-12


def test_place_blocks_bincount_and_one_hot_agree():
    """``_place_blocks`` — NumPy's ``bincount`` and the array API's one-hot products — against a loop that adds each
    unit's block entry by entry at [cols, rows]; padding (rows N, cols q) lands in the extra last row/column only."""
    import ngdref.fisher.unitwise as U

    rng = np.random.default_rng(24)
    c, p, q, n, n_cols = 6, 4, 5, 7, 9
    rows = np.stack([rng.permutation(n + 1)[:p] for _ in range(c)])  # n (padding) may appear
    cols = np.stack([rng.permutation(n_cols + 1)[:q] for _ in range(c)])
    w = rng.standard_normal((c, p, q))
    want = np.zeros((n_cols + 1, n + 1))
    for u in range(c):
        for a in range(p):
            for b in range(q):
                want[cols[u, b], rows[u, a]] += w[u, a, b]
    assert _rel(U._place_blocks(w, rows, cols, n, n_cols), want) < 1e-15
    strict = get_backend("strict")
    got = U._place_blocks(*(to_device(a, strict) for a in (w, rows, cols)), n, n_cols)
    assert _rel(to_host(got), want) < 1e-15


def test_unit_theta_bar_solves_only_the_columns_it_reads(backend, monkeypatch):
    """Θ̄(x′, x)'s per-unit solves take only the x′ with δ_{l,i}(x′) ≠ 0 as right-hand sides (S.156 reads no other
    column): ``coefficient_pair`` as with every column (``_SharedRows`` without ``columns``) to 1e-12, and the
    solves had fewer right-hand sides than N + N′ (ReLU: about half the samples are alive per unit)."""
    import ngdref.fisher.unitwise as U

    rng = np.random.default_rng(25)
    net = Network((9, 40, 36, 1), "relu", 2.0, 0.2)
    x, xt = unit_rows(rng, 30, 9), unit_rows(rng, 12, 9)
    p = net.init(6, backend)
    s, st = net.signals(p, to_device(x, backend)), net.signals(p, to_device(xt, backend))
    fim = get_fisher("unit", net, 1e-8)
    widths = []
    original = U._compacted_rhs

    def spy(rhs, units, idx):
        rows, cols = original(rhs, units, idx)
        widths.append(int(rows.shape[2]))
        return rows, cols

    monkeypatch.setattr(U, "_compacted_rhs", spy)
    got = [to_host(a) for a in fim.coefficient_pair(st, s)]
    assert widths and min(widths) < 30  # the output unit (δ = 1) keeps all 42
    full_init = U._SharedRows.__init__
    monkeypatch.setattr(U._SharedRows, "__init__", lambda self, m, scale, columns=None: full_init(self, m, scale))
    widths.clear()
    want = [to_host(a) for a in fim.coefficient_pair(st, s)]
    assert min(widths) == 42
    for g, w in zip(got, want):
        assert _rel(g, w) < 1e-12


def test_units_alive_on_every_sample_are_solved_without_compaction(backend, monkeypatch):
    """A unit alive on every training sample (δ ≠ 0 on all of them) is solved on all N samples as they are —
    ``_phi_alive`` without index arrays (no gathers or scatters) — beside compacted units; both kinds, in the
    direction and in Θ̄(x, x), Θ̄(x′, x) (columns compacted), against the per-unit and explicit oracles."""
    rng = np.random.default_rng(31)
    net = Network((9, 40, 36, 1), "relu", 2.0, 1.0)  # σ_b² = 1: many layer-1 units alive on all 12 samples
    x, xt = unit_rows(rng, 12, 9), unit_rows(rng, 7, 9)
    p = net.init(3)
    v = (O.outputs(O.Net.of(net), p, x) - rng.standard_normal((12, 1))).T
    rho = 1e-6
    full = []
    original = UnitWiseFisher._phi_alive

    def spy(self, lay, units, rhs, idx, *rest):
        full.append(idx is None)
        return original(self, lay, units, rhs, idx, *rest)

    monkeypatch.setattr(UnitWiseFisher, "_phi_alive", spy)
    fim = UnitWiseFisher(net, rho)
    pb = net.init(3, backend)
    s, st = net.signals(pb, *_on(backend, x)), net.signals(pb, *_on(backend, xt))
    out = [to_host(o) for o in fim.precondition(s, *_on(backend, v))]
    assert full.count(True) >= 2 and False in full  # layer 1's and the output unit's chunks
    j = O.jacobian(O.Net.of(net), p, x)
    alive_everywhere = np.all(to_host(s.delta[0])[0] != 0.0, axis=0)  # layer 1's units, (M1,)
    assert 0 < alive_everywhere.sum() < net.widths[1]
    for layer in (1, 3):  # the output unit (δ = 1) too
        for unit in range(net.widths[layer]):
            ref = _per_unit_reference(j, net.unit_slice(layer, unit), v, rho)
            if np.any(ref != 0.0):
                assert _rel(out[layer - 1][unit], ref) < 1e-9
            else:  # dead on every sample
                assert not np.any(out[layer - 1][unit])
    full.clear()
    train, test = (to_host(a) for a in fim.coefficient_pair(st, s))
    assert full.count(True) >= 2 and False in full
    orc = O.oracle("unit", net, p, x, rho)
    tol = _tolerance(orc)
    assert _rel(train, orc.theta_bar()) < tol
    assert _rel(test, orc.theta_bar(xt)) < tol


@pytest.mark.parametrize("rho", [0.0, 1e-6])
def test_unit_solves_hand_exactly_symmetric_matrices_to_the_cholesky_solver(rho, backend, monkeypatch):
    """``spd_solve_stack``'s Cholesky loop reads one triangle of each matrix, its LU path both: every matrix unit-wise
    hands it — K_SS (+ ρD⁻²) on the alive sets, H_DD of H = K⁻¹ on the dead sets (ρ = 0, K ≻ 0; ``inv`` leaves
    H's triangles apart) — and the K of ``spd_solve_shifted`` (ρ > 0) are symmetric to the bit; at ρ = 0 the
    dead-set solves ran (layer 1 with N = 40 < M0 + 1 has K ≻ 0, units dead on 3 and 15 samples)."""
    import ngdref.fisher.unitwise as U

    seen = {"stack": 0, "shifted": 0}
    stack, shifted = U.spd_solve_stack, U.spd_solve_shifted

    def spy_stack(a, b):
        h = to_host(a)
        assert np.array_equal(h, np.swapaxes(h, 1, 2))
        seen["stack"] += 1
        return stack(a, b)

    def spy_shifted(k, d, b):
        h = to_host(k)
        assert np.array_equal(h, h.T)
        seen["shifted"] += 1
        return shifted(k, d, b)

    monkeypatch.setattr(U, "spd_solve_stack", spy_stack)
    monkeypatch.setattr(U, "spd_solve_shifted", spy_shifted)
    dead = []
    original = UnitWiseFisher._phi_dead

    def spy_dead(self, *args):
        dead.append(args[3].shape[1])  # p: the largest dead set of the piece (H_DD is p × p)
        return original(self, *args)

    monkeypatch.setattr(UnitWiseFisher, "_phi_dead", spy_dead)
    net, s, v = _relu_case((60, 9, 8, 1), 1.0, 40, 5, 3, backend)
    UnitWiseFisher(net, rho).precondition(s, v)
    assert seen["stack"] > 0 and (seen["shifted"] > 0) == (rho > 0)  # ρ > 0: the output unit, alive everywhere
    assert (max(dead, default=0) >= 2) == (rho == 0.0)
