"""The extension figures of issue 16 (parts 1 and 3): `ngdref reproduce finite-width` and
`ngdref reproduce kfac-multi-output` end to end at --quick, their measurements against explicit
twins (tests/oracles.py: P×P metrics, literal Jacobians), the power-law fit and the block-structure
measure on synthetic data with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ngdref.experiments.figures import get_figure
from ngdref.experiments.figures.finite_width import finite_width_cell, power_law_fit
from ngdref.experiments.figures.kfac_multi_output import block_structure

from . import oracles

EXTENSIONS = ("finite-width", "kfac-multi-output", "sub-unit")


@pytest.fixture
def quick(reproduced):
    """Each extension figure once through `ngdref reproduce NAME --quick` (conftest's session-wide
    ``reproduced``, shared with test_reproduce and test_figures): (folder, JSON record)."""
    return lambda name: reproduced(name)[:2]


@pytest.mark.parametrize("name", EXTENSIONS)
def test_quick_extension_runs_end_to_end(quick, name):
    out, rec = quick(name)
    fig = get_figure(name)
    assert fig.title.startswith("Extension:") and rec["title"] == fig.title
    assert rec["rows"] and rec["claims"]
    assert all({"claim", "measured", "paper", "holds"} <= set(c) for c in rec["claims"])
    assert rec["cells"]["total"] == len(list((out / "cells").glob("*.json")))
    assert (out / f"{name}.csv").stat().st_size > 0


def test_finite_width_quick_records(quick):
    _, rec = quick("finite-width")
    cfg = rec["config"]
    width_rows = [r for r in rec["rows"] if r["sweep"] == "width"]
    assert len(width_rows) == len(cfg["widths"]) * len(cfg["seeds"]) * len(cfg["fims"])
    damping_rows = [r for r in rec["rows"] if r["sweep"] == "damping"]
    assert {r["damping"] for r in damping_rows} == set(cfg["dampings"])
    # at ρ = 0 block-diagonal NGD's Θ̄ is exactly L·I at every width with M ≥ N (each layer's J_l G_l⁺ J_lᵀ/N
    # is the projection onto the range of J_l, rank N): its distance from αI is round-off, no power law
    assert all(r["theta_bar_dev"] < 1e-10 for r in width_rows if r["fim"] == "bd")
    assert rec["summary"]["fit_notes"]["theta_bar_dev"]["bd"] == "≡ 0 (round-off)"
    # the lazy-training gap shrinks with width for block-diagonal NGD (the fitted κ is positive)
    assert rec["summary"]["fits"]["param_change"]["bd"]["kappa"] > 0


def test_finite_width_dampings_are_each_approximations_default():
    """The width sweep's ρ: unit-wise (default 1e-12) takes the config's ``damping``, the others their
    ρ = 0 (pseudo-inverse), whatever the config's ``damping`` is."""
    from ngdref.experiments.figures.overrides import apply_overrides, parse_set

    fig = get_figure("finite-width")
    cfg = apply_overrides(fig, fig.config(quick=True), parse_set(["damping=1e-9"]))
    rho = {c.params["fim"]: c.params["damping"] for c in fig.cells(cfg, "numpy", "float64")
           if c.params["sweep"] == "width"}
    assert rho == {"exact": 0.0, "bd": 0.0, "tridiag": 0.0, "kfac": 0.0, "unit": 1e-9}


def test_kfac_multi_output_quick_structure(quick):
    _, rec = quick("kfac-multi-output")
    n = rec["config"]["n_train"]
    for r in rec["rows"]:
        if r["variant"] == "no bias" and r["width"] >= r["classes"] * n:
            # M ≥ CN: every hidden-layer B_l = δ_lδ_lᵀ (CN × CN) is invertible and Θ̄ = NL·I exactly
            assert r["structure"] == "isotropic" and r["alpha_over_nl"] == pytest.approx(1.0, abs=1e-8), r
        if r["variant"] == "no bias" and r["width"] < r["classes"] * n:
            assert r["structure"] != "isotropic", r


