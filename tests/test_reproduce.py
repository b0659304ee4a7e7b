"""`ngdref reproduce`: every figure end to end at the quick size, executors agree, sweeps resume."""

from __future__ import annotations

import concurrent.futures
import copy
import csv
import json
import math
import sys

import pytest
from click.testing import CliRunner

from ngdref.experiments.figures import FIGURES, build_cells, figure_config, get_figure
from ngdref.experiments.figures.run import uniform_rows
from ngdref.experiments.sweep import InProcessExecutor, make_executor, run_cells
from ngdref_cli.main import cli


def invoke(args, **kw):
    return CliRunner().invoke(cli, args, catch_exceptions=False, **kw)


@pytest.fixture
def quick(reproduced):
    """Each figure once in --quick mode (conftest's session-wide ``reproduced``): (folder, record, output)."""
    return reproduced


def _claim(rec, start):
    hits = [c for c in rec["claims"] if c["claim"].startswith(start)]
    assert hits, [c["claim"] for c in rec["claims"]]
    return hits[0]


@pytest.mark.parametrize("name", FIGURES)
def test_quick_figure_writes_its_files(quick, name):
    out, rec, output = quick(name)
    for ext in ("csv", "json", "png"):
        path = out / f"{name}.{ext}"
        assert path.is_file() and path.stat().st_size > 0, path
    assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((out / f"{name}.csv").open()))
    assert len(rows) == len(rec["rows"]) > 0
    assert rec["config"]["quick"] is True and rec["software"]["numpy"]
    assert rec["command"] == "reproduce" and rec["command_line"] == f"ngdref reproduce {name} --quick"
    assert rec["cells"]["total"] == len(list((out / "cells").glob("*.json")))
    assert rec["claims"] and all({"claim", "measured", "paper", "holds"} <= set(c) for c in rec["claims"])
    assert "wall time" in output and rec["wall_seconds"] > 0


def test_fig1a_one_step_convergence(quick):
    _, rec, _ = quick("fig1a")
    assert _claim(rec, "BD c=1")["value"] < 0.1
    assert _claim(rec, "exact c=1")["value"] < 0.1
    assert _claim(rec, "BD c=0.25 vs GD")["holds"]
    assert _claim(rec, "network vs NTK")["value"] < 0.05


def test_fig1b_depth_and_damping(quick):
    _, rec, _ = quick("fig1b")
    assert _claim(rec, "L=4, ρ=0: loss after")["value"] < 1e-3
    assert _claim(rec, "L=4: max_t")["holds"]  # closer to ρ = 0 as ρ decreases
    runs = {(r["depth"], r["damping"]): r for r in rec["summary"]["runs"]}
    rhos = sorted(rec["config"]["dampings"], reverse=True)
    rebound5 = [runs[(5, r)]["rebound"] for r in rhos]
    assert rebound5[0] < 2 and max(rebound5[1:]) > 10  # L = 5: the loss explodes once ρ is small
    assert _claim(rec, "L=5: max_t")["holds"]
    assert _claim(rec, "L=5, ρ=0")["measured"].startswith("refused")


def test_fig2_accuracies(quick):
    _, rec, _ = quick("fig2")
    two = rec["summary"]["two-class"]["methods"]
    assert set(two) == {"exact", "bd", "tridiag", "kfac"}
    assert all(m["mean"] > 0.8 and m["f0_zero"] > 0.8 for m in two.values())
    ten = rec["summary"]["ten-class"]["methods"]
    assert set(ten) == {"exact", "bd", "tridiag"} and all(m["mean"] > 0.5 for m in ten.values())
    assert rec["summary"]["two-class"]["methods"]["exact"]["formula"].startswith("α⁻¹")


def test_fig3_isotropy(quick):
    _, rec, _ = quick("fig3")
    stats = rec["summary"]["condition_number"]
    w = str(rec["config"]["widths"][-1])
    cond = {f: stats[f][w]["mean"] for f in stats}
    assert abs(cond["bd"] - 1) < 1e-6
    assert cond["unit"] - 1 < 0.5 * (cond["diag"] - 1)
    assert cond["diag"] < cond["gd"] and cond["quasi-diag"] < cond["gd"]


def test_figS1_unit_wise_converges(quick):
    _, rec, _ = quick("figS1")
    for lab, s in rec["summary"].items():
        assert s["one_step_ratio"] < 0.1, lab
        assert abs(s["alpha_measured"] / s["alpha_analytic"] - 1) < 0.05, lab


