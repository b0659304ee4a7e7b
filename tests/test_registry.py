"""One approximation, one class: a new approximation defined here, in one class and with no
other edit, is checked against its explicit oracle and appears in ``train``, ``isotropy``,
``predict --kernel empirical``, ``--help`` and the benchmark suite.

The example is the layer-wise FIM with Σ = 2I (Eq. 15): G = 2·blockdiag(∇_{θ_l}fᵀ∇_{θ_l}f)/N,
so α = 1ᵀΣ⁻¹1 = L/2 (Theorem 4.1) and Θ̄ = (L/2)·I at ρ = 0 on a wide enough network.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from ngdref.backend import get_backend, to_host
from ngdref.data import load_dataset
from ngdref.errors import ConfigError
from ngdref.fisher import (
    REGISTRY,
    FisherOption,
    FisherSpec,
    LayerWiseFisher,
    fisher_class,
    get_fisher,
    register,
    unregister,
)
from ngdref.network import Network
from ngdref_cli.main import cli

from . import oracles


class TwiceBlockDiagonal(LayerWiseFisher):
    """Layer-wise NGD with Σ = 2I (Eq. 15): α = L/2 (Theorem 4.1)."""

    spec = FisherSpec(
        name="bd2", title="block-diagonal, Σ = 2I", summary="layer-wise FIM with Σ = 2I; α = L/2",
        equations="Eq. 15-16", aliases=("twice-bd",), flops=LayerWiseFisher.spec.flops,
    )

    def __init__(self, network, damping=None, rtol=None):
        super().__init__(network, damping, rtol, sigma=2.0 * np.eye(network.depth))


@pytest.fixture
def bd2():
    register(TwiceBlockDiagonal)
    try:
        yield TwiceBlockDiagonal
    finally:
        unregister("bd2")


def _run(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_new_approximation_matches_its_oracle_and_alpha(bd2):
    net = Network((6, 9, 7, 1), "tanh", 2.0, 0.5)
    params = net.init(3, get_backend("numpy"))
    x = np.random.default_rng(0).standard_normal((5, 6))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.random.default_rng(1).standard_normal((5, 1))
    fim = get_fisher("twice-bd", net)  # the alias resolves
    assert type(fim) is bd2 and fim.analytic_alpha(5) == pytest.approx(1.5)
    ref = oracles.oracle("layer", net, params, x, 0.0, sigma=2.0 * np.eye(3))
    s = net.signals(params, x)
    got = np.asarray(to_host(net.flatten(fim.direction(params, x, y, s))))
    want = ref.direction(y)
    assert np.max(np.abs(got - want)) <= 1e-9 * np.max(np.abs(want))
    theta_bar = np.asarray(to_host(fim.coefficient(s)))
    assert np.max(np.abs(theta_bar - ref.theta_bar())) <= 1e-9 * np.max(np.abs(theta_bar))
    # ... and it is a different G from bd's: half of bd's step
    bd = np.asarray(to_host(net.flatten(get_fisher("bd", net).direction(params, x, y, s))))
    np.testing.assert_allclose(got, bd / 2.0, rtol=1e-10, atol=0)


def test_new_approximation_reaches_every_command(bd2, tmp_path):
    out = tmp_path / "train.json"
    r = _run(["train", "--fim", "bd2", "--data", "gaussian", "--n-train", "10", "--n-test", "4", "--input-dim", "12",
              "--width", "48", "--steps", "2", "--json", str(out)])
    assert r.exit_code == 0, r.output
    rec = json.loads(out.read_text())
    assert rec["summary"]["fim"]["name"] == "bd2"
    assert rec["summary"]["alpha"] == pytest.approx(1.5) and rec["summary"]["alpha_source"] == "analytic"
    assert rec["records"][-1]["train_loss"] < rec["records"][0]["train_loss"]

    out = tmp_path / "iso.json"
    r = _run(["isotropy", "--fim", "bd,bd2", "--widths", "32", "--data", "gaussian", "--n-train", "8",
              "--input-dim", "12", "--json", str(out)])
    assert r.exit_code == 0, r.output
    rows = {row["fim"]: row for row in json.loads(out.read_text())["rows"]}
    assert rows["bd2"]["alpha_analytic"] == pytest.approx(1.5)
    assert rows["bd2"]["alpha_measured"] == pytest.approx(rows["bd"]["alpha_measured"] / 2, rel=1e-10)

    out = tmp_path / "pred.json"
    r = _run(["predict", "--fim", "bd,bd2", "--kernel", "empirical", "--seeds", "1", "--width", "32",
              "--data", "gaussian", "--n-train", "8", "--n-test", "4", "--input-dim", "12", "--json", str(out)])
    assert r.exit_code == 0, r.output
    rows = {row["fim"]: row for row in json.loads(out.read_text())["rows"]}
    assert rows["bd2"]["mean"] == pytest.approx(rows["bd"]["mean"])  # Θ̄ scales by 1/2: f_∞ is the same

    for command in ("train", "isotropy", "predict"):
        help_text = " ".join(_run([command, "--help"]).output.split())
        assert "bd2 (block-diagonal, Σ = 2I)" in help_text, command


def test_new_approximation_is_benchmarked(bd2):
    from benchmarks import run_suite, suite_config

    cfg = suite_config("quick", widths=(16,), repeats=1, min_repeats=1, backends=("numpy",), fims=("bd2",))
    cfg.tiny = {"width": 4, "input_dim": 4, "n": 4}
    cfg.analytic_n = ()
    result = run_suite(cfg)
    timed = {(c["case"], c.get("path")) for c in result["cases"] if c.get("fim") == "bd2" and c["status"] == "ok"}
    assert {("coefficient", "structured"), ("direction", "structured"), ("step", "structured")} <= timed
    flops = [c["flops"] for c in result["cases"] if c.get("fim") == "bd2" and c.get("path") == "structured"]
    assert flops and all(f and f > 0 for f in flops)


def test_registry_refuses_duplicates_and_unknown_names(bd2):
    class Clash(TwiceBlockDiagonal):
        spec = FisherSpec(name="clash", title="t", summary="s", equations="e", aliases=("bd",))

    with pytest.raises(ValueError, match="already taken"):
        register(Clash)
    assert "clash" not in REGISTRY
    with pytest.raises(ConfigError, match="unknown Fisher approximation"):
        fisher_class("newton")
    r = CliRunner().invoke(cli, ["train", "--fim", "newton"])
    assert r.exit_code == 2 and "unknown --fim newton" in r.output


def test_spec_damping_policies_and_options():
    net = Network((4, 8, 1), "relu", 2.0, 0.0)
    assert get_fisher("unit", net).damping == 1e-12  # unit-wise's default lives in its spec (paper C.3)
    assert get_fisher("exact", net).damping == 0.0
    with pytest.raises(ConfigError, match="does not apply"):
        get_fisher("gd", net, 1e-3)
    assert fisher_class("gd").spec.applicable_damping(1e-3) == 0.0
    assert fisher_class("bd").spec.applicable_damping(1e-3) == 1e-3
    with pytest.raises(ConfigError, match="finite number"):
        get_fisher("exact", net, float("nan"))
    layer = fisher_class("layer").spec
    np.testing.assert_array_equal(layer.parse_options({"sigma": "1,0;0,1"})["sigma"], np.eye(2))
    with pytest.raises(ConfigError, match="needs its option sigma"):
        layer.parse_options({})
    with pytest.raises(ConfigError, match="does not apply to --fim bd"):
        fisher_class("bd").spec.parse_options({"sigma": "1"})
    with pytest.raises(ConfigError, match="one of separate, folded"):
        fisher_class("kfac").spec.parse_options({"bias": "both"})
    assert fisher_class("kfac").spec.parse_options({"bias": "folded"}) == {"bias": "folded"}


def test_every_registered_spec_is_complete():
    from ngdref.fisher.cost import Shape

    shape = Shape((6, 8, 8, 1), 5, True)
    for name, cls in REGISTRY.items():
        spec = cls.spec
        assert spec.name == name and spec.title and spec.summary and spec.equations, name
        assert spec.flops is not None, f"{name} has no FLOP model"
        for case in ("direction", "coefficient"):
            flops, formula = spec.flops(shape, 0.0)[case]
            assert flops > 0 and formula, (name, case)


def test_spec_declarations_match_the_objects():
    """What a spec declares holds for its objects: an α only where ``isotropic`` says so, and for
    C > 1 only where ``multi_output_alpha`` says so."""
    c1 = Network((5, 12, 10, 1), "tanh", 2.0, 0.0)
    c2 = Network((5, 12, 10, 2), "tanh", 2.0, 0.0)
    for name, cls in REGISTRY.items():
        if any(o.required for o in cls.spec.options):
            continue
        one, two = cls(c1), cls(c2)
        assert (one.analytic_alpha(4) is not None) == cls.spec.isotropic, name
        assert (two.analytic_alpha(4) is not None) == (cls.spec.isotropic and cls.spec.multi_output_alpha), name
    layer = fisher_class("layer")
    assert layer(c2, sigma=np.eye(3)).analytic_alpha(4) == 3.0 and layer.spec.multi_output_alpha


def test_layerwise_sigma_properties_are_relative_to_its_scale():
    """Σ = 1e-9·I is block-diagonal NGD with F scaled by 1e-9 (α = L/1e-9, Theorem 4.1), not
    exact NGD (Σ = c·11ᵀ, S.91): symmetry, singularity and the 11ᵀ test are relative to Σ's scale."""
    net = Network((5, 9, 7, 1), "tanh", 2.0, 0.0)
    params = net.init(0, get_backend("numpy"))
    x = np.random.default_rng(2).standard_normal((4, 5))
    y = np.random.default_rng(3).standard_normal((4, 1))
    tiny = get_fisher("layer", net, sigma=1e-9 * np.eye(3))
    assert not tiny.is_exact and tiny.analytic_alpha(4) == pytest.approx(3e9)
    s = net.signals(params, x)
    got = np.asarray(to_host(net.flatten(tiny.direction(params, x, y, s))))
    bd = np.asarray(to_host(net.flatten(get_fisher("bd", net).direction(params, x, y, s))))
    np.testing.assert_allclose(got, 1e9 * bd, rtol=1e-9)
    assert get_fisher("layer", net, sigma=1e-9 * np.ones((3, 3))).is_exact
    with pytest.raises(ConfigError, match="symmetric"):
        get_fisher("layer", net, sigma=1e-9 * np.array([[1, 0.5, 0], [0, 1, 0], [0, 0, 1]]))


