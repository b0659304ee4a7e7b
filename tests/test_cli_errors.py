"""The CLI's error contract (issue 12), as a catalog: every error a user can cause — a bad option of
train, isotropy, ntk, alpha or predict, a bad global option or environment variable, an output path
that cannot be written — ends as one line on stderr (``Error: …``) with exit code 2, before any work,
with no traceback and no output file created or half-written. Exit code 1 is reserved for a run
that diverged (tests/test_cli.py). Each row fails in milliseconds: the checks come first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from ngdref.errors import ConfigError
from ngdref.memory import max_bytes, parse_bytes, set_max_bytes
from ngdref_cli.main import cli
from tests.conftest import GPU

#: tiny runs: a row that got past its check would still finish in well under a second
T = ["--width", "8", "--n-train", "6", "--n-test", "4"]
N = ["--width", "8", "--n-train", "6"]  # ntk, isotropy: training inputs only
G = ["--data", "gaussian", "--input-dim", "10", "--n-train", "40", "--n-test", "4", "--width", "16", "--steps", "2"]
JSON = "{tmp}/rec.json"  # every row writes its record here unless it tests --json itself


def row(*args, env=None, needle="", marks=(), id=None):
    return pytest.param(list(args), env or {}, needle, marks=marks, id=id)


CATALOG = [
    # ---- global options and environment --------------------------------------------------
    row("--seed", "-1", "alpha", "--width", "8", needle="--seed", id="seed-negative"),
    row("--seed", "2**40", "alpha", "--width", "8", needle="--seed", id="seed-not-int"),
    row("--backend", "garbage", "alpha", needle="--backend", id="backend-unknown"),
    row("--dtype", "float16", "alpha", needle="--dtype", id="dtype-unknown"),
    row("alpha", "--width", "8", env={"NGDREF_BACKEND": "garbage"}, needle="NGDREF_BACKEND", id="env-backend-alpha"),
    row("train", *T, env={"NGDREF_BACKEND": "garbage"}, needle="NGDREF_BACKEND", id="env-backend-train"),
    row("ntk", *N, env={"NGDREF_MAX_BYTES": "12Q"}, needle="NGDREF_MAX_BYTES", id="env-bytes-suffix"),
    row("ntk", *N, env={"NGDREF_MAX_BYTES": "1e999"}, needle="NGDREF_MAX_BYTES", id="env-bytes-exponent"),
    row("isotropy", "--widths", "8", "--n-train", "6", env={"NGDREF_MAX_BYTES": "nan"}, needle="NGDREF_MAX_BYTES",
        id="env-bytes-nan"),
    row("train", *T, env={"NGDREF_MAX_BYTES": "-1"}, needle="NGDREF_MAX_BYTES", id="env-bytes-negative"),
    row("predict", "--seeds", "1", *T, env={"NGDREF_MAX_BYTES": "0"}, needle="NGDREF_MAX_BYTES", id="env-bytes-zero"),
    row("alpha", env={"NGDREF_MAX_BYTES": "G"}, needle="NGDREF_MAX_BYTES", id="env-bytes-no-number"),
    row("trian", *T, needle="No such command", id="command-unknown"),
    row("train", "--widht", "8", needle="--width", id="option-misspelt"),
    # ---- network and data options (shared) -------------------------------------------------
    row("ntk", *N, "--depth", "1", needle="--depth", id="depth-1"),
    row("train", *T, "--depth", "-3", needle="--depth", id="depth-negative"),
    row("ntk", "--width", "0", "--n-train", "6", needle="--width", id="width-0"),
    row("ntk", *N, "--activation", "softsign", needle="unknown activation", id="activation-unknown"),
    row("ntk", *N, "--shift", "nan", needle="--shift", id="shift-nan"),
    row("train", *T, "--shift", "inf", needle="--shift", id="shift-inf"),
    row("alpha", "--activation", "shifted-relu", "--shift", "-1", needle="--shift", id="shift-negative"),
    row("ntk", *N, "--sigma-w2", "0", needle="--sigma-w2", id="sigma-w2-zero"),
    row("train", *T, "--sigma-w2", "inf", needle="--sigma-w2", id="sigma-w2-inf"),
    row("ntk", *N, "--sigma-b2", "-1", needle="--sigma-b2", id="sigma-b2-negative"),
    row("predict", "--seeds", "1", *T, "--sigma-b2", "nan", needle="--sigma-b2", id="sigma-b2-nan"),
    row("ntk", *N, "--data", "", needle="--data", id="data-empty"),
    row("ntk", *N, "--data", "nowhere", needle="data source", id="data-missing"),
    row("train", *T, "--data", "{tmp}/afile", needle="data source", id="data-is-a-file"),
    row("ntk", *N, "--data", "{tmp}/emptydir", needle="no recognisable data", id="data-empty-folder"),
    row("ntk", *N, "--classes", "0", needle="two classes", id="classes-one"),
    row("train", *T, "--classes", "a,b", needle="--classes", id="classes-not-int"),
    row("train", *T, "--classes", "0,0", needle="repeat", id="classes-repeated"),
    row("train", *T, "--classes", ",", needle="--classes", id="classes-empty"),
    row("train", *T, "--classes", "0,11", needle="class 11", id="classes-absent"),
    row("ntk", "--width", "8", "--n-train", "0", needle="--n-train", id="n-train-0"),
    row("train", "--width", "8", "--n-train", "6", "--n-test", "-1", needle="--n-test", id="n-test-negative"),
    row("ntk", "--width", "8", "--n-train", "100000", needle="use --n-train ≤ 1000 for classes 0,7, or --data PATH",
        id="n-train-too-many"),
    row("ntk", *N, "--data", "gaussian", "--input-dim", "0", needle="--input-dim", id="input-dim-0"),
    row("train", *T, "--input-dim", "20", needle="--input-dim", id="input-dim-without-gaussian"),
    # ---- --json (every command) ------------------------------------------------------------
    row("ntk", *N, "--json", "", needle="--json", id="json-empty"),
    row("train", *T, "--json", "{tmp}", needle="folder", id="json-folder"),
    row("ntk", *N, "--json", "{tmp}/afile/rec.json", needle="not a folder", id="json-under-a-file"),
    row("isotropy", "--widths", "8", "--n-train", "6", "--json", "{tmp}/missing/rec.json", needle="does not exist",
        id="json-missing-parent"),
    row("alpha", "--json", "{tmp}/readonly.json", needle="read-only", id="json-read-only"),
    row("predict", "--seeds", "1", *T, "--json", "", needle="--json", id="json-empty-predict"),
    row("alpha", "--json", "/proc/ngdref-rec.json", needle="cannot be written", id="json-unwritable-folder",
        marks=pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")),
    # ---- ntk ----------------------------------------------------------------------------------
    row("ntk", *N, "--explicit", "maybe", needle="--explicit", id="ntk-explicit-choice"),
    row("ntk", *N, "--n-test", "4", needle="--n-test", id="ntk-n-test-unused"),
    row("ntk", *N, "--explicit", "yes", env={"NGDREF_MAX_BYTES": "1K"}, needle="limit", id="ntk-explicit-over-limit"),
    row("ntk", "--width", "1000000", "--n-train", "6", needle="limit", id="ntk-weights-over-limit"),
    # ---- train --------------------------------------------------------------------------------
    row("train", *T, "--steps", "-1", needle="--steps", id="steps-negative"),
    row("train", *T, "--steps", "1000000000000", needle="reduce --steps", id="steps-huge"),
    row("train", *T, "--lr", "0", needle="--lr", id="lr-zero"),
    row("train", *T, "--lr", "nan", needle="--lr", id="lr-nan"),
    row("train", *T, "--lr", "inf", needle="--lr", id="lr-inf"),
    row("train", *T, "--lr-scale", "-1", needle="--lr-scale", id="lr-scale-negative"),
    row("train", *T, "--lr-scale", "nan", needle="--lr-scale", id="lr-scale-nan"),
    row("train", *T, "--lr", "0.1", "--lr-scale", "0.5", needle="not both", id="lr-and-lr-scale"),
    row("train", *T, "--damping", "-1", needle="--damping", id="damping-negative"),
    row("train", *T, "--damping", "inf", needle="--damping", id="damping-inf"),
    row("train", *T, "--fim", "gd", "--damping", "1", needle="damping does not apply", id="damping-gd"),
    row("train", *T, "--loss", "hinge", needle="--loss", id="loss-unknown"),
    row("train", *T, "--fim", "exact", "--loss", "ce", "--ce-damping", "0", needle="--ce-damping", id="ce-damping-0"),
    row("train", *T, "--ce-damping", "2", needle="--loss ce", id="ce-damping-without-ce"),
    row("train", *T, "--fim", "exact", "--loss", "ce", "--linearized", needle="MSE", id="linearized-with-ce"),
    row("train", *T, "--fim", "kfac", "--loss", "ce", needle="MSE loss only", id="ce-kfac"),
    row("train", *T, "--fim", "layer", "--sigma", "1,2;3", needle="Σ", id="sigma-ragged"),
    row("train", *T, "--fim", "layer", "--sigma", "a", needle="Σ", id="sigma-not-numbers"),
    row("train", *T, "--fim", "layer", "--sigma", "nan,0,0;0,1,0;0,0,1", needle="Σ", id="sigma-nan"),
    row("train", *T, "--fim", "layer", needle="sigma", id="sigma-missing"),
    row("train", *T, "--fim", "bd", "--sigma", "1", needle="does not apply", id="sigma-not-layer"),
    row("train", *T, "--fim", "kfac", "--kfac-bias", "both", needle="bias", id="kfac-bias-choice"),
    row("train", *T, "--fim", "newton", needle="unknown --fim", id="fim-unknown"),
    row("train", *T, "--fim", "unit,bd", needle="give one --fim", id="fim-several"),
    row("train", *T, "--fim", "unit", "--fim", "kfac", needle="given 2 times", id="fim-twice"),
    row("spectrum", "--width", "16", "--fim", "bd,unit", needle="give one --fim", id="spectrum-fim-several"),
    row("isotropy", "--widths", "16", "--fim", "bd", "--fim", "unit", needle="given 2 times", id="isotropy-fim-twice"),
    row("spectrum", "--width", "8", "--n-train", "6", "--fim", "unit,bd", needle="give one --fim",
        id="spectrum-fim-several"),
    row("isotropy", "--fim", "bd,block-diagonal", "--widths", "8", "--n-train", "6", needle="more than once",
        id="isotropy-fim-twice"),
    row("predict", "--fim", "bd,bd", "--n-train", "6", "--n-test", "2", needle="more than once", id="predict-fim-twice"),
    row("train", *T, "--fim", "", needle="--fim", id="fim-empty"),
    row("train", *T, "--forster", needle="Forster", id="forster-n-below-m0"),
    row("train", "--fim", "kfac", "--sigma-b2", "0", *G, needle="--forster", id="kfac-m0-below-n"),
    row("train", "--fim", "kfac", "--kfac-bias", "folded", *G, needle="--forster", id="kfac-folded-m0-below-n"),
    row("train", "--fim", "kfac", "--forster", *G, needle="--sigma-b2 0", id="kfac-forster-with-bias"),
    row("train", *T, "--fim", "kfac", "--classes", "0,1,2", needle="--lr", id="kfac-multi-output"),
    row("train", *T, "--fim", "tridiag", "--depth", "5", needle="Lemma 4.3", id="tridiag-depth-5"),
    row("train", "--width", "100000", "--n-train", "6", "--n-test", "4", needle="limit", id="train-weights-over-limit"),
    # ---- isotropy -----------------------------------------------------------------------------
    row("isotropy", "--fim", ",", "--widths", "8", "--n-train", "6", needle="--fim", id="isotropy-fim-empty"),
    row("isotropy", "--fim", "bd,foo", "--widths", "8", "--n-train", "6", needle="unknown --fim", id="isotropy-fim-unknown"),
    row("isotropy", "--widths", ",", "--n-train", "6", needle="--widths", id="isotropy-widths-empty"),
    row("isotropy", "--widths", "8,0", "--n-train", "6", needle="--widths", id="isotropy-widths-0"),
    row("isotropy", "--widths", "8,x", "--n-train", "6", needle="--widths", id="isotropy-widths-not-int"),
    row("isotropy", "--widths", "8", "--n-train", "6", "--damping", "nan", needle="--damping", id="isotropy-damping-nan"),
    row("isotropy", "--widths", "8", "--width", "8", "--n-train", "6", needle="--width", id="isotropy-width-and-widths"),
    row("isotropy", "--widths", "8", "--n-train", "6", "--n-test", "3", needle="--n-test", id="isotropy-n-test-unused"),
    row("isotropy", "--fim", "layer", "--widths", "8", "--n-train", "6", needle="sigma", id="isotropy-layer-needs-sigma"),
    # ---- alpha --------------------------------------------------------------------------------
    row("alpha", "--n-train", "-5", needle="--n-train", id="alpha-n-train-negative"),
    row("alpha", "--outputs", "0", needle="--outputs", id="alpha-outputs-0"),
    row("alpha", "--input-dim", "0", needle="--input-dim", id="alpha-input-dim-0"),
    row("alpha", "--fim", ",", needle="--fim", id="alpha-fim-empty"),
    row("alpha", "--fim", "layer", needle="sigma", id="alpha-layer-needs-sigma"),
    row("alpha", "--depth", "1", needle="--depth", id="alpha-depth-1"),
    # ---- predict ------------------------------------------------------------------------------
    row("predict", "--seeds", "0", *T, needle="--seeds", id="predict-seeds-0"),
    row("predict", "--seeds", "1", "--damping", "1", *T, needle="--kernel empirical", id="predict-damping-analytic"),
    row("predict", "--kernel", "empirical", "--seeds", "1", "--damping", "nan", *T, needle="--damping",
        id="predict-damping-nan"),
    row("predict", "--kernel", "foo", *T, needle="--kernel", id="predict-kernel-choice"),
    row("predict", "--seeds", "1", "--n-train", "6", "--n-test", "0", needle="test samples", id="predict-no-test"),
    row("predict", "--seeds", "1", "--width", "8", "--n-train", "6", "--n-test", "4", needle="--kernel empirical",
        id="predict-width-analytic"),
    row("alpha", "--seed", "1", needle="does not apply", id="alpha-seed-unused"),
    row("train", *T, "--shift", "2", needle="shifted-relu", id="shift-without-shifted-relu"),
    row("isotropy", "--widths", "8,16", "-M", "8", "--n-train", "6", needle="--widths", id="isotropy-width-and-widths-M"),
    row("predict", "--fim", ",", "--seeds", "1", *T, needle="--fim", id="predict-fim-empty"),
    row("predict", "--fim", "layer", "--kernel", "empirical", "--seeds", "1", *T, needle="sigma",
        id="predict-layer-needs-sigma"),
    row("--backend", "cupy", "predict", "--kernel", "empirical", "--seeds", "1", *T, needle="cupy", id="predict-no-cupy",
        marks=pytest.mark.skipif(GPU, reason="CuPy and a GPU are present")),
    # ---- spectrum -----------------------------------------------------------------------------
    row("spectrum", *N, "--top", "7", needle="use --top 6 or fewer", id="spectrum-top-beyond-cn"),
    row("spectrum", *N, "--of", "G", "--top", "1000", needle="use --top 200 or fewer", id="spectrum-top-too-many"),
    row("spectrum", "--data", "gaussian", "--input-dim", "2", "--width", "2", "--depth", "2", "--n-train", "2", "--of", "G",
        "--top", "20", needle="use --top 9 or fewer", id="spectrum-top-beyond-p"),
    row("spectrum", "--data", "gaussian", "--input-dim", "2", "--width", "1", "--depth", "2", "--n-train", "8",
        "--sigma-b2", "0", "--top", "6", needle="use --top 3 or fewer or --of theta-bar",
        id="spectrum-g-inverse-f-top-beyond-p"),
    row("spectrum", *N, "--depth", "2", "--fim", "layer", "--option", "sigma=1,0;0,-1", needle="1ᵀΣ⁻¹1",
        id="spectrum-sigma-alpha-zero"),
    row("spectrum", *N, "--of", "theta", needle="--of", id="spectrum-of-unknown"),
]


def runner() -> CliRunner:
    """Click >= 8.2 keeps stderr apart by default; older versions need mix_stderr=False."""
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()


@pytest.fixture
def workdir(tmp_path):
    """tmp_path with a file, an empty folder and a read-only file the rows point at."""
    (tmp_path / "afile").write_text("not a folder\n")
    (tmp_path / "emptydir").mkdir()
    ro = tmp_path / "readonly.json"
    ro.write_text("{}\n")
    ro.chmod(0o444)
    return tmp_path


def _files(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def test_catalog_is_large_and_covers_every_command():
    assert len(CATALOG) >= 50
    commands = {next(a for a in p.values[0] if a in ("train", "isotropy", "ntk", "alpha", "predict", "spectrum", "trian"))
                for p in CATALOG}
    assert commands >= {"train", "isotropy", "ntk", "alpha", "predict", "spectrum"}


@pytest.mark.parametrize("args,env,needle", CATALOG)
def test_user_error_is_one_line_exit_2_and_writes_nothing(args, env, needle, workdir):
    args = [a.replace("{tmp}", str(workdir)) for a in args]
    if "--json" not in args:
        args += ["--json", JSON.format(tmp=workdir)]
    before = _files(workdir)
    full_env = {"NGDREF_BACKEND": None, "NGDREF_MAX_BYTES": None, **env}
    r = runner().invoke(cli, args, env=full_env, prog_name="ngdref")
    err_lines = r.stderr.splitlines()
    assert r.exit_code == 2, (r.exit_code, r.stderr, r.stdout, r.exception)
    assert len(err_lines) == 1 and err_lines[0].startswith("Error: "), r.stderr  # no warnings, no blank lines
    assert needle in err_lines[0], err_lines[0]
    assert "Traceback" not in r.stderr + r.stdout
    assert r.stdout == ""  # the error came before any table
    assert _files(workdir) == before  # no record, no temporary, nothing changed
    assert not os.path.exists(JSON.format(tmp=workdir))


@pytest.mark.parametrize("args,env,needle", [
    (["alpha"], {"NGDREF_MAX_BYTES": "12Q"}, "NGDREF_MAX_BYTES"),
    (["--seed", "-1", "alpha"], {}, "--seed"),
    (["ntk", "--width", "8", "--n-train", "6", "--json", "{tmp}"], {}, "folder"),
])
def test_user_error_in_a_real_process(args, env, needle, tmp_path):
    """The installed entry point (not Click's runner): one line on stderr, exit code 2, nothing on stdout."""
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc_env = {k: v for k, v in os.environ.items() if k not in ("NGDREF_BACKEND", "NGDREF_MAX_BYTES")}
    proc = subprocess.run([sys.executable, "-m", "ngdref_cli.main", *args], capture_output=True, text=True,
                          env={**proc_env, **env}, timeout=120)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], proc.stderr
    assert lines[0].startswith("Error: ") and "Traceback" not in proc.stderr
    assert proc.stdout == "" and list(tmp_path.iterdir()) == []