def test_figS2_alpha_matches_s157(quick):
    _, rec, _ = quick("figS2")
    assert rec["claims"][0]["value"] < 0.03


def _poison_record(label_of, label, index):
    """Set the training loss at step ``index`` of the run labelled ``label``."""
    def poison(outcomes, value):
        o = next(o for o in outcomes if label_of(o.params) == label)
        o.result["records"][index]["train_loss"] = value
    return poison


def _poison_result(match, key, sub=None):
    """Set ``key`` (of ``result[sub]``) in the last cell whose parameters ``match``."""
    def poison(outcomes, value):
        o = [o for o in outcomes if match(o.params)][-1]
        (o.result[sub] if sub else o.result)[key] = value
    return poison


#: per figure: a claim (its start) and the value to spoil, one its aggregation must not skip (never
#: the first: ``max`` returns a NaN that comes first but skips one that comes later)
POISON = {
    "fig1a": ("network vs NTK", _poison_record(lambda p: p["label"], "exact c=1", 2)),
    "fig1b": ("L=4: max_t L_t / min", _poison_record(lambda p: (p["network"]["depth"], p["train"]["damping"]),
                                                      (4, 1e-4), 3)),
    "fig2": ("two-class", _poison_result(lambda p: p["task"] == "two-class", "bd", sub="accuracy")),
    "fig3": ("cond(Θ̄) at M = 512: diagonal",
             _poison_result(lambda p: p["fim"] == "diag" and p["width"] == 512, "condition_number")),
    "figS1": ("relu: c=1", _poison_record(lambda p: (p["network"]["activation"], p["train"]["lr_scale"]),
                                          ("relu", 0.5), 2)),
    "figS2": ("α/M measured", _poison_result(lambda p: True, "alpha_measured")),
    "finite-width": ("loss₁/loss₀ at c = 1", _poison_result(lambda p: p["sweep"] == "width" and p["fim"] == "bd"
                                                            and p["width"] == 128, "loss_ratio")),
    "kfac-multi-output": ("no bias: structure", _poison_result(lambda p: p["variant"] == "no bias", "iso_dev")),
    "sub-unit": ("gaussian, M = 32: whole-row blocks",
                _poison_result(lambda p: p["data_name"] == "gaussian" and p["variant"]["id"] == "g4"
                               and p["width"] == 32, "condition_number")),
}


@pytest.mark.parametrize("value", [math.nan, None], ids=["nan", "null"])
@pytest.mark.parametrize("name", FIGURES)
def test_a_missing_value_fails_the_claim_it_feeds(quick, name, value):
    """A NaN (or JSON null) anywhere a claim aggregates makes that claim fail; the analysis runs on."""
    out, rec, _ = quick(name)
    figure = get_figure(name)
    config = rec["config"]
    outcomes = run_cells(build_cells(config), cell_dir=out / "cells")
    assert all(o.cached for o in outcomes)
    start, poison = POISON[name]
    assert _claim({"claims": figure.analyse(config, outcomes)[1]}, start)["holds"] is True
    poisoned = copy.deepcopy(outcomes)
    poison(poisoned, value)
    _, claims, _ = figure.analyse(config, poisoned)
    assert _claim({"claims": claims}, start)["holds"] is False


# ---------------------------------------------------------------------------------------
# executors and resume
# ---------------------------------------------------------------------------------------
def _small_fig3_cells():
    cfg = figure_config("fig3", quick=True)
    cfg.update(widths=[32, 128], seeds=[0], fims=["gd", "bd", "unit", "quasi-diag"])
    return build_cells(cfg)


def _strip(outcomes):
    return [{k: v for k, v in o.result.items() if k != "seconds"} for o in outcomes]


def test_executors_agree():
    cells = _small_fig3_cells()
    reference = _strip(run_cells(cells, InProcessExecutor()))
    with make_executor(jobs=2) as pool:
        assert _strip(run_cells(cells, pool)) == reference
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as lc:
        with make_executor(scheduler=lc.scheduler_address) as dask_executor:
            assert _strip(run_cells(cells, dask_executor)) == reference


