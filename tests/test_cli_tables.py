"""Terminal tables never cut a number (issue 14): at any terminal width every cell is printed whole —
the columns are split into tables that fit, the step (or approximation) column repeated."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ngdref_cli.main import cli

SMALL = ["--width", "32", "--n-train", "8", "--n-test", "8", "--data", "gaussian", "--input-dim", "12"]


#: every numeric column of train's table (the JSON key of each)
TRAIN_COLUMNS = ("train_loss", "theory_train_loss", "isotropic_train_loss", "linearized_model_train_loss", "test_loss",
                 "theory_test_loss", "train_accuracy", "test_accuracy", "max_abs_f_minus_flin_train",
                 "max_abs_f_minus_flin_test", "param_distance")


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
    rows = json.loads(out.read_text())["rows"]
    for rec in rows:  # every number of every row the table shows, whole
        assert str(rec["step"]) in cells
        for key in TRAIN_COLUMNS:
            assert _fmt(rec[key]) in cells, (columns, key, _fmt(rec[key]))
    # the case the issue met (1.962e-28 cut to 1.9…): some of these numbers carry an exponent
    assert any("e-" in _fmt(rec[key]) for rec in rows for key in TRAIN_COLUMNS)


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


def test_train_reports_its_phases_and_bars_show_time_remaining():
    """train says what it is doing during its set-up (Θ̄, theory lines) before the steps start, and every
    progress bar carries an estimate of the time remaining (issue 14)."""
    from rich.console import Console
    from rich.progress import TimeRemainingColumn

    from ngdref.backend import get_backend
    from ngdref.data import load_dataset
    from ngdref.network import Network
    from ngdref.train import TrainConfig, train
    from ngdref_cli.common import progress_bar

    ds = load_dataset("gaussian", classes=(0, 1), n_train=6, n_test=2, seed=0, input_dim=8)
    events = []
    train(Network.build(8, 16, 3, 1, "relu"), ds, TrainConfig(fim="bd", steps=2), get_backend("numpy"), 0,
          progress=lambda t, rec: events.append(t), phase=events.append)
    assert events[0].startswith("set-up") and "Θ̄" in events[1] and events[2:] == ["steps", 0, 1, 2]
    bar = progress_bar(console=Console(force_terminal=True))
    assert any(isinstance(c, TimeRemainingColumn) for c in bar.columns)