class ScaledBlockDiagonal(LayerWiseFisher):
    """Layer-wise NGD with Σ = s·I, s given as the approximation's own option: α = L/s (Theorem 4.1)."""

    spec = FisherSpec(
        name="scaled-bd", title="block-diagonal, Σ = s·I", summary="layer-wise FIM with Σ = s·I; α = L/s",
        equations="Eq. 15-16", flops=LayerWiseFisher.spec.flops,
        options=(FisherOption("scale", "s > 0 in Σ = s·I", parse=float, required=True),),
    )

    def __init__(self, network, damping=None, rtol=None, scale=1.0):
        super().__init__(network, damping, rtol, sigma=float(scale) * np.eye(network.depth))


def _err(args):
    r = CliRunner().invoke(cli, args)
    lines = [ln for ln in (r.stderr if hasattr(r, "stderr") else r.output).splitlines() if ln.strip()]
    return r.exit_code, lines


def test_an_approximations_own_option_reaches_every_command(tmp_path):
    """--option NAME=VALUE carries any option a spec declares, a plug-in's included."""
    register(ScaledBlockDiagonal)
    try:
        out = tmp_path / "t.json"
        r = _run(["train", "--fim", "scaled-bd", "--option", "scale=4", "--data", "gaussian", "--n-train", "8",
                  "--n-test", "0", "--input-dim", "10", "--width", "32", "--steps", "1", "--json", str(out)])
        assert r.exit_code == 0, r.output
        assert json.loads(out.read_text())["summary"]["alpha"] == pytest.approx(0.75)
        out = tmp_path / "a.json"
        r = _run(["alpha", "--fim", "bd,scaled-bd", "--option", "scale=0.5", "--width", "16", "--json", str(out)])
        assert r.exit_code == 0, r.output
        alphas = {row["fim"]: row["alpha"] for row in json.loads(out.read_text())["rows"]}
        assert alphas == {"bd": 3.0, "scaled-bd": pytest.approx(6.0)}
        help_text = " ".join(_run(["isotropy", "--help"]).output.split())
        assert "scale (scaled-bd: s > 0 in Σ = s·I)" in help_text
        code, lines = _err(["alpha", "--fim", "scaled-bd"])
        assert code == 2 and len(lines) == 1 and "needs its option scale" in lines[0]
    finally:
        unregister("scaled-bd")