def test_cli_scheduler_and_jobs(tmp_path):
    """In-process, a 2-process pool and a Dask cluster whose worker runs 2 cells at once in one
    process give bit-identical rows and CSV files: every cell runs with the same pinned BLAS
    thread count whatever the executor and the machine's core count."""
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as lc:
        r = invoke(["reproduce", "figS2", "--quick", "--out", str(tmp_path / "d"), "--scheduler", lc.scheduler_address])
    assert r.exit_code == 0, r.output
    r2 = invoke(["reproduce", "figS2", "--quick", "--out", str(tmp_path / "p"), "--jobs", "2"])
    assert r2.exit_code == 0, r2.output
    r3 = invoke(["reproduce", "figS2", "--quick", "--out", str(tmp_path / "i")])
    assert r3.exit_code == 0, r3.output
    a, b, c = (json.loads((tmp_path / d / "figS2.json").read_text()) for d in ("d", "p", "i"))
    assert a["executor"].startswith("dask") and b["executor"].startswith("process pool") and c["executor"] == "in-process"
    assert a["threads_per_cell"] == b["threads_per_cell"] == c["threads_per_cell"] == 1
    assert a["rows"] == b["rows"] == c["rows"]
    csvs = {(tmp_path / d / "figS2.csv").read_bytes() for d in ("d", "p", "i")}
    assert len(csvs) == 1


def _blas_threads_probe(params):
    """The thread counts of every BLAS loaded in this process, SciPy's own OpenBLAS included
    (which a fresh worker loads only when a cell first calls scipy.linalg)."""
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_info

    return {"threads": sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})}


def test_cells_run_with_the_pinned_thread_count_and_restore_it(tmp_path):
    from threadpoolctl import threadpool_info

    from ngdref.experiments.sweep import Cell

    def limits():
        return {p["filepath"]: p["num_threads"] for p in threadpool_info()}

    import scipy.linalg  # noqa: F401  (every BLAS the cells can load is loaded before "before")

    before = limits()
    cells = [Cell.make("probe", _blas_threads_probe, {"i": i}) for i in range(2)]
    assert [o.result["threads"] for o in run_cells(cells, threads=1)] == [[1], [1]]
    assert [o.result["threads"] for o in run_cells(cells, threads=2)] == [[2], [2]]
    assert limits() == before
    with make_executor(jobs=2) as pool:
        assert [o.result["threads"] for o in run_cells(cells, pool, threads=1)] == [[1], [1]]
    # worker threads after the main thread pinned and released (a Dask worker's situation:
    # threadpoolctl lets one thread control a shared OpenBLAS pool and ignores the others)
    with concurrent.futures.ThreadPoolExecutor(2) as threads_pool:
        assert [o.result["threads"] for o in run_cells(cells, threads_pool, threads=1)] == [[1], [1]]
    assert limits() == before
    # a stored cell computed with another thread count is recomputed, never mixed into the sweep
    first = run_cells(cells, cell_dir=tmp_path, threads=1)
    assert not any(o.cached for o in first)
    assert all(o.cached for o in run_cells(cells, cell_dir=tmp_path, threads=1))
    again = run_cells(cells, cell_dir=tmp_path, threads=2)
    assert not any(o.cached for o in again) and [o.result["threads"] for o in again] == [[2], [2]]
    assert all(json.loads((tmp_path / f"{c.key}.json").read_text())["threads"] == 2 for c in cells)


def test_resume_recomputes_only_missing_cells(tmp_path):
    out = tmp_path / "s2"
    args = ["reproduce", "figS2", "--quick", "--out", str(out)]
    assert invoke(args).exit_code == 0
    first = json.loads((out / "figS2.json").read_text())
    files = sorted((out / "cells").glob("*.json"))
    assert first["cells"]["computed"] == len(files) == first["cells"]["total"]
    victim = files[1]
    mtimes = {f: f.stat().st_mtime_ns for f in files if f != victim}
    victim.unlink()
    assert invoke(args).exit_code == 0
    second = json.loads((out / "figS2.json").read_text())
    assert second["cells"]["computed"] == 1 and second["cells"]["cached"] == len(files) - 1
    assert victim.is_file()
    assert all(f.stat().st_mtime_ns == t for f, t in mtimes.items())
    assert second["rows"] == first["rows"]
    assert invoke(args + ["--fresh"]).exit_code == 0
    third = json.loads((out / "figS2.json").read_text())
    assert third["cells"]["computed"] == len(files)


def test_changed_settings_do_not_reuse_cells(tmp_path):
    out = tmp_path / "s2"
    assert invoke(["reproduce", "figS2", "--quick", "--out", str(out)]).exit_code == 0
    assert invoke(["--seed", "1", "reproduce", "figS2", "--quick", "--out", str(out)]).exit_code == 0
    rec = json.loads((out / "figS2.json").read_text())
    assert rec["cells"]["cached"] == 0 and rec["seed"] == 1
    assert rec["command_line"] == "ngdref --seed 1 reproduce figS2 --quick"


