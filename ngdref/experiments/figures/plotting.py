"""Matplotlib helpers shared by the figure modules (Agg backend; the ``plot`` extra).

Matplotlib is imported only inside :func:`save_plot`, so the figures' data never depend on
it: without it :func:`save_plot` returns a one-line reason (:data:`PLOT_HINT`) and writes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...io import atomic_path

PLOT_HINT = "matplotlib is not installed; the data were written, for the plot: pip install 'ngdref[plot]'"

FLOOR = 1e-15  # lower y-limit of the loss plots; a theory value below it (c = 1: exactly 0) is drawn at it


def pyplot():
    """``matplotlib.pyplot`` with the Agg backend, or None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def quick_suffix(config: dict) -> str:
    return " (quick)" if config.get("quick") else ""


def colors(plt) -> list:
    return plt.rcParams["axes.prop_cycle"].by_key()["color"]


def loss(v):
    """A loss on a log axis: NaN (not drawn) for a missing or non-positive value."""
    return np.nan if v is None or v <= 0 else v


def floored(v):
    return np.nan if v is None else max(v, FLOOR)


def runs_by(rows: list[dict], key: Callable[[dict], Any]) -> dict:
    """Training rows (those with a step) grouped by ``key(row)``, in first-seen order."""
    out: dict = {}
    for r in rows:
        if r.get("step") is None:
            continue
        out.setdefault(key(r), []).append(r)
    return out


def plot_runs(ax, runs: dict, palette: list, theory_key: str = "theory_train_loss", theory: bool = True) -> None:
    """Training loss per run: markers for the network, lines for ``theory_key``, × where a run stopped."""
    for i, (label, rs) in enumerate(runs.items()):
        col = palette[i % len(palette)]
        steps = [r["step"] for r in rs]
        ax.semilogy(steps, [loss(r["train_loss"]) for r in rs], "o", color=col, ms=5, mfc="none", label=label)
        if theory:
            ax.semilogy(steps, [floored(r.get(theory_key)) for r in rs], "-", color=col, lw=1.2)
        if rs[-1].get("status") not in (None, "ok"):
            ax.semilogy([steps[-1]], [loss(rs[-1]["train_loss"])], "x", color=col, ms=10, mew=2)
    ax.set_xlabel("step t")
    ax.set_ylabel("training loss")
    ax.grid(True, which="major", alpha=0.3)


def save_plot(draw: Callable, config: dict, rows: list[dict], extra: dict, path: str | Path) -> str:
    """``draw(plt, config, rows, extra)`` → a matplotlib figure, saved atomically as PNG at ``path``
    (through a temporary file unique to this writer, so concurrent runs never clash).

    Returns ``"ok"``, or :data:`PLOT_HINT` when matplotlib is missing.
    """
    plt = pyplot()
    if plt is None:
        return PLOT_HINT
    fig = draw(plt, config, rows, extra)
    try:
        fig.tight_layout()
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return "ok"