def test_lr_scale_outside_corollary_4_2_warns_once_and_runs(tmp_path):
    """c = 2.5 ∉ (0, 2) (Corollary 4.2): one warning line on stderr, the run goes on and writes its record;
    inside the range there is no warning."""
    out = tmp_path / "rec.json"
    base = ["train", "--fim", "bd", "--steps", "1", "--width", "32", "--n-train", "6", "--n-test", "4"]
    r = runner().invoke(cli, [*base, "--lr-scale", "2.5", "--json", str(out)], env={"NGDREF_BACKEND": None})
    lines = r.stderr.splitlines()
    assert r.exit_code == 0, r.stderr
    assert len(lines) == 1 and lines[0].startswith("Warning: ") and "0 < c < 2" in lines[0], r.stderr
    rec = json.loads(out.read_text())
    assert rec["status"] == "ok" and rec["summary"]["lr_scale"] == 2.5
    r = runner().invoke(cli, [*base, "--lr-scale", "1.5"], env={"NGDREF_BACKEND": None})
    assert r.exit_code == 0 and r.stderr.strip() == ""
    r = runner().invoke(cli, [*base, "--lr", "0.5"], env={"NGDREF_BACKEND": None})  # η given: c plays no part
    assert r.exit_code == 0 and r.stderr.strip() == ""


