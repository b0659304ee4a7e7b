"""``ngdref reproduce FIGURE``: regenerate a figure of the paper (thin: options, progress, printing)."""

from __future__ import annotations

import shlex
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.markup import escape
from rich.table import Table

from ngdref.experiments.figures.registry import REGISTRY

from .common import UserError, consoles, emit_json, handle_errors, json_option

FIGURE_CHOICES = (*REGISTRY, "all")

HELP = "\n".join([
    "Regenerate FIGURE of Karakida & Osawa (2020): data (CSV, JSON), plot (PNG) and the claim it tests.",
    "",
    "\b",
    *(f"{name:<6} {figure.summary}" for name, figure in REGISTRY.items()),
    f"{'all':<6} every figure above",
])


def _mark(holds):
    return {True: "[green]✓[/green]", False: "[red]✗[/red]"}.get(holds, "—")


@click.command(help=HELP)
@click.argument("figure", type=click.Choice(FIGURE_CHOICES))
@click.option("--quick", is_flag=True, help="Shrink widths, sizes and steps so the figure runs in seconds.")
@click.option("--out", "out", default=None, metavar="DIR",
              help="Output folder (default out/<figure>; with 'all', DIR/<figure> for each figure).")
@click.option("--data", default=None, metavar="PATH",
              help="fig2 only: a folder with MNIST IDX files or CIFAR-10 python batches (default: bundled MNIST subset).")
@click.option("--jobs", "-j", default=1, show_default=True, type=int, help="Run the sweep's cells in N local processes.")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Run the cells on a Dask distributed cluster (needs: pip install 'ngdref[dask]').")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1),
              help="BLAS threads per cell, the same in every executor, so results are bit-identical "
                   "whichever executor runs them (in-process on a many-core machine: raise it).")
@click.option("--fresh", is_flag=True, help="Recompute every cell (default: reuse the finished cells in DIR/cells).")
@json_option
@click.pass_obj
@handle_errors
def reproduce(settings, figure, quick, out, data, jobs, scheduler, threads, fresh, json_path):
    """Regenerate FIGURE (the help text, HELP, comes from the figure registry)."""
    from ngdref.experiments.figures.run import run_figure
    from ngdref.experiments.sweep import describe_executor, make_executor

    if jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {jobs}")
    if data is not None and data != "mnist" and not Path(data).is_dir():
        raise UserError(f"--data {data!r} is not a folder (expected MNIST IDX files or CIFAR-10 python batches)")
    names = list(REGISTRY) if figure == "all" else [figure]
    backend = settings.backend()  # validates --backend/--dtype before any work
    con = consoles(json_path)
    err = consoles("-")
    records = []
    with make_executor(jobs, scheduler) as executor:
        for name in names:
            if out is None:
                folder = Path("out") / name
            else:
                folder = Path(out) / name if figure == "all" else Path(out)
            args = ["ngdref"]
            if settings.seed:
                args += ["--seed", str(settings.seed)]
            if backend.name != "numpy" or backend.dtype_name != "float64":
                args += ["--backend", backend.name, "--dtype", backend.dtype_name]
            args += ["reproduce", name] + (["--quick"] if quick else []) + (["--threads", str(threads)] if threads != 1 else []) + (["--data", data] if data and name == "fig2" else [])
            with Progress(TextColumn(f"[bold]{name}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[last]}"),
                          TimeElapsedColumn(), console=err, transient=True) as bar:
                task = bar.add_task(name, total=None, last="")

                def progress(done, total, outcome, bar=bar, task=task):
                    tag = "cached" if outcome.cached else f"{outcome.seconds:.1f}s"
                    bar.update(task, total=total, completed=done, last=f"{outcome.key} ({tag})")

                try:
                    rec = run_figure(name, folder, quick=quick, data=data, backend=backend.name, dtype=backend.dtype_name,
                                     seed=settings.seed, executor=executor, executor_name=describe_executor(jobs, scheduler),
                                     fresh=fresh, progress=progress, command=shlex.join(args), threads=threads)
                except KeyboardInterrupt:
                    err.print(f"[yellow]interrupted[/yellow]: the finished cells are in {folder / 'cells'}; "
                              "run the same command again to resume")
                    raise SystemExit(130) from None
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
    emit_json(json_path, records[0] if len(records) == 1 else {"figures": records})
