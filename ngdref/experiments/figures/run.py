"""Run one figure end to end: cells through an executor, then CSV, JSON, caption and plot.

    DIR/<figure>.csv         one row per run and step / seed / width
    DIR/<figure>.json        command, config (every setting), software, rows; then claims, cells, wall time
    DIR/<figure>.caption.md  the caption: settings, what the lines and markers are, the claims table
    DIR/<figure>.png         the plot (needs matplotlib, the ``plot`` extra); .pdf, .svg with ``formats``
    DIR/cells/*.json         one file per finished cell (resume; ``fresh`` recomputes)
    DIR/errors.log           the full traceback of a cell that failed (appended)

A run holds the folder's lock (:func:`ngdref.io.folder_lock`) from its first cell to its last
file, so two runs into one folder take turns: the second reuses the first's cells and writes
the same files a run of its own would.
"""

from __future__ import annotations

import csv
import datetime
import io
import time
from pathlib import Path
from typing import Callable

from ...errors import one_line
from ...io import folder_lock, software_versions, write_atomic, write_json
from ..sweep import DEFAULT_CELL_THREADS, CellError, CellOutcome, run_cells
from .registry import get_figure


def uniform_rows(rows: list[dict]) -> list[dict]:
    """Every row with the same columns, in the order of their first appearance, None where a row lacks one
    (fig1b's refused L = 5, ρ = 0 row has a ``message`` and no losses): JSON rows as tabular as the CSV."""
    fields: dict = {}
    for r in rows:
        fields.update(dict.fromkeys(r))
    return [{k: r.get(k) for k in fields} for r in rows]


def rows_to_csv(rows: list[dict]) -> str:
    """Rows as CSV: the union of their keys in first-seen order; None as an empty field."""
    fields: list[str] = []
    for r in rows:
        for k in r:
            if k not in fields:
                fields.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
    return buf.getvalue()


def run_figure(
    name: str,
    out_dir: str | Path,
    quick: bool = False,
    data: str | None = None,
    backend: str = "numpy",
    dtype: str = "float64",
    seed: int = 0,
    executor=None,
    executor_name: str = "in-process",
    fresh: bool = False,
    progress: Callable[[int, int, CellOutcome], None] | None = None,
    command: str | None = None,
    plot: bool = True,
    threads: int = DEFAULT_CELL_THREADS,
    config: dict | None = None,
    notice: Callable[[str], None] | None = None,
    on_wait: Callable[[Path], None] | None = None,
    formats: tuple[str, ...] = ("png",),
    settings: dict | None = None,
) -> dict:
    """Run figure ``name`` (cells through ``executor``), write CSV/JSON/PNG into ``out_dir``; return the record.

    ``config``: the figure's configuration when the caller built it already (checks before any
    work; fig2 hashes its data once); ``notice``: one line per stored cell found malformed
    (recomputed); ``on_wait(lock)``: called before waiting for another run writing ``out_dir``;
    ``formats``: the plot's file formats (:data:`~.plotting.FORMATS`); ``settings``: further settings of
    the run recorded in the JSON ``config`` (the CLI's: jobs, scheduler, data folder, overrides, …).
    A failing cell raises :class:`~ngdref.experiments.sweep.CellError` after its traceback was
    appended to ``out_dir/errors.log`` (``err.log`` is that path).
    """
    figure = get_figure(name)
    config = figure.config(quick, data, seed) if config is None else config
    out = Path(out_dir)
    with folder_lock(out, on_wait):
        t0 = time.perf_counter()  # the wall time of this run, not of its wait for another
        run = {"backend": backend, "dtype": dtype, "seed": seed, "threads": threads, "format": list(formats),
               "executor": executor_name, "fresh": fresh, "plot": plot, **(settings or {})}
        return _run_locked(figure, config, out, executor, progress, command, plot, notice, t0, formats, run)


def _log_failure(out: Path, err: CellError) -> None:
    log = out / "errors.log"
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    try:
        with open(log, "a") as fh:
            fh.write(f"--- {stamp} cell {err.key}\n{err.traceback_text}\n")
        err.log = str(log)
    except OSError:
        err.log = None