def test_library_options_through_the_command_line(tmp_path):
    out = tmp_path / "iso.json"
    r = _run(["isotropy", "--fim", "bd,layer", "--option", "sigma=1,0,0;0,2,0;0,0,1", "--widths", "32",
              "--data", "gaussian", "--n-train", "8", "--input-dim", "12", "--json", str(out)])
    assert r.exit_code == 0, r.output
    rows = {row["fim"]: row for row in json.loads(out.read_text())["rows"]}
    assert rows["layer"]["alpha_analytic"] == pytest.approx(2.5)  # 1ᵀΣ⁻¹1 = 1 + 1/2 + 1
    out = tmp_path / "pred.json"
    r = _run(["predict", "--fim", "kfac", "--sigma-b2", "0.5", "--option", "bias=folded",
              "--n-train", "20", "--n-test", "10", "--seeds", "1", "--json", str(out)])
    assert r.exit_code == 0, r.output
    row = json.loads(out.read_text())["rows"][0]
    assert "error" not in row and row["mean"] is not None  # the folded-bias K-FAC Θ̄ of S.123
    for args, needle in (
        (["isotropy", "--fim", "bd", "--option", "bias=folded"], "does not apply to --fim bd"),
        (["alpha", "--fim", "layer", "--option", "sigma"], "NAME=VALUE"),
        (["alpha", "--fim", "kfac", "--option", "bias=both"], "one of separate, folded"),
        (["alpha", "--fim", "kfac", "--option", "bias=folded", "--option", "bias=separate"], "given twice"),
        (["train", "--fim", "kfac", "--option", "forster=yes"], "use --forster"),
        (["train", "--fim", "kfac", "--kfac-bias", "folded", "--option", "bias=folded"], "given twice"),
    ):
        code, lines = _err(args)
        assert code == 2 and len(lines) == 1 and needle in lines[0], (args, lines)


