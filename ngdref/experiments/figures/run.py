"""Run one figure end to end: cells through an executor, then CSV, JSON and PNG.

    DIR/<figure>.csv     one row per run and step / seed / width
    DIR/<figure>.json    full configuration, software versions, claims, rows, wall time
    DIR/<figure>.png     the plot (needs matplotlib, the ``plot`` extra)
    DIR/cells/*.json     one file per finished cell (resume; ``fresh`` recomputes)
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Callable

from ...io import software_versions, write_atomic, write_json
from ..sweep import DEFAULT_CELL_THREADS, CellOutcome, run_cells
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
) -> dict:
    """Run figure ``name`` (cells through ``executor``), write CSV/JSON/PNG into ``out_dir``; return the record."""
    t0 = time.perf_counter()
    figure = get_figure(name)
    config = figure.config(quick, data, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cells = figure.cells(config, backend, dtype)
    outcomes = run_cells(cells, executor, out / "cells", fresh, progress, threads)
    rows, claims, extra = figure.analyse(config, outcomes)
    files = {"csv": str(out / f"{name}.csv"), "json": str(out / f"{name}.json")}
    write_atomic(files["csv"], rows_to_csv(rows))
    plot_status = "not requested"
    if plot:
        png = out / f"{name}.png"
        plot_status = figure.plot(config, rows, extra, png)
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
