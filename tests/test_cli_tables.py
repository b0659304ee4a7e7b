"""Terminal tables never cut a number (issue 14): at any terminal width every cell is printed whole —
the columns are split into tables that fit, the step (or approximation) column repeated."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ngdref_cli.main import cli

SMALL = ["--width", "32", "--n-train", "8", "--n-test", "8", "--data", "gaussian", "--input-dim", "12"]


def _fmt(v):
    return "—" if v is None else format(v, ".4g")


@pytest.mark.parametrize("columns", [40, 60, 80, 200])
def test_train_table_fits_and_shows_every_number(columns, tmp_path):
    out = tmp_path / "r.json"
    r = CliRunner().invoke(cli, ["train", "--fim", "bd", "--steps", "3", "--linearized", *SMALL, "--json", str(out)],
                           env={"COLUMNS": str(columns)})
    assert r.exit_code == 0, r.output
    text = r.stdout
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= columns
    cells = {c.strip() for line in text.splitlines() for c in line.replace("┃", "│").split("│")}
    for rec in json.loads(out.read_text())["records"]:
        for key in ("train_loss", "theory_train_loss", "test_loss", "param_distance", "linearized_model_train_loss"):
            assert _fmt(rec[key]) in cells, (columns, key, _fmt(rec[key]))


def test_isotropy_table_fits(tmp_path):
    r = CliRunner().invoke(cli, ["isotropy", "--fim", "gd,bd,unit", "--widths", "16,32", "--data", "gaussian",
                                 "--n-train", "6", "--input-dim", "10"], env={"COLUMNS": "50"})
    assert r.exit_code == 0, r.output
    assert "…" not in r.stdout and max(len(line) for line in r.stdout.splitlines()) <= 50


def test_long_notes_fold_beside_an_intact_key_column():
    r = CliRunner().invoke(cli, ["alpha", "--fim", "unit,kfac", "--width", "64"], env={"COLUMNS": "70"})
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert max(len(line) for line in lines) <= 70 and "…" not in r.stdout
    assert any(line.startswith("│ unit │") for line in lines) and any(line.startswith("│ kfac │") for line in lines)