def test_kfac_m0_below_n_needs_forster_or_lr(tmp_path):
    """K-FAC with M0 = 10 < N = 40 (no bias): without --forster α does not hold (S.109) and train refuses
    η = c/α (row kfac-m0-below-n); with --forster it trains with α = N(L − 1) + M0 (S.111) and
    converges; with --lr it runs on the given η."""
    out = tmp_path / "rec.json"
    wide = [*G, "--width", "64"]  # M = 64 > N: the hidden Kronecker factors have full rank N
    r = runner().invoke(cli, ["train", "--fim", "kfac", "--sigma-b2", "0", "--forster", *wide, "--json", str(out)],
                        env={"NGDREF_BACKEND": None})
    assert r.exit_code == 0, r.stderr
    rec = json.loads(out.read_text())
    s = rec["summary"]
    assert s["alpha"] == 40 * 2 + 10 and s["alpha_source"] == "analytic" and s["fim"]["forster"] is True
    assert rec["records"][-1]["train_loss"] < rec["records"][0]["train_loss"]
    r = runner().invoke(cli, ["train", "--fim", "kfac", "--sigma-b2", "0", "--lr", "0.001", *wide],
                        env={"NGDREF_BACKEND": None})
    assert r.exit_code == 0, r.stderr


def test_max_bytes_parses_strictly(monkeypatch):
    assert parse_bytes("4G") == 4 * 1024**3 and parse_bytes("512m") == 512 * 1024**2
    assert parse_bytes("1.5GiB") == 3 * 1024**3 // 2 and parse_bytes("4096") == 4096 and parse_bytes(" 2 KB ") == 2048
    for bad in ("12Q", "1e999", "nan", "inf", "-1", "0", "0.5", "G", "", "1,5G", "9" * 400):
        with pytest.raises(ConfigError, match="NGDREF_MAX_BYTES"):
            parse_bytes(bad)
    monkeypatch.setenv("NGDREF_MAX_BYTES", "")
    assert max_bytes() == 4 * 1024**3  # set but empty: the default
    monkeypatch.setenv("NGDREF_MAX_BYTES", "12Q")
    with pytest.raises(ConfigError, match="12Q"):
        max_bytes()
    for bad in (0, -1, float("nan"), float("inf"), "4G", True):
        with pytest.raises(ConfigError):
            set_max_bytes(bad)
    set_max_bytes(1000)
    try:
        assert max_bytes() == 1000
    finally:
        set_max_bytes(None)


