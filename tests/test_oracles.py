"""The explicit oracles of tests/oracles.py checked on their own: against finite differences,
NumPy's pseudo-inverse, the structure the paper gives each G, and the paper's finite-width
identities on the training set (Eq. 13, Theorem 4.1/S.89–S.90, S.107, S.137).

Nothing here calls a Fisher approximation of the library: these tests make the oracles a
reference worth comparing the structured paths with.
"""

from __future__ import annotations

import numpy as np
import pytest

from ngdref import Network

from . import oracles as O
from .conftest import NETWORK_CASES, unit_rows

CASES = NETWORK_CASES


def _net(widths, act, sb2, shift=0.7):
    return Network.build(widths[0], list(widths[1:-1]), len(widths) - 1, widths[-1], act, shift=shift,
                         sigma_w2=1.7, sigma_b2=sb2)


@pytest.mark.parametrize("widths,act,sb2", CASES)
def test_forward_is_the_libraries_network(widths, act, sb2, rng):
    """The oracle's Eq. 1 and ``Network.output`` are the same function (else nothing below means anything)."""
    net = _net(widths, act, sb2)
    p = net.init(3)
    x = unit_rows(rng, 4, widths[0])
    np.testing.assert_allclose(O.outputs(O.Net.of(net), p, x), net.output(p, x), rtol=1e-13, atol=1e-14)
    assert O.Net.of(net).n_params == net.n_params


def _central_differences(fn, theta, eps=1e-6):
    cols = []
    for i in range(theta.size):
        tp, tm = theta.copy(), theta.copy()
        tp[i] += eps
        tm[i] -= eps
        cols.append((fn(tp) - fn(tm)) / (2 * eps))
    return np.stack(cols, axis=1)


@pytest.mark.parametrize("widths,act,sb2", CASES)
def test_jacobian_matches_central_differences(widths, act, sb2, rng):
    """J (CN × P, output-major rows, layer → unit → weights then bias columns) is ∂f/∂θ of the network."""
    net = _net(widths, act, sb2)
    p = net.init(3)
    x = unit_rows(rng, 3, widths[0])
    j = O.jacobian(O.Net.of(net), p, x)
    assert j.shape == (widths[-1] * 3, net.n_params)
    theta = np.asarray(net.flatten(p), dtype=np.float64)
    j_fd = _central_differences(lambda t: net.output(net.unflatten(t), x).T.reshape(-1), theta)
    assert np.max(np.abs(j - j_fd)) < 1e-7 * max(1.0, np.max(np.abs(j)))


def test_pseudo_inverse_convention():
    """pinv = NumPy's Hermitian pinv with rtol = n·eps, on an indefinite, rank-deficient matrix (Penrose)."""
    rng = np.random.default_rng(0)
    b = rng.standard_normal((9, 5))
    g = b @ np.diag([3.0, 1.0, 0.2, -0.7, -2.0]) @ b.T  # rank 5, two negative eigenvalues
    gp = O.pinv(g)
    np.testing.assert_allclose(gp, np.linalg.pinv(g, rtol=9 * O.EPS, hermitian=True), atol=1e-12)
    np.testing.assert_allclose(g @ gp @ g, g, atol=1e-11)
    np.testing.assert_allclose(gp @ g @ gp, gp, atol=1e-11)
    np.testing.assert_allclose(g @ gp, (g @ gp).T, atol=1e-12)
    assert np.linalg.matrix_rank(gp) == 5
    np.testing.assert_allclose(O.inverse(g + 4.0 * np.eye(9), 4.0), np.linalg.inv(g + 4.0 * np.eye(9)))


def test_masks_have_the_papers_blocks():
    """Layer blocks of sizes M_l(M_{l−1}+1) (Eq. 15), unit blocks of size M_{l−1}+1 (Eq. 23), Eq. 19's Σ."""
    net = O.Net.of(Network((3, 4, 2), "tanh", 2.0, 0.5))  # P = 4·4 + 2·5 = 26
    assert net.n_params == 26
    bd = O.mask(net, "bd")
    assert bd[:16, :16].all() and bd[16:, 16:].all() and not bd[:16, 16:].any()
    unit = O.mask(net, "unit")
    blocks = [(0, 4), (4, 8), (8, 12), (12, 16), (16, 21), (21, 26)]
    want = np.zeros((26, 26))
    for a, b in blocks:
        want[a:b, a:b] = 1.0
    np.testing.assert_array_equal(unit, want)
    np.testing.assert_array_equal(O.mask(net, "diag"), np.eye(26))
    np.testing.assert_array_equal(O.mask(net, "exact"), np.ones((26, 26)))
    np.testing.assert_array_equal(O.tridiagonal_sigma(4), [[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]])
    sig = np.array([[2.0, -1.0], [-1.0, 3.0]])
    lw = O.mask(net, "layer", sigma=sig)
    assert lw[0, 0] == 2.0 and lw[0, 20] == -1.0 and lw[20, 3] == -1.0 and lw[25, 16] == 3.0
    assert net.is_bias_param().sum() == 6 and np.nonzero(net.is_bias_param())[0][0] == 3  # bias after the weights


