"""`ngdref reproduce` refuses what a user got wrong before any work, trusts no stored cell blindly,
names a failed cell in one line, and never lets a NaN pass a claim."""

from __future__ import annotations

import copy

import json
import math
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner

from ngdref.experiments.figures import build_cells, figure_config
from ngdref.experiments.figures import fig2 as fig2_module
from ngdref.experiments.figures.analysis import holds, max_theory_gap, mean, ratio, series_ratio, worst
from ngdref.experiments.sweep import Cell, CellError, make_executor, run_cells
from ngdref_cli.main import cli

CLI = [sys.executable, "-c", "from ngdref_cli.main import main; main()"]


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _one_error_line(result):
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


# ---------------------------------------------------------------------------------------
# user errors: exit 2, one line on stderr, nothing written — all before any work
# ---------------------------------------------------------------------------------------
@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working folder with a file, an empty folder and a folder of non-data files in it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a folder\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "notdata").mkdir()
    (tmp_path / "notdata" / "readme.txt").write_text("hello\n")
    (tmp_path / "half" / "cells").parent.mkdir()
    (tmp_path / "half" / "cells").write_text("a file where the cells go\n")
    (tmp_path / "taken" / "figS2.csv").mkdir(parents=True)
    (tmp_path / "vector" / "figS2.svg").mkdir(parents=True)  # --format svg would write here
    (tmp_path / "capt" / "figS2.caption.md").mkdir(parents=True)
    (tmp_path / "sheet" / "index.html").mkdir(parents=True)  # reproduce all's contact sheet
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "index.html").write_text("a contact sheet someone protected\n")
    (tmp_path / "locked" / "index.html").chmod(0o444)  # read-only: would be replaced at the end of the run
    (tmp_path / "lockedfig" / "figS2.csv").parent.mkdir()
    (tmp_path / "lockedfig" / "figS2.csv").write_text("x\n")
    (tmp_path / "lockedfig" / "figS2.csv").chmod(0o444)
    return tmp_path