def test_without_matplotlib_data_still_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "s2"
    r = invoke(["reproduce", "figS2", "--quick", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "pip install 'ngdref[plot]'" in " ".join(r.output.split())
    assert (out / "figS2.csv").is_file() and (out / "figS2.json").is_file()
    assert not (out / "figS2.png").exists()


def test_missing_dask_is_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "dask.distributed", None)
    r = CliRunner().invoke(cli, ["reproduce", "figS2", "--quick", "--out", str(tmp_path), "--scheduler", "tcp://x:1"])
    assert r.exit_code == 2
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "pip install 'ngdref[dask]'" in lines[0]


@pytest.mark.parametrize("args,needle", [
    (["reproduce", "figS2", "--jobs", "0"], "--jobs"),
    (["reproduce", "fig2", "--data", "/nonexistent/folder"], "not a folder"),
])
def test_user_errors(args, needle, tmp_path):
    r = CliRunner().invoke(cli, args + ["--out", str(tmp_path)])
    assert r.exit_code == 2 and needle in r.output and "Traceback" not in r.output


CALLS: list = []


def _count(p):
    CALLS.append(p["i"])
    return {"square": p["i"] ** 2}


def test_run_cells_skips_stored_and_recomputes_corrupt(tmp_path):
    from ngdref.experiments.sweep import Cell

    cells = [Cell.make("t", _count, {"i": i}) for i in range(4)]
    CALLS.clear()
    first = run_cells(cells, cell_dir=tmp_path)
    assert CALLS == [0, 1, 2, 3] and [o.result["square"] for o in first] == [0, 1, 4, 9]
    (tmp_path / f"{cells[2].key}.json").write_text("{ half-written")
    (tmp_path / f"{cells[3].key}.json").unlink()
    CALLS.clear()
    with pytest.warns(UserWarning, match="not valid JSON"):  # the library's default notice
        second = run_cells(cells, cell_dir=tmp_path)
    assert sorted(CALLS) == [2, 3] and [o.cached for o in second] == [True, True, False, False]
    CALLS.clear()
    run_cells(cells, cell_dir=tmp_path, fresh=True)
    assert CALLS == [0, 1, 2, 3]


def _idx(arr):
    import struct

    return struct.pack(">I", 0x0800 + arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def test_fig2_on_a_user_folder(tmp_path):
    """--data PATH: MNIST IDX files (here written from the bundled subset) drive fig2."""
    from ngdref.data import _bundled_mnist

    import numpy as np

    images, labels = _bundled_mnist()
    order = np.random.default_rng(0).permutation(labels.size)  # the subset is stored class by class
    images, labels = images[order], labels[order]
    folder = tmp_path / "mnist"
    folder.mkdir()
    split = {"train": slice(0, 4000), "t10k": slice(4000, 5000)}
    for prefix, sl in split.items():
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(_idx(images[sl].reshape(-1, 28, 28)))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(labels[sl].astype("uint8")))
    out = tmp_path / "fig2"
    r = invoke(["reproduce", "fig2", "--quick", "--data", str(folder), "--out", str(out)])
    assert r.exit_code == 0, r.output
    rec = json.loads((out / "fig2.json").read_text())
    assert rec["command_line"] == f"ngdref reproduce fig2 --quick --data {folder}"
    two = rec["summary"]["two-class"]
    assert two["data"]["name"] == str(folder) and two["data"]["n_train"] == 100
    assert all(m["mean"] > 0.8 for m in two["methods"].values())


def test_ctrl_c_keeps_finished_cells(tmp_path):
    """SIGINT in the middle of a sweep: exit 130, a hint to rerun, every finished cell stored intact."""
    import os
    import signal
    import subprocess
    import time

    out = tmp_path / "s2"
    cmd = [sys.executable, "-c", "from ngdref_cli.main import main; main()", "reproduce", "figS2", "--out", str(out)]
    # SIGINT back to its default in the child: a suite started as a background job (`pytest &` in a
    # script) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while time.time() < deadline and not list((out / "cells").glob("*.json")):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "run the same command again to resume" in output
    files = list((out / "cells").glob("*.json"))
    assert 0 < len(files) < 39
    assert all(json.loads(f.read_text())["result"]["alpha_measured"] > 0 for f in files)


def test_cells_on_a_device_backend_return_host_values():
    """The strict backend (a CPU stand-in for a GPU) through the cells: JSON-able host results, same numbers."""
    cfg = figure_config("figS2", quick=True)
    cfg.update(shifts=[1.0], seeds=[0])
    host = run_cells(build_cells(cfg, "numpy"))[0].result
    dev = run_cells(build_cells(cfg, "strict"))[0].result
    json.dumps(dev)
    assert abs(dev["alpha_measured"] / host["alpha_measured"] - 1) < 1e-10


THETA_BAR_TEX = r"$\bar{\Theta}$"


def _drawn(quick, name):
    """The matplotlib figure of ``name`` at --quick, drawn from the cells the quick run stored."""
    from ngdref.experiments.figures.plotting import pyplot

    pytest.importorskip("matplotlib")
    plt = pyplot()
    out, rec, _ = quick(name)
    figure = get_figure(name)
    config = figure.config(True, None, 0)
    outcomes = run_cells(figure.cells(config, "numpy", "float64"), None, out / "cells")
    rows, _, extra = figure.analyse(config, outcomes)
    rows = uniform_rows(rows)  # as run_figure writes them: one key set
    assert rows == rec["rows"]  # the same data as the written figure
    fig = figure.draw(plt, config, rows, extra)
    fig.tight_layout()
    return plt, fig


def _texts(fig) -> list[str]:
    out = [t.get_text() for t in fig.texts]
    if getattr(fig, "_suptitle", None) is not None:
        out.append(fig._suptitle.get_text())
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()] + [t.get_text() for t in ax.texts]
        out += [t.get_text() for t in ax.get_xticklabels()]
        if ax.get_legend() is not None:
            out += [t.get_text() for t in ax.get_legend().get_texts()]
    return [t for t in out if t]