# ---- the measurements against explicit twins ----------------------------------------------------


def _flat_step(params, direction, eta):
    """θ_1 = θ_0 − η Δθ with Δθ flat in the oracles' order (layer → unit → weights, bias)."""
    out, start = [], 0
    for p in params:
        p = np.asarray(p, dtype=np.float64)
        out.append(p - eta * direction[start:start + p.size].reshape(p.shape))
        start += p.size
    return out


#: α of the explicit-step case (L = 3, ReLU, M = 8, N = 5, no bias), from the paper, not from the cell:
#: exact NGD 1 (Eq. 13), block-diagonal L (Section 4.1), K-FAC without bias NL (S.107), unit-wise
#: Σ_{l<L} γ_l M_l + 1 = 2·(8/2) + 1 (S.128, γ_l = 1/2 for ReLU, plus the output unit's exact I)
STEP_ALPHA = {"exact": 1.0, "bd": 3.0, "kfac": 5 * 3.0, "unit": 2 * 8 / 2 + 1.0}


@pytest.mark.parametrize("fim,rho", [("exact", 0.0), ("bd", 0.0), ("kfac", 0.0), ("unit", 1e-3)])
def test_finite_width_cell_matches_the_explicit_step(fim, rho):
    """One NGD step by the oracle's P×P G (pseudo-)inverse and literal Jacobian, with the paper's α
    (STEP_ALPHA) and η = c/α, gives the cell's α, η and five numbers."""
    from ngdref.backend import get_backend
    from ngdref.experiments.figures.cells import dataset, network

    data = {"source": "gaussian", "classes": [0, 1], "n_train": 5, "n_test": 0, "seed": 3, "input_dim": 6}
    net_cfg = {"width": 0, "depth": 3, "activation": "relu", "shift": 1.0, "sigma_w2": 2.0, "sigma_b2": 0.0}
    p = {"network": net_cfg, "data": data, "lr_scale": 1.0, "fim": fim, "width": 8, "seed": 1, "damping": rho,
         "sweep": "width", "backend": "numpy", "dtype": "float64"}
    got = finite_width_cell(p)
    ds = dataset(data)
    net = network(net_cfg, ds.input_dim, 1, width=8)
    params0 = [np.asarray(q) for q in net.init(1, get_backend("numpy"))]
    x, y = ds.x_train, ds.y_train
    alpha = STEP_ALPHA[fim]
    eta = p["lr_scale"] / alpha  # η = c/α (Corollary 4.2)
    assert got["alpha"] == pytest.approx(alpha, rel=1e-12) and got["lr"] == pytest.approx(eta, rel=1e-12)
    o0 = oracles.oracle(fim, net, params0, x, rho)
    tb0 = o0.theta_bar()
    f0 = oracles.outputs(o0.net, params0, x)
    params1 = _flat_step(params0, o0.direction(y), eta)
    o1 = oracles.oracle(fim, net, params1, x, rho)
    f1 = oracles.outputs(o1.net, params1, x)
    loss = lambda f: float(np.sum((f - y) ** 2) / (2 * len(y)))  # noqa: E731
    flin1 = f0 - eta * (tb0 @ (f0 - y))
    dev = float(np.max(np.abs(np.linalg.eigvalsh((tb0 + tb0.T) / 2) / alpha - 1)))
    change = float(np.linalg.norm(o1.theta_bar() - tb0, 2)) / alpha
    d_theta = math.sqrt(sum(float(np.sum((a - b) ** 2)) for a, b in zip(params1, params0)))
    norm0 = math.sqrt(sum(float(np.sum(a**2)) for a in params0))
    # relative 1e-10; an absolute floor of 1e-10 only for the values that are rounding-level (an isotropic Θ̄)
    assert got["loss_ratio"] == pytest.approx(loss(f1) / loss(f0), rel=1e-10)
    assert got["theta_bar_dev"] == pytest.approx(dev, rel=1e-10, abs=1e-10)
    assert got["theta_bar_change"] == pytest.approx(change, rel=1e-10, abs=1e-10)
    assert got["param_change"] == pytest.approx(d_theta / norm0, rel=1e-10)
    assert got["flin_gap"] == pytest.approx(float(np.max(np.abs(f1 - flin1))), rel=1e-10, abs=1e-12)