USER_ERRORS = [
    # (arguments after `reproduce`, a word the one line must contain)
    (["figS2", "--out", "afile"], "not a folder"),
    (["figS2", "--out", ""], "--out"),
    (["figS2", "--out", " "], "--out"),
    (["figS2", "--out", "afile/sub"], "afile is not a folder"),
    (["all", "--out", "afile"], "not a folder"),
    (["figS2", "--out", "half"], "cells"),
    (["figS2", "--out", "taken"], "figS2.csv"),
    (["figS2", "--scheduler", ""], "--scheduler"),
    (["figS2", "--scheduler", "   "], "--scheduler"),
    (["figS2", "--scheduler", "foo"], "port"),
    (["figS2", "--scheduler", "127.0.0.1"], "port"),
    (["figS2", "--scheduler", "tcp://"], "port"),
    (["figS2", "--scheduler", "http://127.0.0.1:8786"], "scheme"),
    (["figS2", "--scheduler", "tcp://127.0.0.1:notaport"], "--scheduler"),
    (["figS2", "--scheduler", "tcp://127.0.0.1:99999"], "port"),
    (["figS2", "--scheduler", "tcp://[::1:5"], "--scheduler"),
    (["figS2", "--scheduler", "tcp://127.0.0.1:1"], "refused"),
    (["figS2", "--scheduler", "inproc://192.0.2.1/1/1"], "does not match"),
    (["figS2", "--scheduler", "inproc://nonsense"], "--scheduler"),
    (["figS2", "--jobs", "0"], "--jobs"),
    (["figS2", "--jobs", "-3"], "--jobs"),
    (["figS2", "--jobs", "2", "--scheduler", "tcp://127.0.0.1:8786"], "exclusive"),
    (["figS2", "--data", "empty"], "fig2 only"),
    (["fig1a", "--data", "mnist"], "fig2 only"),
    (["fig3", "--quick", "--data", "notdata"], "fig2 only"),
    (["fig2", "--data", ""], "--data"),
    (["fig2", "--data", "afile"], "not a folder"),
    (["fig2", "--data", "/nonexistent/folder"], "not a folder"),
    (["fig2", "--quick", "--data", "empty"], "no MNIST IDX"),
    (["fig2", "--quick", "--data", "notdata"], "no MNIST IDX"),
    (["all", "--quick", "--data", "empty"], "no MNIST IDX"),
    (["extensions", "--quick", "--data", "mnist"], "none of extensions"),
    (["figS2", "--jobs", "many"], "--jobs"),
    (["figS2", "--threads", "0"], "--threads"),
    (["fig9"], "fig9"),
    (["figS2", "--json", "empty"], "folder"),
    (["figS2", "--json", "afile/x.json"], "afile"),
    (["figS2", "--out", "vector", "--format", "png,svg"], "figS2.svg"),
    (["figS2", "--out", "capt"], "figS2.caption.md"),
    (["all", "--quick", "--out", "sheet"], "index.html"),
    (["all", "--quick", "--out", "locked"], "index.html' is read-only"),
    (["figS2", "--quick", "--out", "lockedfig"], "figS2.csv' is read-only"),
    (["figS2", "--format", "png;pdf"], "--format"),
    (["figS2", "--format", "jpeg"], "--format"),
    (["figS2", "--set", "shifts=[0.5", "--quick"], "cannot read the value"),
    (["figS2", "--config", "afile"], "not valid TOML"),
    (["figS2", "--config", "empty"], "folder"),
    (["figS2", "--config", "nofile.toml"], "does not exist"),
    (["figS2", "--config", ""], "--config is empty"),
    (["figS2", "--config", "  "], "--config is empty"),
    (["all", "--quick", "--set", "nokey=1"], "unknown key"),
    (["fig3", "--quick", "--set", "widths=[16]", "--set", "widths=[32]"], "--set widths is given twice"),
    (["figS2", "--quick", "--out", "/proc/ngdref-x"], "choose another --out"),
    (["fig3", "--quick", "--set", "network.width=1024"], "fig3: network.width is not read: the sweep sets the width "
                                                          "per cell: use --set widths=[…]"),
    (["fig1b", "--quick", "--set", "fig1b.network.depth=3"], "use --set depths=[…]"),
    (["fig3", "--quick", "--set", "widths=[16,16]"], "fig3: widths has 16 twice; give each value once"),
    (["fig3", "--quick", "--set", "widths=[20000]"], "would hold at least 6.0 GiB"),
    (["fig1a", "--quick", "--set", "network.width=20000"], "above the limit of 4.0 GiB"),
    (["fig3", "--quick", "--set", "seeds=[0, 1, 0]"], "fig3: seeds has 0 twice"),
    (["figS2", "--quick", "--set", "shifts=[1, 1.0]"], "figS2: shifts has 1.0 twice"),
]


@pytest.mark.parametrize("args,needle", USER_ERRORS, ids=[" ".join(a) or "''" for a, _ in USER_ERRORS])
def test_user_errors_are_one_line_exit_2_and_write_nothing(workdir, args, needle):
    before = _tree(workdir)
    r = CliRunner().invoke(cli, ["reproduce", *args])
    assert r.exit_code == 2, r.output
    assert needle in _one_error_line(r)
    assert _tree(workdir) == before