#: the run's own settings in the JSON ``config``, beside the figure's configuration (no figure may use them)
RUN_KEYS = ("backend", "dtype", "seed", "threads", "format", "executor", "fresh", "plot", "jobs", "scheduler",
            "out", "data_folder", "set", "config_file", "overrides")


def _caption(figure, config: dict, rows: list, extra: dict, claims: list, run: dict, command: str | None,
             software: dict) -> str:
    """The caption file: the figure's caption, the paper's claim, the settings of the run, the claims table."""
    def cell(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    mark = {True: "✓", False: "✗"}
    lines = [f"# {figure.title}" + (" (quick)" if config.get("quick") else ""), "",
             figure.caption_text(config, rows, extra), "",
             f"**Claim (paper):** {figure.claim}.", "",
             "**Settings:** " + "; ".join(f"{k} = {v}" for k, v in (
                 ("backend", run["backend"]), ("dtype", run["dtype"]), ("seed", run["seed"]),
                 ("BLAS threads per cell", run["threads"]), ("executor", run["executor"]),
                 ("quick", bool(config.get("quick"))), ("overrides", run.get("overrides") or "none"),
                 ("config file", run.get("config_file") or "none"))) + ".", "",
             f"**Command:** `{command}`; ngdref {software.get('ngdref')}"
             + (f", commit {software['git_commit']}" if software.get("git_commit") else "") + ".", "",
             "| claim | measured | paper | holds |", "| --- | --- | --- | --- |"]
    lines += [f"| {cell(c['claim'])} | {cell(c['measured'])} | {cell(c['paper'])} | {mark.get(c['holds'], '—')} |"
              for c in claims]
    return "\n".join(lines) + "\n"


def _run_locked(figure, config, out, executor, progress, command, plot, notice, t0, formats, run) -> dict:
    name = figure.name
    backend, dtype, threads, fresh = run["backend"], run["dtype"], run["threads"], run["fresh"]
    cells = figure.cells(config, backend, dtype)
    try:
        outcomes = run_cells(cells, executor, out / "cells", fresh, progress, threads, notice)
    except CellError as err:
        _log_failure(out, err)
        raise
    rows, claims, extra = figure.analyse(config, outcomes)
    rows = uniform_rows(rows)
    files = {"csv": str(out / f"{name}.csv"), "json": str(out / f"{name}.json"),
             "caption": str(out / f"{name}.caption.md")}
    write_atomic(files["csv"], rows_to_csv(rows))
    software = software_versions()
    write_atomic(files["caption"], _caption(figure, config, rows, extra, claims, run, command, software))
    plot_status = "not requested"
    if plot:
        path = out / f"{name}.png"
        try:
            plot_status = figure.plot(config, rows, extra, path, formats)
        except Exception as exc:  # noqa: BLE001 - a drawing bug must not lose the data and the claims
            plot_status = f"plot failed ({one_line(f'{type(exc).__name__}: {exc}', 200)}); the data were written"
        if plot_status == "ok":
            files.update({fmt: str(path.with_suffix(f".{fmt}")) for fmt in formats})
    # every setting: the figure's sweep and the run's beside it (tests/test_figures.py checks that no figure's
    # configuration uses a run key; should one ever, the run's settings go under "run" instead of shadowing it)
    merged = {**config, "run": run} if set(config) & set(run) else {**config, **run}
    record = {
        "command": "reproduce",
        "config": merged,
        "software": software,
        "rows": rows,
        "figure": name,
        "title": figure.title,
        "command_line": command,
        "backend": backend,
        "dtype": dtype,
        "seed": run["seed"],
        "executor": run["executor"],
        "threads_per_cell": threads,
        "cells": {"total": len(outcomes), "computed": sum(not o.cached for o in outcomes),
                  "cached": sum(o.cached for o in outcomes),
                  "compute_seconds": sum(o.seconds for o in outcomes if not o.cached),
                  "all_cells_seconds": sum(o.seconds for o in outcomes)},
        "claims": claims,
        "summary": extra,
        "plot": plot_status,
        "files": files,
    }
    record["wall_seconds"] = time.perf_counter() - t0
    write_json(files["json"], record)
    return record