def test_train_library_refuses_before_work():
    """The checks behind the CLI rows, at the library level (ngdref.train): ConfigError or
    MemoryLimitError from ``train`` before any parameter is drawn."""
    from ngdref.backend import get_backend
    from ngdref.data import load_dataset
    from ngdref.errors import MemoryLimitError
    from ngdref.network import Network
    from ngdref.train import TrainConfig, train

    ds = load_dataset("gaussian", n_train=12, n_test=0, input_dim=4, seed=0)
    net = Network.build(4, 16, 3, 1, "relu", sigma_w2=2.0, sigma_b2=0.0)
    numpy = get_backend("numpy")
    with pytest.raises(MemoryLimitError, match="reduce --steps"):
        train(net, ds, TrainConfig(fim="bd", steps=10**12), numpy)
    with pytest.raises(ConfigError, match="linearised"):
        train(net, ds, TrainConfig(fim="exact", loss="ce", linearized=True), numpy)
    with pytest.raises(ConfigError, match="ρ̃"):
        train(net, ds, TrainConfig(fim="bd", ce_damping=float("inf")), numpy)
    with pytest.raises(ConfigError, match=r"S\.109.*--lr"):  # K-FAC, M0 = 4 < N = 12, inputs not Forster
        train(net, ds, TrainConfig(fim="kfac"), numpy)
    assert "0 < c < 2" in TrainConfig(lr_scale=2.0).lr_scale_warning()
    assert TrainConfig(lr_scale=1.9).lr_scale_warning() is None
    assert TrainConfig(lr_scale=3.0, lr=0.1).lr_scale_warning() is None  # η given
    assert TrainConfig(lr_scale=3.0, loss="ce").lr_scale_warning() is None  # Corollary 4.2 is for MSE


