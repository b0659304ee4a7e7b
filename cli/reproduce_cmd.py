"""``ngdref reproduce FIGURE``: regenerate a figure of the paper (thin: options, progress, printing)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.markup import escape
from rich.table import Table

from ngdref.experiments.figures.overrides import toml_value
from ngdref.experiments.figures.plotting import FORMATS
from ngdref.experiments.figures.registry import GROUP_HELP, GROUPS, REGISTRY

from .common import (EXIT_INTERRUPTED, UserError, consoles, emit_json, handle_errors, json_document, json_option,
                     progress_bar)

FIGURE_CHOICES = (*REGISTRY, *GROUPS)

_NAME_WIDTH = max(len(name) for name in FIGURE_CHOICES)
#: characters of a summary per line, so that a line of the list fits an 80-column terminal (click indents by 2)
_SUMMARY_WIDTH = 80 - 2 - (_NAME_WIDTH + 2)


def _entry(name: str, summary: str) -> str:
    """``name`` and its summary in the list's two columns, the summary wrapped under itself."""
    import textwrap

    lines = textwrap.wrap(summary, _SUMMARY_WIDTH, break_on_hyphens=False) or [""]
    pad = " " * (_NAME_WIDTH + 2)
    return "\n".join([f"{name:<{_NAME_WIDTH}}  {lines[0]}", *(pad + line for line in lines[1:])])


HELP = "\n".join([
    "Regenerate FIGURE of Karakida & Osawa (2020): data (CSV, JSON), plot (PNG; --format for PDF, SVG), "
    "caption and the claim it tests (a group — all, extensions, everything — also writes a contact sheet, "
    "DIR/index.html).",
    "",
    "\b",
    # one column of names as wide as the longest; each summary short, wrapped to 80 columns (the figure's
    # caption and module docstring hold the rest)
    *(_entry(name, figure.summary) for name, figure in REGISTRY.items()),
    *(_entry(group, GROUP_HELP[group]) for group in GROUPS),
])


def _mark(holds):
    return {True: "[green]✓[/green]", False: "[red]✗[/red]"}.get(holds, "—")


@click.command(help=HELP)
@click.argument("figure", type=click.Choice(FIGURE_CHOICES), metavar="FIGURE")
@click.option("--quick", is_flag=True, help="Shrink widths, sizes and steps so the figure runs in seconds.")
@click.option("--out", "out", default=None, metavar="DIR",
              help="Output folder (default out/<figure>; with a group, DIR/<figure> for each figure).")
@click.option("--data", default=None, metavar="PATH",
              help="For the figures that read data (fig2): a folder with MNIST IDX files or CIFAR-10 python "
                   "batches (default: bundled MNIST subset).")
@click.option("--jobs", "-j", default=1, show_default=True, type=click.IntRange(min=1),
              help="Run the sweep's cells in N local processes.")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Run the cells on a Dask distributed cluster (needs: pip install 'ngdref[dask]').")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1),
              help="BLAS threads per cell, the same in every executor, so results are bit-identical "
                   "whichever executor runs them (in-process on a many-core machine: raise it).")
@click.option("--fresh", is_flag=True, help="Recompute every cell (default: reuse the finished cells in DIR/cells).")
@click.option("--format", "formats", default="png", show_default=True, metavar="LIST",
              help="Plot file formats, comma-separated: " + ", ".join(FORMATS) + " (pdf, svg: vector output).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a setting of the sweep (repeatable), VALUE as in TOML: --set steps=5, "
                   "--set widths=[64,256], --set network.width=1024, --set fig3.seeds=[0,1]; a key without a "
                   "figure's name applies to every figure that has it. Recorded in the JSON.")
@click.option("--config", "config_file", default=None, metavar="FILE.toml",
              help="Overrides for a whole sweep from a TOML file: top-level keys for every figure, a table "
                   "[fig1b] for one (--set wins over it). Recorded in the JSON.")