@pytest.mark.parametrize("name", FIGURES)
def test_quick_figure_text_is_readable(quick, name):
    """Θ̄ as mathtext (a plain combining macron is dropped by matplotlib), approximations in words,
    integer step ticks on the training-loss figures, no empty plotted series."""
    plt, fig = _drawn(quick, name)
    try:
        texts = _texts(fig)
        assert not any("̄" in t for t in texts), texts  # no combining macron left anywhere
        cli_names = {"gd", "bd", "exact", "tridiag", "kfac", "unit", "diag", "quasi-diag"}
        assert not cli_names & set(texts), texts
        assert not any(t.startswith(("BD c=", "exact c=", "GD η=")) for t in texts), texts  # the runs' CLI labels
        if name in ("fig1b", "fig2", "fig3", "figS2"):
            assert any(THETA_BAR_TEX in t for t in texts), texts
        fig.canvas.draw()
        for ax in fig.axes:
            for line in ax.get_lines():
                if line.get_label().startswith("×"):  # the legend proxy of a stopped run
                    continue
                assert len(line.get_xdata()) > 0, (name, line.get_label())
            if name in ("fig1a", "fig1b", "figS1"):
                ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
                assert ticks and all(float(t).is_integer() for t in ticks), ticks
    finally:
        plt.close(fig)


def test_quick_figures_name_approximations_in_words(quick):
    plt, fig = _drawn(quick, "fig1a")
    try:
        labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert any(t.startswith("block-diagonal") for t in labels) and any(t.startswith("exact NGD") for t in labels)
        assert not any(t.startswith("×") for t in labels)  # no run stopped: no × in the legend
    finally:
        plt.close(fig)
    plt, fig = _drawn(quick, "fig3")
    try:
        ax = fig.axes[0]
        assert [t.get_text() for t in ax.get_xticklabels()] == [str(w) for w in figure_config("fig3", True)["widths"]]
        legend = ax.get_legend()
        names = {t.get_text() for t in legend.get_texts()}
        assert {"block-diagonal", "unit-wise", "diagonal", "quasi-diagonal"} <= names, names
        # outside the axes: it covers no data
        r = fig.canvas.get_renderer()
        assert legend.get_window_extent(r).x0 >= ax.get_window_extent(r).x1
    finally:
        plt.close(fig)
    plt, fig = _drawn(quick, "fig2")
    try:
        for ax in fig.axes:
            labels = [t.get_text() for t in ax.get_legend().get_texts()]
            assert "one draw of $f_0$" in labels, labels
            assert "exact NGD" in [t.get_text() for t in ax.get_xticklabels()]
    finally:
        plt.close(fig)
