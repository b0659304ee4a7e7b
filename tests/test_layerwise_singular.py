"""Layer-wise NGD with Σ (Eq. 15) at ρ = 0 when a layer kernel Θ_l is singular (issue 13, item 2).

A dead ReLU unit (its pre-activation negative on every sample) removes a column of a_{L−1}; with
N = M_{L−1} + 1 samples Θ_L = I_C ⊗ a_{L−1}a_{L−1}ᵀ/N then has rank C(N − 1) < CN. S.89
(z_l = (Σ⁻¹1)_l Θ_l⁺(f − y)) is G⁺∇L only for invertible Θ_l (or a diagonal Σ, where G is block
diagonal); the zero-damping limit is G⁺∇L, which the structured path now computes from the layer
kernels' eigendecompositions (ngdref/fisher/layerwise.py). Checked on every core backend against

* the explicit P×P pseudo-inverse of tests/oracles.py (direction, Θ̄(x, x), Θ̄(x′, x); the
  cross-entropy metric Λ̃ of S.164), to 1e-8 relative;
* the damped structured path as ρ → 0: the difference shrinks ∝ ρ (ρ = 1e-6, 1e-8, 1e-10).
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest

from ngdref import Network, to_device, to_host
from ngdref.fisher import LayerWiseFisher, tridiagonal_sigma
from ngdref.losses import cross_entropy_metric

from . import oracles as O
from .conftest import theta_bar, unit_rows

#: (widths, {layer: dead units}); N = M_{L−1} + 1 samples, σ_b² = 0.5, ReLU
NETS = {
    "C1": ((9, 8, 8, 1), {2: (3,)}),
    "C2": ((9, 8, 8, 2), {2: (3,)}),
    "C2-two-dead": ((9, 8, 8, 2), {2: (5, 6)}),
    "L4": ((9, 8, 8, 8, 1), {3: (0,)}),
    "L4-C2": ((7, 8, 7, 8, 2), {2: (1,), 3: (4,)}),  # κ(G) ~ 1e7 on its range: oracle checks only
}


def _dense_sigma(depth: int) -> np.ndarray:
    """A dense, positive definite, non-constant Σ (the one of tests/test_fisher.py)."""
    i = np.arange(depth)
    return 0.5 ** np.abs(i[:, None] - i[None, :]) + np.diag(1.0 + 0.25 * i)


def _sigma(name: str, depth: int) -> np.ndarray:
    return {"bd": np.eye(depth), "tridiag": tridiagonal_sigma(depth), "dense": _dense_sigma(depth)}[name]


SIGMAS = ["bd", "tridiag", "dense"]


@functools.lru_cache(maxsize=None)
def _case(net_name: str, seed: int = 0):
    """(network, host θ with dead units, x, x′, y); x has N = M_{L−1} + 1 rows."""
    widths, dead = NETS[net_name]
    net = Network(widths, "relu", 2.0, 0.5)
    params = [np.array(to_host(p)) for p in net.init(seed)]
    rng = np.random.default_rng(seed + 7)
    for layer, units in dead.items():
        m_in = widths[layer - 1]
        for i in units:  # pre-activation < 0 on every input: h_{l−1} >= 0 for l >= 2, W = 0 for l = 1
            params[layer - 1][i, :m_in] = -np.abs(params[layer - 1][i, :m_in]) if layer > 1 else 0.0
            params[layer - 1][i, m_in] = -1.0 - abs(params[layer - 1][i, m_in])
    n = widths[-2] + 1
    x, xt = unit_rows(rng, n, widths[0]), unit_rows(rng, 3, widths[0])
    y = rng.standard_normal((n, widths[-1]))
    return net, params, x, xt, y


def _rel(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


@functools.lru_cache(maxsize=None)
def _oracle(net_name: str, sigma_name: str, rho_tilde: float | None = None):
    net, p, x, xt, y = _case(net_name)
    lam = None
    if rho_tilde is not None:
        lam = np.asarray(to_host(cross_entropy_metric(net.output(p, x), rho_tilde)))
    orc = O.oracle("layer", net, p, x, 0.0, sigma=_sigma(sigma_name, net.depth), output_metric=lam)
    return orc, lam


def _signals(net_name: str, backend):
    net, p, x, xt, y = _case(net_name)
    pb = [to_device(a, backend) for a in p]
    s, st = net.signals(pb, to_device(x, backend)), net.signals(pb, to_device(xt, backend))
    return net, pb, s, st, to_device(y, backend)


def _structured(net_name: str, sigma_name: str, rho: float, backend):
    """Δθ (flat), Θ̄(x, x), Θ̄(x′, x) of LayerWiseFisher on ``backend``, as host arrays."""
    net, pb, s, st, yb = _signals(net_name, backend)
    fim = LayerWiseFisher(net, rho, sigma=_sigma(sigma_name, net.depth))
    d = to_host(net.flatten(fim.direction(pb, None, yb, s)))
    return np.asarray(d), np.asarray(to_host(theta_bar(fim, s))), np.asarray(to_host(theta_bar(fim, s, st)))


@pytest.mark.parametrize("net_name", list(NETS))
def test_the_cases_have_a_singular_layer_kernel(net_name):
    """The premise: some Θ_l (the oracle's J_l J_lᵀ/N) is singular, while G's pseudo-inverse is well
    conditioned on its range (so 1e-8 is a meaningful tolerance)."""
    net, p, x, _, _ = _case(net_name)
    j = O.jacobian(O.Net.of(net), p, x)
    sizes = np.cumsum([0] + O.Net.of(net).layer_sizes())
    ranks = [np.linalg.matrix_rank(j[:, a:b]) for a, b in zip(sizes[:-1], sizes[1:])]
    assert min(ranks) < j.shape[0], ranks
    for sigma_name in SIGMAS:
        assert _oracle(net_name, sigma_name)[0].condition() < 1e8


@pytest.mark.parametrize("sigma_name", SIGMAS)
@pytest.mark.parametrize("net_name", list(NETS))
def test_zero_damping_is_the_pseudo_inverse(net_name, sigma_name, backend):
    """ρ = 0: Δθ = G⁺∇L and Θ̄(x′, x) = J(x′)G⁺J(x)ᵀ/N, with no warning."""
    net, p, x, xt, y = _case(net_name)
    orc, _ = _oracle(net_name, sigma_name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        d, c_train, c_test = _structured(net_name, sigma_name, 0.0, backend)
    assert _rel(d, orc.direction(y)) < 1e-8
    assert _rel(c_train, orc.theta_bar()) < 1e-8
    assert _rel(c_test, orc.theta_bar(xt)) < 1e-8


def _rhos(net_name: str, sigma_name: str) -> tuple:
    """ρ → 0 for the damped comparison. The damped path solves (Ω + ρI)z = 1 ⊗ e with the
    non-symmetric Ω = (Σ ⊗ I)·blockdiag(Θ_l) (S.73–S.74). For the tri-diagonal Σ at L = 3,
    (Σ⁻¹)_33 = 0, and a singular Θ_3 gives Ω a Jordan block at 0: (Ω + ρI)⁻¹ grows like 1/ρ²
    and, although the 1/ρ² part cancels in J_3ᵀz in exact arithmetic, the damped path carries a
    rounding error ~eps·‖Ω‖²/ρ² (O(1) at ρ = 1e-10 here, against the explicit (G + ρI)⁻¹). So
    that case is compared at ρ = 1e-5, 1e-6, 1e-7, where the damped path is still accurate."""
    widths, dead = NETS[net_name]
    if sigma_name == "tridiag" and len(widths) == 4 and len(widths) - 2 in dead:
        return (1e-5, 1e-6, 1e-7)
    return (1e-6, 1e-8, 1e-10)


def _linear_in_rho(diffs: np.ndarray, rhos) -> bool:
    """diff(ρ) = c·ρ within a factor 2, c from the largest ρ, up to the damped path's own rounding:
    solving with Ω + ρI (κ ~ ‖Ω‖/ρ) leaves a relative error of order eps/ρ (2e-6 at ρ = 1e-10;
    ~1e-7 is what it shows), the floor of any damped solve at that ρ."""
    rhos = np.asarray(rhos)
    c = diffs[0] / rhos[0]
    floor = O.EPS / rhos
    return bool(np.all((diffs > c * rhos / 2 - floor) & (diffs < 2 * c * rhos + floor)))


@pytest.mark.parametrize("sigma_name", SIGMAS)
@pytest.mark.parametrize("net_name", ["C1", "C2", "C2-two-dead", "L4"])
def test_damped_path_converges_to_the_zero_damping_step(net_name, sigma_name, backend):
    """(G + ρI)⁻¹∇L − G⁺∇L = −ρ G⁺²∇L + O(ρ²) (∇L lies in the range of G): the damped structured
    path approaches the ρ = 0 one linearly in ρ, direction and Θ̄ alike."""
    ref = _structured(net_name, sigma_name, 0.0, backend)
    rhos = _rhos(net_name, sigma_name)
    diffs = np.array([[_rel(a, b) for a, b in zip(_structured(net_name, sigma_name, rho, backend), ref)]
                      for rho in rhos])  # rows: ρ; columns: Δθ, Θ̄(x, x), Θ̄(x′, x)
    for k in range(3):
        assert _linear_in_rho(diffs[:, k], rhos), diffs


@pytest.mark.parametrize("sigma_name", SIGMAS)
@pytest.mark.parametrize("net_name", ["C2", "C2-two-dead", "L4-C2"])
def test_cross_entropy_zero_damping_is_the_pseudo_inverse(net_name, sigma_name, backend):
    """Cross-entropy (S.159, S.164): G = Sᵀ(Σ ⊗ Λ̃)S/N; at ρ = 0 the step is G⁺Jᵀv/N. Even Σ = I needs
    the general path here: Θ_l⁺Λ̃⁻¹ (S.167) is G⁺ only on an invertible Θ_l."""
    net, pb, s, _, _ = _signals(net_name, backend)
    orc, lam = _oracle(net_name, sigma_name, 0.3)
    v = np.random.default_rng(3).standard_normal((net.n_outputs, s.n))
    fim = LayerWiseFisher(net, 0.0, sigma=_sigma(sigma_name, net.depth))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        got = fim.precondition(s, to_device(v, backend), to_device(lam, backend))
    assert _rel(np.asarray(to_host(net.flatten(got))), orc.precondition(v)) < 1e-8


@pytest.mark.parametrize("sigma_name", ["tridiag", "dense"])
def test_cross_entropy_damped_path_converges(sigma_name, backend):
    """The damped cross-entropy path approaches the ρ = 0 one linearly in ρ."""
    net, pb, s, _, _ = _signals("C2", backend)
    lam = to_device(_oracle("C2", sigma_name, 0.3)[1], backend)
    v = to_device(np.random.default_rng(3).standard_normal((net.n_outputs, s.n)), backend)

    def step(rho):
        fim = LayerWiseFisher(net, rho, sigma=_sigma(sigma_name, net.depth))
        return np.asarray(to_host(net.flatten(fim.precondition(s, v, lam))))

    ref = step(0.0)
    rhos = _rhos("C2", sigma_name)
    diffs = np.array([_rel(step(rho), ref) for rho in rhos])
    assert _linear_in_rho(diffs, rhos), diffs