def test_library_warnings_are_one_line_each():
    """A Python warning from the library (here Lemma 4.3's singular tri-diagonal Σ at L = 5, run with
    ρ = 1e-3) reaches stderr as one 'Warning:' line, not as file:line plus source; the run goes on."""
    r = runner().invoke(cli, ["train", "--fim", "tridiag", "--depth", "5", "--damping", "1e-3", "--steps", "1", *T[:2],
                              "--n-train", "6", "--n-test", "0"], env={"NGDREF_BACKEND": None})
    assert r.exit_code == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines and all(ln.startswith("Warning: ") for ln in lines), r.stderr
    assert any("Lemma 4.3" in ln for ln in lines) and "layerwise.py" not in r.stderr


def test_json_to_stdout_and_to_an_existing_file(workdir):
    """'-' is stdout (the record alone on stdout, tables on stderr); an existing regular file is replaced whole."""
    r = runner().invoke(cli, ["alpha", "--fim", "bd", "--json", "-"], env={"NGDREF_BACKEND": None})
    assert r.exit_code == 0 and json.loads(r.stdout)["command"] == "alpha"
    target = workdir / "afile"
    r = runner().invoke(cli, ["alpha", "--fim", "bd", "--json", str(target)], env={"NGDREF_BACKEND": None})
    assert r.exit_code == 0 and json.loads(target.read_text())["command"] == "alpha"
    assert sorted(p.name for p in workdir.iterdir()) == ["afile", "emptydir", "readonly.json"]  # no temporaries