def test_alpha_isotropy_and_train_report_the_same_alpha(tmp_path):
    """One network, one α: unit-wise's Σ_{l<L} γ_l M_l + 1 (S.128 and the output unit) is what
    `alpha`, `isotropy` and `train` report (issue 13, item 5), and K-FAC's N·L likewise."""
    net = ["--depth", "3", "--sigma-b2", "0.5", "--activation", "relu"]
    data = ["--data", "gaussian", "--n-train", "10", "--input-dim", "12"]
    for fim in ("unit", "kfac"):
        files = {k: tmp_path / f"{fim}-{k}.json" for k in ("alpha", "isotropy", "train")}
        extra = ["--option", "bias=folded"] if fim == "kfac" else []
        assert _run(["alpha", "--fim", fim, *extra, "--width", "64", "--input-dim", "12", "--n-train", "10", *net,
                     "--json", str(files["alpha"])]).exit_code == 0
        assert _run(["isotropy", "--fim", fim, *extra, "--widths", "64", *net, *data,
                     "--json", str(files["isotropy"])]).exit_code == 0
        r = _run(["train", "--fim", fim, *(["--kfac-bias", "folded"] if fim == "kfac" else []), "--width", "64",
                  "--steps", "1", "--n-test", "0", *net, *data, "--json", str(files["train"])])
        assert r.exit_code == 0, r.output
        a = json.loads(files["alpha"].read_text())["rows"][0]["alpha"]
        i = json.loads(files["isotropy"].read_text())["rows"][0]["alpha_analytic"]
        t = json.loads(files["train"].read_text())["summary"]["alpha"]
        assert a == i == t, (fim, a, i, t)
    assert a == 30.0  # K-FAC: N·L with d = M0 + 1 = 13 >= N = 10 (S.107, folded bias)


def test_malformed_library_arguments_are_config_errors():
    """Library calls a user can get wrong end in ConfigError/NgdrefError (one CLI line), not a
    TypeError, a silent True from bool('no'), or NaN from the square root of an indefinite Λ̃."""
    from ngdref.errors import NgdrefError
    from ngdref.fisher.layerwise import tridiagonal_sigma
    from ngdref.linalg import spd_sqrt
    from ngdref.losses import get_loss

    net = Network((4, 8, 1), "relu", 2.0, 0.0)
    for bad in ("no", "yes", 1):
        with pytest.raises(ConfigError, match="forster must be True or False"):
            get_fisher("kfac", net, forster=bad)
    for bad in (float("nan"), None, 2.5):
        with pytest.raises(ConfigError, match="positive integer"):
            tridiagonal_sigma(bad)
    with pytest.raises(ConfigError, match="unknown loss"):
        get_loss("hinge")
    with pytest.raises(NgdrefError, match="not positive definite"):
        spd_sqrt(np.diag([1.0, 0.0, 2.0]))