def _tiny(widths=(6, 8, 7, 1), act="tanh", sb2=0.3, n=4, seed=0):
    rng = np.random.default_rng(seed)
    net = Network(widths, act, 2.0, sb2)
    return net, net.init(seed + 1), unit_rows(rng, n, widths[0]), unit_rows(rng, 3, widths[0])


def test_metrics_are_psd_and_carry_the_damping_once():
    """Every MSE metric is symmetric PSD at ρ = 0; its spectrum moves by exactly ρ (masked ones) and
    K-FAC's factors each get ρ: G_kfac(ρ) restricted to a layer is (B* + ρ)⊗(A* + ρ)."""
    net, p, x, _ = _tiny(sb2=0.3)
    for name in ("exact", "bd", "unit", "diag", "quasi-diag", "kfac"):
        g0 = O.metric(name, net, p, x, 0.0)
        np.testing.assert_allclose(g0, g0.T, atol=1e-14)
        assert np.linalg.eigvalsh(g0)[0] > -1e-12 * np.abs(g0).max()
    rho = 0.37
    for name in ("exact", "bd", "unit", "diag"):
        shift = np.linalg.eigvalsh(O.metric(name, net, p, x, rho)) - np.linalg.eigvalsh(O.metric(name, net, p, x, 0.0))
        np.testing.assert_allclose(shift, rho, atol=1e-12)
    # K-FAC folded, output layer (C = 1): B*_L = 1/N, block = (1/N + ρ)(A*_{L−1} + ρ)
    nt = O.Net.of(net)
    g = O.metric("kfac", net, p, x, rho, bias="folded")
    last = slice(nt.n_params - nt.fan(nt.depth), nt.n_params)
    hs, _ = O.forward(nt, p, x)
    abar = np.concatenate([np.sqrt(2.0 / 7) * hs[-1], np.full((4, 1), np.sqrt(0.3))], axis=1)
    np.testing.assert_allclose(g[last, last], (1 / 4 + rho) * (abar.T @ abar / 4 + rho * np.eye(8)), rtol=1e-13)


def test_kfac_of_one_sample_is_block_diagonal():
    """N = 1, C = 1: (δδᵀ) ⊗ (āᵀā) = ∇_{θ_l}fᵀ∇_{θ_l}f, so K-FAC (no bias, or folded bias) is BD."""
    for sb2, bias in ((0.0, "separate"), (0.4, "folded")):
        net, p, x, _ = _tiny(sb2=sb2, n=1)
        np.testing.assert_allclose(O.metric("kfac", net, p, x, bias=bias), O.metric("bd", net, p, x), atol=1e-14)
    # separate biases drop the weight–bias coupling inside each layer's block: not BD
    net, p, x, _ = _tiny(sb2=0.4, n=1)
    assert np.max(np.abs(O.metric("kfac", net, p, x) - O.metric("bd", net, p, x))) > 1e-3


def test_layerwise_with_all_ones_sigma_is_exact():
    """Σ = c·11ᵀ gives G = c F + ρI (S.91)."""
    net, p, x, _ = _tiny()
    for c in (1.0, 2.5):
        np.testing.assert_allclose(
            O.metric("layer", net, p, x, 0.1, sigma=c * np.ones((3, 3))),
            c * O.metric("exact", net, p, x, 0.0) + 0.1 * np.eye(net.n_params), rtol=1e-14, atol=1e-15,
        )