@json_option
@click.pass_obj
@handle_errors
def reproduce(settings, figure, quick, out, data, jobs, scheduler, threads, fresh, formats, sets, config_file,
              json_path):
    """Regenerate FIGURE (the help text, HELP, comes from the figure registry)."""
    from ngdref.experiments.figures.overrides import apply_overrides, load_config_file, parse_set, split_by_figure
    from ngdref.experiments.figures.registry import figure_config
    from ngdref.experiments.figures.cells import check_sweep_memory
    from ngdref.experiments.figures.run import run_figure
    from ngdref.experiments.figures.sheet import SHEET, write_contact_sheet
    from ngdref.experiments.sweep import CellError, check_scheduler_address, describe_executor, make_executor

    names = list(GROUPS[figure]) if figure in GROUPS else [figure]
    # every check a user can fail comes before any work and any file
    fmts = _formats(formats)
    if scheduler is not None:
        if jobs > 1:
            raise UserError("--jobs and --scheduler are exclusive (the Dask cluster sets the parallelism)")
        check_scheduler_address(scheduler)
    if data is not None:
        _check_data(data, figure, names)
    folders = {name: _folder(out, name, figure, fmts) for name in names}
    root = Path("out") if out is None else Path(out)  # a group: the contact sheet's folder
    if figure in GROUPS:
        _check_file(root / SHEET)
    backend = settings.backend()  # validates --backend/--dtype
    configs = {name: figure_config(name, quick, data, settings.seed) for name in names}  # fig2: hashes --data
    # overrides: the file's, then --set's (which win), each resolved to its figures on its own (so a
    # `widths` in the file cannot beat a `fig3.widths` of --set), each checked against its figure
    from_file = split_by_figure(load_config_file(config_file) if config_file is not None else {}, names, REGISTRY,
                                configs)
    from_set = split_by_figure(parse_set(sets), names, REGISTRY, configs)
    per_figure = {name: {**from_file[name], **from_set[name]} for name in names}
    configs = {name: apply_overrides(REGISTRY[name], configs[name], per_figure[name]) for name in names}
    for name in names:  # the largest cell must fit (B5: --set widths=[20000] is refused here, not OOM-killed)
        check_sweep_memory(name, REGISTRY[name].cells(configs[name], backend.name, backend.dtype_name), jobs)
    con = consoles(json_path)
    err = consoles("-")
    records = []
    with make_executor(jobs, scheduler) as executor:
        for name in names:
            folder = folders[name]
            args = ["ngdref"]
            if settings.seed:
                args += ["--seed", str(settings.seed)]
            # a global setting is spelled out only when it is not the default, each on its own
            args += ["--backend", backend.name] if backend.name != "numpy" else []
            args += ["--dtype", backend.dtype_name] if backend.dtype_name != "float64" else []
            args += ["reproduce", name] + (["--quick"] if quick else []) + (["--threads", str(threads)] if threads != 1 else []) + (["--data", data] if data and REGISTRY[name].takes_data else [])
            args += (["--format", ",".join(fmts)] if fmts != ("png",) else []) \
                + (["--config", config_file] if config_file is not None else []) \
                + [f"--set={k}={toml_value(v)}" for k, v in per_figure[name].items()]
            run_settings = {"out": str(folder), "jobs": jobs, "scheduler": scheduler,
                            "data_folder": data if REGISTRY[name].takes_data else None, "set": list(sets),
                            "config_file": config_file, "overrides": per_figure[name]}
            with progress_bar(TextColumn(f"[bold]{name}"), BarColumn(), MofNCompleteColumn(),
                              TextColumn("{task.fields[last]}"), TimeElapsedColumn(), console=err) as bar:
                task = bar.add_task(name, total=None, last="")

                def progress(done, total, outcome, bar=bar, task=task):
                    tag = "cached" if outcome.cached else f"{outcome.seconds:.1f}s"
                    bar.update(task, total=total, completed=done, last=f"{outcome.key} ({tag})")

                def say(line):
                    err.print(line, markup=False, highlight=False, soft_wrap=True)

                try:
                    rec = run_figure(name, folder, quick=quick, data=data, backend=backend.name, dtype=backend.dtype_name,
                                     seed=settings.seed, executor=executor, executor_name=describe_executor(jobs, scheduler),
                                     fresh=fresh, progress=progress, command=shlex.join(args), threads=threads,
                                     config=configs[name], notice=say, formats=fmts, settings=run_settings,
                                     on_wait=lambda lock: say(f"waiting for another run writing into {folder} "
                                                              f"(it holds {lock}) to finish"))
                except KeyboardInterrupt:
                    err.print(f"[yellow]interrupted[/yellow]: the finished cells are in {folder / 'cells'}; "
                              "run the same command again to resume")
                    raise SystemExit(EXIT_INTERRUPTED) from None
                except CellError as exc:
                    _cell_failed(name, exc)
                except OSError as exc:  # the out folder became unwritable, the disk is full, …
                    where = f" {exc.filename}" if exc.filename else ""
                    raise UserError(f"{name}: cannot write{where}: {exc.strerror or exc}; choose another --out "
                                    "(a writable folder with free space)") from None
            records.append(rec)
            table = Table(title=REGISTRY[name].title + (" [quick]" if quick else ""), title_justify="left")
            for col, kw in (("claim", {"ratio": 3}), ("measured", {"ratio": 3}), ("paper", {"ratio": 2}), ("", {})):
                table.add_column(col, overflow="fold", **kw)
            for c in rec["claims"]:
                table.add_row(escape(c["claim"]), escape(c["measured"]), escape(c["paper"]), _mark(c["holds"]))
            con.print(table)
            cells = rec["cells"]
            con.print(f"{name}: wall time {rec['wall_seconds']:.1f} s, cells {cells['computed']} computed + "
                      f"{cells['cached']} reused ({rec['executor']}); files in {folder}/")
            if rec["plot"] != "ok":
                con.print(f"[yellow]{escape(rec['plot'])}[/yellow]")
            note = rec["config"].get("data_note")
            if note:
                con.print(f"data: {escape(note)}")
    if figure in GROUPS:
        sheet = write_contact_sheet(records, root)
        con.print(f"contact sheet: {sheet}")
    if len(records) == 1:
        emit_json(json_path, records[0])
    else:
        rows = [{"figure": r["figure"], "claim": c["claim"], "measured": c["measured"], "paper": c["paper"],
                 "holds": c["holds"]} for r in records for c in r["claims"]]
        config = {"figures": names, "quick": quick, "out": str(root), "jobs": jobs, "scheduler": scheduler,
                  "threads": threads, "fresh": fresh, "format": list(fmts), "data_folder": data, "set": list(sets),
                  "config_file": config_file, "overrides": per_figure, **settings.to_dict(backend)}
        emit_json(json_path, json_document("reproduce", config, rows, software=records[0]["software"],
                                           figures=records, contact_sheet=str(root / SHEET)))