def test_power_law_fit_recovers_a_known_exponent():
    widths = np.repeat([256, 512, 1024, 2048, 4096], 5)
    exact = power_law_fit(widths, 3.0 * widths ** -0.5)
    assert exact["kappa"] == pytest.approx(0.5, abs=1e-12) and exact["prefactor"] == pytest.approx(3.0, rel=1e-10)
    assert exact["high"] - exact["low"] < 1e-10
    rng = np.random.default_rng(0)
    noisy = 0.7 * widths ** -1.0 * np.exp(0.2 * rng.standard_normal(widths.size))
    fit = power_law_fit(widths, noisy)
    assert fit["low"] < 1.0 < fit["high"] and fit["high"] - fit["low"] < 0.3 and fit["n"] == widths.size
    # the interval is Student's t with n − 2 degrees of freedom times the slope's standard error
    from scipy import stats

    assert fit["high"] - fit["kappa"] == pytest.approx(stats.t.ppf(0.975, widths.size - 2) * fit["stderr"])
    assert power_law_fit([256, 512], [1.0, 0.5]) is None  # two points: no interval
    assert power_law_fit([256, 512, 1024], [1.0, None, 0.2]) is None  # a missing value is not skipped


def test_block_structure_on_synthetic_matrices():
    n, c = 4, 3
    assert block_structure(7.0 * np.eye(c * n), c)["structure"] == "isotropic"
    blocks = np.kron(np.diag([1.0, 2.0, 4.0]), np.eye(n))  # αI within each output, α differing
    s = block_structure(blocks, c)
    assert s["structure"] == "block-isotropic" and s["off_block"] == 0.0 and s["block_dev"] == 0.0
    assert s["block_alphas"] == [1.0, 2.0, 4.0] and s["alpha_spread"] == pytest.approx(3.0 / (7.0 / 3.0))
    coupled = np.eye(c * n)
    coupled[0, n] = coupled[n, 0] = 0.5  # one cross-output entry pair
    s = block_structure(coupled, c)
    assert s["off_block"] == pytest.approx(math.sqrt(2 * 0.25) / math.sqrt(c * n + 2 * 0.25))
    assert s["block_dev"] == 0.0 and s["structure"] == "neither"
    assert s["iso_dev"] == pytest.approx(0.5)  # eigenvalues 1 ± 0.5
    inner = np.eye(c * n) + 0.3 * np.kron(np.eye(c), np.ones((n, n)))  # αI + β11ᵀ within each block
    s = block_structure(inner, c)
    assert s["off_block"] == 0.0 and s["structure"] == "neither"


def test_kfac_multi_output_checks_gaussian_m0_only_where_gaussian_inputs_run():
    """``gaussian_m0 < n_train`` (M0 < N) is the Gaussian variants' premise: refused with one of them in the sweep,
    not read (so not refused) when only the MNIST variants run."""
    from ngdref.experiments.figures.kfac_multi_output import FIGURE, config

    bad = {**config(quick=True), "gaussian_m0": 40}  # n_train = 20
    assert "gaussian_m0 = 40 must be < n_train = 20" in FIGURE.check(bad)
    mnist_only = {**bad, "variants": ["no bias", "bias folded"]}
    assert FIGURE.check(mnist_only) is None
    text = FIGURE.caption(mnist_only, [], {})  # and the caption names only the variants that ran
    assert "Gaussian" not in text and "Forster" not in text and "bias folded into the Kronecker factor" in text
    assert "M_0 = 10 < N" in FIGURE.caption(config(quick=True), [], {})