def test_a_peer_that_accepts_and_never_speaks_is_refused_in_bounded_time(tmp_path):
    """--scheduler pointing at something that accepts TCP connections but does not speak Dask
    (a dashboard port by mistake): refused with one line, exit 2, long before any generous bound."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted = []

    def accept():
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    address = f"tcp://127.0.0.1:{server.getsockname()[1]}"
    t0 = time.monotonic()
    try:
        r = subprocess.run([*CLI, "reproduce", "figS2", "--quick", "--out", str(tmp_path / "s2"), "--scheduler", address],
                           capture_output=True, text=True, timeout=300)
    finally:
        server.close()
        for conn in accepted:
            conn.close()
    assert time.monotonic() - t0 < 120
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "did not answer as a Dask scheduler" in lines[0], r.stderr
    assert accepted  # it did get through to the peer
    assert not (tmp_path / "s2").exists()


def test_a_real_tcp_scheduler_still_connects(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                                  dashboard_address=None) as lc:
        assert lc.scheduler_address.startswith("tcp://")
        with make_executor(scheduler=lc.scheduler_address) as executor:
            cells = [Cell.make("sq", _square, {"i": i}) for i in range(2)]
            assert [o.result["square"] for o in run_cells(cells, executor)] == [0, 1]


# ---------------------------------------------------------------------------------------
# stored cells are validated: a malformed one is recomputed and said so in one line
# ---------------------------------------------------------------------------------------
def _square(p):
    return {"square": p["i"] ** 2, "label": f"i={p['i']}"}


def _check_square(result, params):
    if not isinstance(result.get("square"), int) or isinstance(result.get("square"), bool):
        return "'square' is not an integer"
    return None


_square.check_result = _check_square


def _valid_record(cell, threads=1):
    return {"key": cell.key, "function": "x", "params": cell.params, "threads": threads, "seconds": 0.5,
            "result": {"square": cell.params["i"] ** 2, "label": f"i={cell.params['i']}"}}


def _write_text(text):
    return lambda path, cell: path.write_text(text)


def _write_record(**change):
    def write(path, cell):
        rec = _valid_record(cell)
        for k, v in change.items():
            if v is _DROP:
                rec.pop(k)
            else:
                rec[k] = v
        path.write_text(json.dumps(rec))
    return write


_DROP = object()


def _make_folder(path, cell):
    path.mkdir()
    (path / "inside.txt").write_text("a user's file\n")


CORRUPT = {
    "empty list": (_write_text("[]"), "list"),
    "null": (_write_text("null"), "null"),
    "a string": (_write_text('"result"'), "str"),
    "a number": (_write_text("42"), "int"),
    "empty file": (_write_text(""), "not valid JSON"),
    "half-written": (_write_text('{"key": "sq-'), "not valid JSON"),
    "binary": (lambda p, c: p.write_bytes(b"\x00\xff\xfe{"), "not valid JSON"),
    "string result": (_write_record(result="a string"), "str"),
    "null result": (_write_record(result=None), "null"),
    "list result": (_write_record(result=[1, 2]), "list"),
    "no result": (_write_record(result=_DROP), "lacks result"),
    "no params": (_write_record(params=_DROP), "lacks params"),
    "no threads": (_write_record(threads=_DROP), "lacks threads"),
    "other params": (_write_record(params={"i": 99}), "other parameters"),
    "other key": (_write_record(key="sq-other"), "sq-other"),
    "string threads": (_write_record(threads="1"), "thread count"),
    "string seconds": (_write_record(seconds="fast"), "duration"),
    "negative seconds": (_write_record(seconds=-1), "duration"),
    "result without its key": (_write_record(result={"label": "x"}), "'square'"),
    "result of the wrong type": (_write_record(result={"square": "4", "label": "x"}), "'square'"),
    "a folder": (_make_folder, "not a regular file"),
    "a dangling link": (lambda p, c: p.symlink_to(p.with_name("nowhere")), "not a regular file"),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_a_malformed_stored_cell_is_recomputed_and_said_so(tmp_path, case):
    corrupt, needle = CORRUPT[case]
    cells = [Cell.make("sq", _square, {"i": i}) for i in range(3)]
    run_cells(cells, cell_dir=tmp_path)
    victim = tmp_path / f"{cells[1].key}.json"
    victim.unlink()
    corrupt(victim, cells[1])
    notices = []
    out = run_cells(cells, cell_dir=tmp_path, notice=notices.append)
    assert [o.cached for o in out] == [True, False, True]
    assert [o.result["square"] for o in out] == [0, 1, 4]
    assert len(notices) == 1 and "\n" not in notices[0], notices
    assert str(victim) in notices[0] and needle in notices[0] and "recomputing" in notices[0]
    assert json.loads(victim.read_text())["result"]["square"] == 1  # a valid record in its place
    if case == "a folder":  # a user's folder is moved aside, never deleted
        assert (tmp_path / f"{victim.name}.invalid" / "inside.txt").is_file()
    assert all(o.cached for o in run_cells(cells, cell_dir=tmp_path, notice=notices.append))
    assert len(notices) == 1


def test_malformed_cells_of_a_figure_are_recomputed_through_the_cli(tmp_path):
    out = tmp_path / "s2"
    args = ["reproduce", "figS2", "--quick", "--out", str(out)]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    first = json.loads((out / "figS2.json").read_text())
    files = sorted((out / "cells").glob("*.json"))
    files[0].write_text("[]")
    files[1].write_text("null")
    rec = json.loads(files[2].read_text())
    rec["result"] = "a string"
    files[2].write_text(json.dumps(rec))
    files[3].unlink()
    files[3].mkdir()
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    said = [ln for ln in r.stderr.splitlines() if "recomputing that cell" in ln]
    assert len(said) == 4 and all(any(f.name in ln for ln in said) for f in files[:4])
    second = json.loads((out / "figS2.json").read_text())
    assert second["cells"]["computed"] == 4 and second["rows"] == first["rows"]


# ---------------------------------------------------------------------------------------
# a failed cell: one line naming it; exit 2 when the user can fix it, 1 otherwise
# ---------------------------------------------------------------------------------------
def _idx(arr):
    import struct

    return struct.pack(">I", 0x0800 + arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def test_a_worker_failure_is_one_line_naming_the_cell(tmp_path):
    """Bad data read in a process-pool worker: one line with the cell and the reason (not the
    worker's remote traceback), exit 2; the full traceback is kept in the folder's errors.log."""
    data = tmp_path / "mnist"
    data.mkdir()
    labels = np.arange(50, dtype=np.uint8) % 10
    for prefix in ("train", "t10k"):
        (data / f"{prefix}-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03 this is not an IDX body")
        (data / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(labels))
    out = tmp_path / "fig2"
    r = subprocess.run([*CLI, "reproduce", "fig2", "--quick", "--jobs", "2", "--data", str(data), "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("Error: fig2: cell fig2-") and "train-images-idx3-ubyte" in lines[0]
    assert "errors.log" in lines[0]
    log = (out / "errors.log").read_text()
    assert "Traceback" in log and "DataError" in log


def _broken_cell(p):
    raise RuntimeError("a bug in a cell")


def test_a_bug_in_a_cell_is_one_line_and_exit_1(tmp_path, monkeypatch):
    from ngdref.experiments.figures import figS2

    monkeypatch.setattr(figS2, "isotropy_cell", _broken_cell)
    out = tmp_path / "s2"
    r = CliRunner().invoke(cli, ["reproduce", "figS2", "--quick", "--out", str(out)])
    assert r.exit_code == 1, r.output
    line = _one_error_line(r)
    assert "cell figS2-" in line and "RuntimeError: a bug in a cell" in line and "errors.log" in line
    assert "_broken_cell" in (out / "errors.log").read_text()


def test_a_process_pool_failure_carries_the_workers_traceback():
    cells = [Cell.make("broken", _broken_cell, {"i": 0})]
    with make_executor(jobs=2) as pool:
        with pytest.raises(CellError) as info:
            run_cells(cells, pool)
    err = info.value
    assert err.key == cells[0].key and not err.user_caused and isinstance(err.error, RuntimeError)
    assert str(err) == f"cell {cells[0].key} failed: RuntimeError: a bug in a cell"
    assert "_broken_cell" in err.traceback_text  # the worker's frames, from its remote traceback


# ---------------------------------------------------------------------------------------
# NaN never passes a claim
# ---------------------------------------------------------------------------------------
def test_aggregations_do_not_hide_nan_or_missing_values():
    nan = math.nan
    assert max([1.0, nan]) == 1.0  # what the analyses must not rely on
    assert worst([1.0, nan]) is None and worst([nan, 1.0]) is None and worst([1.0, None]) is None
    assert worst([]) is None and worst([1.0, 3.0]) == 3.0
    assert mean([1.0, nan]) is None and mean([1.0, None]) is None and mean([1.0, 3.0]) == 2.0
    assert holds(nan, lambda v: v < 1) is False and holds(None, lambda v: v < 1) is False
    assert holds([0.5, nan], lambda v: True) is False and holds(0.5, lambda v: v < 1) is True
    rec = [{"train_loss": 1.0, "theory_train_loss": 1.0}, {"train_loss": nan, "theory_train_loss": 0.5},
           {"train_loss": 0.1, "theory_train_loss": 0.1}]
    assert max_theory_gap(rec) is None
    # L_t / L_0: None when L_t or L_0 is missing, NaN or 0 (L_0), or the series is too short
    assert series_ratio([2.0, 1.0], 1) == 0.5 and series_ratio([2.0, 1.0], 2) is None
    assert series_ratio([2.0, nan], 1) is None and series_ratio([nan, 1.0], 1) is None
    assert series_ratio([None, 1.0], 1) is None and series_ratio([0.0, 1.0], 1) is None
    assert ratio(rec, 2) == 0.1 and ratio(rec, 1) is None and ratio(rec, 3) is None


def test_a_nan_in_a_stored_cell_fails_the_claim(tmp_path):
    out = tmp_path / "s2"
    args = ["reproduce", "figS2", "--quick", "--out", str(out)]
    assert CliRunner().invoke(cli, args).exit_code == 0
    assert json.loads((out / "figS2.json").read_text())["claims"][0]["holds"] is True
    victim = sorted((out / "cells").glob("*.json"))[-1]  # not the first: max() skips a NaN that is not first
    victim.write_text(victim.read_text().replace('"alpha_measured": ', '"alpha_measured": NaN, "was": ', 1))
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    rec = json.loads((out / "figS2.json").read_text())
    assert rec["cells"]["cached"] == rec["cells"]["total"]  # a NaN is data, not a malformed file
    assert rec["claims"][0]["holds"] is False
    assert "✗" in r.stdout


# ---------------------------------------------------------------------------------------
# fig2 cells are keyed by the data's content and the dtype
# ---------------------------------------------------------------------------------------
def _write_mnist(folder, seed):
    rng = np.random.default_rng(seed)
    folder.mkdir(exist_ok=True)
    for prefix, n in (("train", 500), ("t10k", 500)):  # --quick: 50 per class of 0 and 7, train and test
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.resize(np.arange(10, dtype=np.uint8), n)
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(_idx(images))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(labels))
        for name in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
            os.utime(folder / name, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))


def _keys(config, dtype="float64"):
    return [c.key for c in build_cells(config, "numpy", dtype)]


def test_fig2_cells_are_keyed_by_content_and_dtype(tmp_path):
    data = tmp_path / "mnist"
    _write_mnist(data, 0)
    before = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in data.iterdir()}
    first = figure_config("fig2", quick=True, data=str(data))
    assert first["tasks"][0]["data"]["content"].startswith("sha256:")
    assert _keys(first) == _keys(figure_config("fig2", quick=True, data=str(data)))
    _write_mnist(data, 1)  # regenerated in place: same names, sizes and modification times
    assert {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in data.iterdir()} == before
    regenerated = figure_config("fig2", quick=True, data=str(data))
    assert not set(_keys(first)) & set(_keys(regenerated))
    assert not set(_keys(first)) & set(_keys(first, "float32"))
    bundled = figure_config("fig2", quick=True)
    assert not set(_keys(bundled)) & set(_keys(bundled, "float32"))


def test_fig2_digest_reads_the_bytes_once_per_configuration(tmp_path, monkeypatch):
    data = tmp_path / "mnist"
    _write_mnist(data, 0)
    calls = []
    real = fig2_module.data_digest
    monkeypatch.setattr(fig2_module, "data_digest", lambda folder: calls.append(folder) or real(folder))
    config = figure_config("fig2", quick=True, data=str(data))
    assert len(calls) == 1 and len({t["data"]["content"] for t in config["tasks"]}) == 1


def test_fig2_regenerated_data_and_another_dtype_are_recomputed(tmp_path):
    data, out = tmp_path / "mnist", tmp_path / "fig2"
    _write_mnist(data, 0)
    args = ["reproduce", "fig2", "--quick", "--data", str(data), "--out", str(out)]

    def run(*extra):
        r = CliRunner().invoke(cli, [*extra, *args])
        assert r.exit_code == 0, r.output
        return json.loads((out / "fig2.json").read_text())

    first = run()
    assert first["cells"]["cached"] == 0
    assert run()["cells"]["cached"] == first["cells"]["total"]
    _write_mnist(data, 1)
    regenerated = run()
    assert regenerated["cells"]["cached"] == 0 and regenerated["rows"] != first["rows"]
    in32 = run("--dtype", "float32")
    assert in32["cells"]["cached"] == 0 and in32["dtype"] == "float32"
    # the recorded command spells out a global setting only when it is not the default, each on its own
    assert in32["command_line"].startswith("ngdref --dtype float32 reproduce fig2")
    assert "--backend" not in in32["command_line"]
    assert regenerated["command_line"].startswith("ngdref reproduce fig2")


def test_reproduce_help_lists_figures_in_one_column_with_short_summaries():
    """K2: every figure's line of `reproduce --help` has its summary in one column (the width of the longest
    name), wrapped under itself so that no line is wider than an 80-column terminal (display cells), each
    summary at most 70 characters (the rest is in the figure's caption and docstring)."""
    from rich.cells import cell_len

    from ngdref.experiments.figures.registry import GROUP_HELP, GROUPS, REGISTRY

    r = CliRunner().invoke(cli, ["reproduce", "--help"], env={"COLUMNS": "80"})
    assert r.exit_code == 0
    wide = [ln for ln in r.output.splitlines() if cell_len(ln) > 80]
    assert not wide, wide
    names = [*REGISTRY, *GROUPS]
    lines = {ln.split()[0]: ln for ln in r.output.splitlines() if ln.split() and ln.split()[0] in names}
    assert set(lines) == set(names)
    first_words = {n: (REGISTRY[n].summary if n in REGISTRY else GROUP_HELP[n]).split()[0] for n in names}
    starts = {ln.index(first_words[n], len(n)) for n, ln in lines.items()}
    assert len(starts) == 1, lines
    text = " ".join(r.output.split())  # every summary is there whole once the wrapping is undone
    assert all(" ".join(REGISTRY[n].summary.split()) in text for n in REGISTRY)
    assert all(len(f.summary) <= 70 for f in REGISTRY.values())


def test_sweep_memory_estimate_counts_parameters_and_signals_and_refuses_up_front(workdir, monkeypatch):
    """B5: the estimate of a cell is itemsize · (k·P + 3·(N + N′)·ΣM_l), P counted here by hand (fig3 quick,
    M = 32: L = 3, M0 = 30, N = 20, σ_b² > 0: biases; k = 2 for isotropy and training cells: θ_0, θ_t); a sweep
    whose largest cell (times --jobs) is above NGDREF_MAX_BYTES is refused before any file, with the estimate."""
    from ngdref.experiments.figures.cells import cell_memory, check_sweep_memory

    cells = build_cells(figure_config("fig3", quick=True))
    m32 = next(c for c in cells if c.params["width"] == 32)
    p = (30 * 32 + 32) + (32 * 32 + 32) + (32 + 1)
    assert cell_memory(m32)[0] == 8 * (2 * p + 3 * 20 * (32 + 32 + 1))
    train = build_cells(figure_config("fig1a", quick=True))[0]  # M = 1024, M0 = 100, N + N' = 40, σ_b² = 0: no biases
    p1 = 100 * 1024 + 1024 * 1024 + 1024
    assert cell_memory(train)[0] == 8 * (2 * p1 + 3 * 40 * (1024 + 1024 + 1))
    for fim, k in (("diag", 3), ("quasi-diag", 3), ("block", 2), ("unit", 2), ("kfac", 2), ("gd", 2)):
        other = copy.deepcopy(train)  # diag and quasi-diag make Δθ beside θ_0 and θ_t (block: whole rows, factored)
        other.params["train"]["fim"] = fim
        assert cell_memory(other)[0] == 8 * (k * p1 + 3 * 40 * (1024 + 1024 + 1)), fim
    assert cell_memory(build_cells(figure_config("fig2", quick=True))[0]) == (0, "")  # analytic: no network
    one = check_sweep_memory("fig1a", [train])
    monkeypatch.setenv("NGDREF_MAX_BYTES", str(2 * one))
    assert check_sweep_memory("fig1a", [train, train], jobs=2) == 2 * one
    before = _tree(workdir)
    r = CliRunner().invoke(cli, ["reproduce", "fig1a", "--quick", "--jobs", "3"])
    assert r.exit_code == 2 and "× 3 cells at once (--jobs)" in _one_error_line(r) and "MiB" in r.stderr
    assert _tree(workdir) == before