def _formats(text: str) -> tuple[str, ...]:
    """``--format png,pdf,svg`` → the formats, in order, once each; UserError for an unknown one."""
    parts = [p.strip().lower().lstrip(".") for p in text.split(",")]
    bad = [p for p in parts if p not in FORMATS]
    if not text.strip() or bad:
        raise UserError(f"--format {text!r}: choose among {', '.join(FORMATS)}, comma-separated (e.g. png,pdf)")
    return tuple(dict.fromkeys(parts))


def _check_file(path: Path) -> None:
    """An output file the run would replace at the end: refused now if it is not a file or is read-only
    (as ``--json`` is, :func:`~ngdref_cli.common.check_output_file`)."""
    if os.path.lexists(path) and not path.is_file():
        raise UserError(f"{str(path)!r} exists and is not a file; move it away or choose another --out")
    if path.is_file() and (not os.access(path, os.W_OK) or not os.stat(path).st_mode & 0o222):
        raise UserError(f"{str(path)!r} is read-only; make it writable (chmod u+w) or choose another --out")


def _check_data(data: str, figure: str, names: list[str]) -> None:
    """``--data``: only for figures that take data (the others use the paper's own inputs), a folder or ``mnist``."""
    takers = [name for name, fig in REGISTRY.items() if fig.takes_data]
    if not any(REGISTRY[name].takes_data for name in names):
        what = f"{figure} uses" if figure not in GROUPS else f"none of {figure} ({', '.join(names)}) reads it; they use"
        raise UserError(f"--data is used by {', '.join(takers)} only; {what} the inputs of the paper "
                        "(bundled MNIST subset or Gaussian inputs): drop --data")
    if not data.strip():
        raise UserError("--data is empty: give a folder with MNIST IDX files or CIFAR-10 python batches")
    if data != "mnist" and not Path(data).is_dir():
        raise UserError(f"--data {data!r} is not a folder (expected MNIST IDX files or CIFAR-10 python batches)")


def _folder(out: str | None, name: str, figure: str, formats=("png",)) -> Path:
    """The output folder of figure ``name``, refused (UserError) when it cannot be written."""
    from ngdref.io import folder_problem

    if out is not None:
        problem = folder_problem(out)
        if problem:
            raise UserError(f"--out {out!r} {problem}")
    folder = Path("out") / name if out is None else (Path(out) / name if figure in GROUPS else Path(out))
    for path in (folder, folder / "cells"):
        problem = folder_problem(path)
        if problem:
            raise UserError(f"output folder {str(path)!r} {problem}")
    for file in (f"{name}.csv", f"{name}.json", f"{name}.caption.md", *(f"{name}.{f}" for f in formats),
                 "errors.log"):
        _check_file(folder / file)
    return folder


def _cell_failed(name: str, exc) -> None:
    """One line for a failed cell: exit 2 when the user can fix the cause, 1 for a bug or a crashed worker."""
    log = getattr(exc, "log", None)
    line = f"{name}: {exc}" + (f" (full traceback in {log})" if log else "")
    if exc.user_caused:
        raise UserError(line) from None
    click.echo(f"Error: {line}", err=True)
    raise SystemExit(1)
