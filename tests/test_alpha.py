"""Analytic α of the isotropic condition (Theorem 4.1, Lemma 4.3, S.107, S.111, S.128, S.157).

NumPy only, on purpose: α and the order parameters are host formulas (floats, small float64 Σ);
the one finite network (unit-wise α vs alive-unit counts at M = 1024) is their reference. The
structured Θ̄ = αI checks run on every backend in test_fisher*.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ngdref import Network
from ngdref.errors import ConfigError, NgdrefError
from ngdref.fisher import get_fisher
from ngdref.fisher.kfac import kfac_alpha
from ngdref.fisher.layerwise import (
    layerwise_alpha,
    layerwise_weights,
    tridiagonal_alpha,
    tridiagonal_alpha_closed_form,
    tridiagonal_sigma,
)
from ngdref.fisher.unitwise import shifted_relu_unit_alpha, unit_alpha
from ngdref.kernels import layer_gammas, order_parameters

from .conftest import unit_rows


def _fig_s1_net(act, width=4096, shift=1.0):
    """Figure S.1: L = 3, σ_w² = 2, σ_b² = 0.5, MNIST inputs (M0 = 784), C = 1."""
    return Network.build(784, width, 3, 1, act, shift=shift, sigma_w2=2.0, sigma_b2=0.5)


@pytest.mark.parametrize("act,expected", [("tanh", 2.0), ("relu", 1.0), ("shifted-relu", 1.723)])
def test_figure_s1_unit_alpha(act, expected):
    m = 4096
    ratio = unit_alpha(_fig_s1_net(act)) / m
    assert math.floor(ratio * 1000) / 1000 == pytest.approx(expected, abs=1e-12)  # the paper truncates: 1.723…
    # the output layer adds exactly 1 (S.137's l = L term)
    assert unit_alpha(_fig_s1_net(act), include_output_layer=True) == pytest.approx(ratio * m + 1, abs=1e-9)


def test_shifted_relu_value_and_closed_form():
    net = _fig_s1_net("shifted-relu")
    q = order_parameters(net)
    assert q[0] == pytest.approx(2 / 784 + 0.5)
    assert unit_alpha(net) / 4096 == pytest.approx(1.72396, abs=1e-5)
    for s in (0.0, 0.5, 1.0, 2.0):
        n = _fig_s1_net("shifted-relu", width=300, shift=s)
        assert shifted_relu_unit_alpha(n) == pytest.approx(unit_alpha(n), rel=1e-14)
        assert shifted_relu_unit_alpha(n, include_output_layer=True) == pytest.approx(unit_alpha(n) + 1, rel=1e-14)
    # s = 0 is ReLU: Σ M_l / 2 (Section C.3.3)
    assert shifted_relu_unit_alpha(_fig_s1_net("shifted-relu", 300, 0.0)) == pytest.approx(300.0)
    assert shifted_relu_unit_alpha(_fig_s1_net("relu", 300)) == pytest.approx(300.0)
    with pytest.raises(ConfigError):
        shifted_relu_unit_alpha(_fig_s1_net("tanh", 300))


def test_gammas():
    assert layer_gammas(_fig_s1_net("tanh", 16)) == [1.0, 1.0]
    assert layer_gammas(_fig_s1_net("relu", 16)) == [0.5, 0.5]
    g = layer_gammas(_fig_s1_net("shifted-relu", 16))
    assert 0.5 < g[1] < g[0] < 1.0  # q grows with depth, so fewer units stay active


def test_tanh_order_parameters_converged():
    net = _fig_s1_net("tanh", 16)
    ref = order_parameters(net, order=300)
    np.testing.assert_allclose(order_parameters(net, order=64), ref, rtol=1e-7)  # default order
    np.testing.assert_allclose(order_parameters(net, order=128), ref, rtol=1e-11)


def test_unit_alpha_matches_finite_network_counts():
    """S.137/S.140: the per-sample count of units with δ_{l,i} ≠ 0 is ≈ Σ γ_l M_l (+ 1 for the output)."""
    rng = np.random.default_rng(3)
    x = unit_rows(rng, 6, 50)
    for act in ("relu", "shifted-relu"):
        net = Network.build(50, 1024, 3, 1, act, shift=1.0, sigma_w2=2.0, sigma_b2=0.5)
        s = net.signals(net.init(1), x)
        counts = sum(np.count_nonzero(d[0], axis=1) for d in s.delta)  # includes δ_L = 1
        expected = unit_alpha(net, include_output_layer=True)
        sd = math.sqrt(sum(g * (1 - g) * 1024 for g in layer_gammas(net)))
        assert abs(np.mean(counts) - expected) < 4 * sd  # binomial spread of the per-sample count


def test_unit_alpha_needs_one_output():
    with pytest.raises(ConfigError, match="C = 1"):
        unit_alpha(Network.build(8, 8, 3, 2, "relu"))


# --------------------------------------------------------------------------------------
# Layer-wise α
# --------------------------------------------------------------------------------------
def test_tridiagonal_sigma():
    np.testing.assert_array_equal(tridiagonal_sigma(3), [[1, 1, 0], [1, 1, 1], [0, 1, 1]])
    with pytest.raises(ConfigError):
        tridiagonal_sigma(0)


@pytest.mark.parametrize("L", range(3, 13))
def test_tridiagonal_alpha_closed_form_vs_direct(L):
    s, rem = divmod(L, 3)
    if rem == 2:
        with pytest.raises(NgdrefError, match="Lemma 4.3"):
            tridiagonal_alpha(L)
        with pytest.raises(NgdrefError, match="Lemma 4.3"):
            tridiagonal_alpha_closed_form(L)
        return
    expected = s if rem == 0 else s + 1  # Lemma 4.3
    assert tridiagonal_alpha(L) == pytest.approx(expected, abs=1e-12)
    assert tridiagonal_alpha_closed_form(L) == pytest.approx(tridiagonal_alpha(L), abs=1e-10)
    assert get_fisher("tridiag", Network.build(4, 4, L)).analytic_alpha(4) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("L", [5, 8])
def test_tridiagonal_singular_message(L):
    with pytest.raises(NgdrefError) as err:
        layerwise_alpha(tridiagonal_sigma(L))
    msg = str(err.value)
    assert "singular" in msg and "3s + 2" in msg and "Lemma 4.3" in msg


@pytest.mark.parametrize("a,b", [(2.0, 1.0), (3.0, -1.0), (1.0, 0.4), (0.5, 1.0), (-2.5, 1.0)])
def test_toeplitz_closed_form_general(a, b):
    for L in range(1, 9):
        sigma = a * np.eye(L) + b * (np.eye(L, k=1) + np.eye(L, k=-1))
        if abs(np.linalg.det(sigma)) < 1e-9:
            continue
        assert tridiagonal_alpha_closed_form(L, a, b) == pytest.approx(layerwise_alpha(sigma), rel=1e-9, abs=1e-9)


def test_layerwise_alpha_general():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 4))
    sigma = a @ a.T + np.eye(4)
    assert layerwise_alpha(sigma) == pytest.approx(np.ones(4) @ np.linalg.inv(sigma) @ np.ones(4))
    np.testing.assert_allclose(layerwise_weights(sigma), np.linalg.solve(sigma, np.ones(4)))
    assert layerwise_alpha(np.eye(5)) == 5  # BD, Section 4.1
    with pytest.raises(ConfigError, match="symmetric"):
        layerwise_alpha(a)
    with pytest.raises(ConfigError, match="square"):
        layerwise_alpha(np.ones((2, 3)))
    with pytest.raises(NgdrefError, match="singular"):
        layerwise_alpha(np.ones((3, 3)))  # Σ = 11ᵀ (exact NGD is the pseudo-inverse case, S.91)


def test_kfac_alpha():
    assert kfac_alpha(100, 3, 784) == 300  # S.107
    assert kfac_alpha(100, 3, 20, forster=True) == 220  # S.111
    assert kfac_alpha(100, 3, 99, bias=True) == 300
    assert kfac_alpha(100, 3) == 300
    with pytest.raises(NgdrefError, match="Forster"):
        kfac_alpha(100, 3, 20, bias=True, forster=True)
    with pytest.raises(NgdrefError, match="S.109"):
        kfac_alpha(100, 3, 98, bias=True)
    with pytest.raises(ConfigError):
        kfac_alpha(0, 3)


def test_each_approximation_reports_its_alpha():
    """α of every registered approximation from its own class (Eq. 13, Section 4.1, Lemma 4.3,
    Theorem 4.1, S.107, S.109, S.128 + the output unit); None where the paper gives none."""
    net = Network.build(30, 16, 4, 1, "relu", sigma_b2=0.5)
    assert get_fisher("exact", net).analytic_alpha(10) == 1
    assert get_fisher("bd", net).analytic_alpha(10) == 4
    assert get_fisher("tridiag", net).analytic_alpha(10) == 2
    assert get_fisher("layer", net, sigma=2 * np.eye(4)).analytic_alpha(10) == 2
    assert get_fisher("kfac", net, bias="folded").analytic_alpha(10) == 40
    assert get_fisher("kfac", net, bias="folded").analytic_alpha(31) == 124  # M0 + 1 = 31 >= N
    assert get_fisher("kfac", net, bias="folded").analytic_alpha(32) is None  # S.109: not isotropic
    assert get_fisher("kfac", net).analytic_alpha(10) is None  # separate bias blocks: 11ᵀ term
    assert get_fisher("unit", net).analytic_alpha(10) == pytest.approx(24.0 + 1.0)
    for name in ("gd", "diag", "quasi-diag"):
        fim = get_fisher(name, net)
        assert fim.analytic_alpha(10) is None and fim.alpha_note()