def test_numerical_failure_is_an_error_line_not_a_traceback(workdir):
    """σ_w² = 1e308 overflows the signals and the eigensolver fails (LinAlgError): exit code 2 and a last
    line that says what to change, the only line: NumPy's overflow warnings before it are folded into it."""
    out = workdir / "rec.json"
    for command in (["train", *T], ["spectrum", "--width", "16", "--n-train", "8"]):
        r = runner().invoke(cli, [*command, "--sigma-w2", "1e308", "--json", str(out)], env={"NGDREF_BACKEND": None})
        lines = r.stderr.splitlines()
        assert r.exit_code == 2 and "Traceback" not in r.stderr and not out.exists()
        assert len(lines) == 1, r.stderr
        assert lines[0].startswith("Error: the linear algebra failed") and "--sigma-w2" in lines[0]
        assert "(NumPy warned before: overflow encountered in" in lines[0]


def test_numpy_warnings_of_a_run_that_succeeds_are_shown(workdir):
    """A run that ends well still shows NumPy's floating-point warnings (held back while it runs), one line each."""
    r = runner().invoke(cli, ["train", *T, "--steps", "2", "--sigma-w2", "1e100"], env={"NGDREF_BACKEND": None})
    assert r.exit_code == 0, r.stderr
    assert "Warning: overflow encountered in" in r.stderr and "Error" not in r.stderr


