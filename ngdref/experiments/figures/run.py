"""Run one figure end to end: cells through an executor, then CSV, JSON and PNG.

    DIR/<figure>.csv     one row per run and step / seed / width
    DIR/<figure>.json    full configuration, software versions, claims, rows, wall time
    DIR/<figure>.png     the plot (needs matplotlib, the ``plot`` extra)
    DIR/cells/*.json     one file per finished cell (resume; ``fresh`` recomputes)
    DIR/errors.log       the full traceback of a cell that failed (appended)

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
) -> dict:
    """Run figure ``name`` (cells through ``executor``), write CSV/JSON/PNG into ``out_dir``; return the record.

    ``config``: the figure's configuration when the caller built it already (checks before any
    work; fig2 hashes its data once); ``notice``: one line per stored cell found malformed
    (recomputed); ``on_wait(lock)``: called before waiting for another run writing ``out_dir``.
    A failing cell raises :class:`~ngdref.experiments.sweep.CellError` after its traceback was
    appended to ``out_dir/errors.log`` (``err.log`` is that path).
    """
    figure = get_figure(name)
    config = figure.config(quick, data, seed) if config is None else config
    out = Path(out_dir)
    with folder_lock(out, on_wait):
        t0 = time.perf_counter()  # the wall time of this run, not of its wait for another
        return _run_locked(figure, config, out, backend, dtype, seed, executor, executor_name, fresh, progress,
                           command, plot, threads, notice, t0)


def _log_failure(out: Path, err: CellError) -> None:
    log = out / "errors.log"
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    try:
        with open(log, "a") as fh:
            fh.write(f"--- {stamp} cell {err.key}\n{err.traceback_text}\n")
        err.log = str(log)
    except OSError:
        err.log = None


def _run_locked(figure, config, out, backend, dtype, seed, executor, executor_name, fresh, progress, command, plot,
                threads, notice, t0) -> dict:
    name = figure.name
    cells = figure.cells(config, backend, dtype)
    try:
        outcomes = run_cells(cells, executor, out / "cells", fresh, progress, threads, notice)
    except CellError as err:
        _log_failure(out, err)
        raise
    rows, claims, extra = figure.analyse(config, outcomes)
    files = {"csv": str(out / f"{name}.csv"), "json": str(out / f"{name}.json")}
    write_atomic(files["csv"], rows_to_csv(rows))
    plot_status = "not requested"
    if plot:
        png = out / f"{name}.png"
        try:
            plot_status = figure.plot(config, rows, extra, png)
        except Exception as exc:  # noqa: BLE001 - a drawing bug must not lose the data and the claims
            plot_status = f"plot failed ({one_line(f'{type(exc).__name__}: {exc}', 200)}); the data were written"
        if plot_status == "ok":
            files["png"] = str(png)
    record = {
        "figure": name,
        "title": figure.title,
        "command": command,
        "config": config,
        "backend": backend,
        "dtype": dtype,
        "seed": seed,
        "executor": executor_name,
        "threads_per_cell": threads,
        "software": software_versions(),
        "cells": {"total": len(outcomes), "computed": sum(not o.cached for o in outcomes),
                  "cached": sum(o.cached for o in outcomes),
                  "compute_seconds": sum(o.seconds for o in outcomes if not o.cached),
                  "all_cells_seconds": sum(o.seconds for o in outcomes)},
        "claims": claims,
        "summary": extra,
        "plot": plot_status,
        "files": files,
        "rows": rows,
    }
    record["wall_seconds"] = time.perf_counter() - t0
    write_json(files["json"], record)
    return record
