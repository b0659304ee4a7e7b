"""The command line through Click's runner: defaults at small sizes, JSON records, error paths."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ngdref_cli.main import cli

SMALL = ["--width", "64", "--n-train", "10", "--n-test", "10"]
SMALL_NTK = ["--width", "64", "--n-train", "10"]  # ntk uses the training inputs only: no --n-test


def run(args, **kw):
    return CliRunner().invoke(cli, args, catch_exceptions=False, **kw)


def test_help_and_version():
    r = run(["--help"])
    assert r.exit_code == 0 and "train" in r.output and "ntk" in r.output
    assert "0.1.0" in run(["--version"]).output


def test_ntk_json_to_stdout():
    r = run(["ntk", *SMALL_NTK, "--json", "-"])
    assert r.exit_code == 0
    rec = json.loads(r.stdout)
    assert [row["path"] for row in rec["rows"]] == ["structured"]  # structured only by default (issue 14)
    assert rec["rows"][0]["condition_number"] > 1 and rec["config"]["explicit"] == "no"
    rec = json.loads(run(["ntk", *SMALL_NTK, "--explicit", "yes", "--json", "-"]).stdout)
    assert [row["path"] for row in rec["rows"]] == ["structured", "explicit"]
    assert rec["max_relative_difference"] < 1e-12


def test_train_defaults_small_and_json_schema(tmp_path):
    out = tmp_path / "run.json"
    r = run(["train", "--fim", "bd", "--steps", "2", *SMALL, "--json", str(out)])
    assert r.exit_code == 0, r.output
    rec = json.loads(out.read_text())
    assert list(rec)[:4] == ["command", "config", "software", "rows"]
    assert set(rec) >= {"status", "summary", "records"} and rec["records"] == rec["rows"]  # records: an alias
    assert rec["status"] == "ok" and len(rec["rows"]) == 3
    assert set(rec["rows"][0]) >= {
        "step", "train_loss", "theory_train_loss", "isotropic_train_loss", "test_loss", "theory_test_loss",
        "train_accuracy", "test_accuracy", "max_abs_f_minus_flin_train", "max_abs_f_minus_flin_test", "param_distance",
    }
    cfg = rec["config"]
    assert cfg["fim"] == "bd" and cfg["seed"] == 0 and cfg["backend"] == "numpy"
    assert cfg["network"]["widths"] == [784, 64, 64, 1] and cfg["dataset"]["n_train"] == 10
    assert rec["summary"]["alpha"] == 3.0


def test_train_divergence_exit_1_and_record_written(tmp_path):
    out = tmp_path / "run.json"
    r = CliRunner().invoke(cli, ["train", "--fim", "gd", "--lr-scale", "5", "--steps", "30", "--width", "512", "--sigma-b2", "0",
                                 "--n-train", "20", "--n-test", "20", "--json", str(out)])
    assert r.exit_code == 1
    assert "diverged at step" in r.output
    rec = json.loads(out.read_text())
    assert rec["status"] == "diverged" and len(rec["records"]) < 31


@pytest.mark.parametrize(
    "args,needle",
    [
        (["train", "--fim", "newton", *SMALL], "unknown --fim"),
        (["train", "--activation", "softsign", *SMALL], "unknown activation"),
        (["train", "--classes", "0,11", *SMALL], "class"),
        (["train", "--lr-scale", "0", *SMALL], "lr-scale"),
        (["train", "--steps", "-1", *SMALL], "steps"),
        (["train", "--damping", "-1", *SMALL], "damping"),
        (["train", "--fim", "tridiag", "--depth", "5", *SMALL], "Lemma 4.3"),
        (["train", "--fim", "kfac", "--loss", "ce", *SMALL], "MSE loss only"),
        (["train", "--fim", "kfac", "--classes", "0,1,2", *SMALL], "--lr"),
        (["--backend", "cupy", "ntk", *SMALL_NTK], "cupy"),
        (["ntk", "--width", "4096", "--depth", "3", "--n-train", "100", "--explicit", "yes"], "limit"),
        (["isotropy", "--fim", "bd,foo", "--widths", "32"], "unknown --fim"),
        (["isotropy", "--widths", "32,x"], "--widths"),
    ],
)
def test_user_errors_are_one_line_exit_2(args, needle, monkeypatch):
    monkeypatch.setenv("NGDREF_MAX_BYTES", "1G")
    r = CliRunner().invoke(cli, args)
    if "cupy" in args and r.exit_code == 0:  # a GPU is present
        return
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and needle in lines[0], r.output
    assert "Traceback" not in r.output


def test_isotropy_table_and_json():
    r = run(["isotropy", "--fim", "exact,bd", "--widths", "32,64", "--data", "gaussian", "--n-train", "10",
             "--input-dim", "20", "--json", "-"])
    assert r.exit_code == 0
    rows = json.loads(r.stdout)["rows"]
    assert [(x["fim"], x["width"]) for x in rows] == [("exact", 32), ("bd", 32), ("exact", 64), ("bd", 64)]
    assert all(abs(x["measured_over_analytic"] - 1) < 1e-8 for x in rows)


def test_alpha_command_paper_values():
    for act, want in (("tanh", 2.0), ("relu", 1.0), ("shifted-relu", 1.723)):
        shift = ["--shift", "1"] if act == "shifted-relu" else []  # s of the shifted ReLU only
        r = run(["alpha", "--fim", "unit,bd", "--activation", act, *shift, "--json", "-"])
        assert r.exit_code == 0
        rec = json.loads(r.stdout)
        unit = next(x for x in rec["rows"] if x["fim"] == "unit")
        assert abs(unit["alpha_over_width"] - want) < 2e-3  # Fig. S.1 (+1/M for the output unit)
        assert next(x for x in rec["rows"] if x["fim"] == "bd")["alpha"] == 3.0


def test_predict_command_analytic_and_empirical():
    r = run(["predict", "--seeds", "2", "--n-train", "60", "--n-test", "40", "--json", "-"])
    assert r.exit_code == 0
    rows = {x["fim"]: x for x in json.loads(r.stdout)["rows"]}
    assert set(rows) == {"exact", "bd", "tridiag", "kfac"}
    assert all(rows[k]["mean"] > 0.9 and len(rows[k]["per_seed"]) == 2 for k in rows)
    r = run(["predict", "--kernel", "empirical", "--fim", "exact,unit", "--width", "128", "--seeds", "1",
             "--n-train", "30", "--n-test", "30", "--json", "-"])
    assert r.exit_code == 0
    rows = {x["fim"]: x for x in json.loads(r.stdout)["rows"]}
    assert rows["unit"]["mean"] > 0.8
    r = CliRunner().invoke(cli, ["predict", "--fim", "unit", "--seeds", "1", "--n-train", "20", "--n-test", "10", "--json", "-"])
    assert r.exit_code == 0 and "S.156" in r.output