def test_kfac_singular_damped_factor_is_a_config_error_not_linalgerror():
    """ρ = 1e-12 below the round-off of a K-FAC factor (inputs of scale 1e6, a first layer narrower than
    N = 6, two repeated samples): inv raises LinAlgError; the user gets a ConfigError (→ CLI exit 2, one
    line) naming the factor, the ρ and what to use instead. ρ = 0 (the pseudo-inverse) runs."""
    import numpy as np

    from ngdref import Network
    from ngdref.fisher import get_fisher

    net = Network((3, 2, 2, 1), "relu", 2.0, 0.0)
    x = np.ones((6, 3)) * 1e6
    x[3:] *= 2
    y = np.zeros((6, 1))
    p = net.init(0)
    s = net.signals(p, x)
    with pytest.raises(ConfigError, match=r"numerically singular at ρ = 1e-12: use ρ = 0 .*larger --damping"):
        get_fisher("kfac", net, 1e-12).direction(p, x, y, s)
    d = get_fisher("kfac", net, 0.0).direction(p, x, y, s)
    assert all(np.all(np.isfinite(w)) for w in net.flatten(d)[None])


def test_alpha_outputs_help_says_what_c_is():
    r = CliRunner().invoke(cli, ["alpha", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "Number of outputs C (classes)." in r.output