def test_quasi_diagonal_metric_keeps_diagonal_and_bias_couplings():
    """G_qd has F + ρI's diagonal and bias row per unit; two weights of a unit couple by G_bj G_bk / G_bb."""
    net, p, x, _ = _tiny(act="tanh", sb2=0.3)
    rho = 1e-3
    gq = O.metric("quasi-diag", net, p, x, rho)
    f = O.metric("exact", net, p, x, rho)
    sl = net.unit_slice(2, 4)
    np.testing.assert_allclose(np.diag(gq)[sl], np.diag(f)[sl], rtol=1e-13)
    np.testing.assert_allclose(gq[sl, sl][-1], f[sl, sl][-1], rtol=1e-13)
    gb = f[sl, sl][-1]
    assert gq[sl, sl][0, 1] == pytest.approx(gb[0] * gb[1] / gb[-1], rel=1e-12)
    other = net.unit_slice(2, 5)
    assert not gq[sl, other].any()  # no coupling across units
    no_bias = Network((6, 8, 7, 1), "tanh", 2.0, 0.0)
    pn = no_bias.init(1)
    np.testing.assert_array_equal(O.metric("quasi-diag", no_bias, pn, x), O.metric("diag", no_bias, pn, x))


# ---- the paper's identities on the training set, at finite width ------------------------------
def test_exact_theta_bar_is_identity_eq13():
    """ρ = 0, JJᵀ invertible: Θ̄(x, x) = J F⁺ Jᵀ/N = I (Eq. 13); ρ > 0: Θ(Θ + ρI)⁻¹ (push-through)."""
    net, p, x, _ = _tiny(widths=(6, 8, 7, 2))
    np.testing.assert_allclose(O.oracle("exact", net, p, x).theta_bar(), np.eye(8), atol=1e-10)
    theta = O.ntk(net, p, x, x)
    np.testing.assert_allclose(O.oracle("exact", net, p, x, 0.2).theta_bar(),
                               theta @ np.linalg.inv(theta + 0.2 * np.eye(8)), atol=1e-12)


@pytest.mark.parametrize("act,sb2", [("tanh", 0.3), ("relu", 0.0), ("erf", 0.5)])
def test_layerwise_theta_bar_is_alpha_identity(act, sb2):
    """Θ_l invertible, Σ nonsingular: Θ̄(x, x) = (1ᵀΣ⁻¹1) I exactly (S.89–S.90, Theorem 4.1); BD α = L,
    tri-diagonal L = 3: α = 1 (Lemma 4.3)."""
    net, p, x, _ = _tiny(widths=(6, 8, 7, 1), act=act, sb2=sb2)
    n = x.shape[0]
    np.testing.assert_allclose(O.oracle("bd", net, p, x).theta_bar(), 3.0 * np.eye(n), atol=1e-9)
    np.testing.assert_allclose(O.oracle("tridiag", net, p, x).theta_bar(), np.eye(n), atol=1e-9)
    sigma = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 1.5]])
    alpha = float(np.ones(3) @ np.linalg.solve(sigma, np.ones(3)))
    np.testing.assert_allclose(O.oracle("layer", net, p, x, sigma=sigma).theta_bar(), alpha * np.eye(n), atol=1e-9)


def test_kfac_theta_bar_is_NL_identity_s107():
    """C = 1, M0 >= N, full-rank Gram matrices: K-FAC's Θ̄(x, x) = N L I (S.107), also with the bias
    folded into A* (S.123, first paragraph); separate bias blocks (S.123) add the output bias's 11ᵀ."""
    net, p, x, _ = _tiny(widths=(6, 8, 7, 1), sb2=0.0)
    n = x.shape[0]
    np.testing.assert_allclose(O.oracle("kfac", net, p, x).theta_bar(), n * 3 * np.eye(n), atol=1e-8)
    netb, pb, xb, _ = _tiny(widths=(6, 8, 7, 1), sb2=0.4)
    np.testing.assert_allclose(O.oracle("kfac", netb, pb, xb, bias="folded").theta_bar(), n * 3 * np.eye(n), atol=1e-8)
    # separate: weights N L I; a hidden layer's bias block N δ_l(δ_lᵀδ_l)⁺δ_lᵀ = N I; the output bias 11ᵀ
    sep = O.oracle("kfac", netb, pb, xb, bias="separate").theta_bar()
    np.testing.assert_allclose(sep, n * (3 + 2) * np.eye(n) + np.ones((n, n)), atol=1e-8)


def test_unit_wise_theta_bar_counts_alive_units_s137():
    """ρ = 0: Θ̄(x, x) = Σ_{l,i} diag(1[δ_{l,i}(x_n) ≠ 0]) (S.137), the output unit included."""
    net = Network((8, 12, 10, 1), "relu", 2.0, 1.5)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 8))
    p = net.init(4)
    _, _, deltas = O.backward(O.Net.of(net), p, x)
    alive = sum(np.count_nonzero(d[0], axis=1) for d in deltas)
    np.testing.assert_allclose(O.oracle("unit", net, p, x).theta_bar(), np.diag(alive.astype(float)), atol=1e-9)
