"""Matplotlib helpers shared by the figure modules (Agg backend; the ``plot`` extra).

Matplotlib is imported only inside :func:`save_plot`, so the figures' data never depend on
it: without it :func:`save_plot` returns a one-line reason (:data:`PLOT_HINT`) and writes nothing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...io import atomic_path

PLOT_HINT = "matplotlib is not installed; the data were written, for the plot: pip install 'ngdref[plot]'"

FLOOR = 1e-15  # lower y-limit of the loss plots; a theory value below it (c = 1: exactly 0) is drawn at it

THETA_BAR = r"$\bar{\Theta}$"  # mathtext: matplotlib drops the combining macron of a plain "Θ̄"


def fim_title(name: str) -> str:
    """An approximation's name in words ("block-diagonal", "K-FAC", …): its Fisher registry title."""
    from ...fisher import fisher_class

    return fisher_class(name).spec.title


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


def tex_number(v: float) -> str:
    """``v`` for mathtext: a power of ten as ``10^{k}`` (1e-06 → 10^{-6}), any other number as ``:g``."""
    if v > 0:
        k = round(math.log10(v))
        if abs(k) >= 3 and v == float(f"1e{k}"):
            return f"10^{{{k}}}"
    return f"{v:g}"


def integer_steps(ax) -> None:
    """Only whole numbers on the x-axis (training steps)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_runs(ax, runs: dict, palette: list, theory_key: str = "theory_train_loss", theory: bool = True) -> int:
    """Training loss per run: markers for the network, lines for ``theory_key``, × where a run stopped.

    The × gets a legend entry (black) only when one is drawn; returns the number of × drawn.
    """
    stopped = 0
    for i, (label, rs) in enumerate(runs.items()):
        col = palette[i % len(palette)]
        steps = [r["step"] for r in rs]
        ax.semilogy(steps, [loss(r["train_loss"]) for r in rs], "o", color=col, ms=5, mfc="none", label=label)
        if theory:
            ax.semilogy(steps, [floored(r.get(theory_key)) for r in rs], "-", color=col, lw=1.2)
        if rs[-1].get("status") not in (None, "ok"):
            ax.semilogy([steps[-1]], [loss(rs[-1]["train_loss"])], "x", color=col, ms=10, mew=2)
            stopped += 1
    if stopped:
        ax.plot([], [], "x", color="k", ms=8, mew=2, label="× run stopped (diverged or non-finite)")
    integer_steps(ax)
    ax.set_xlabel("step $t$")
    ax.set_ylabel("training loss")
    ax.grid(True, which="major", alpha=0.3)
    return stopped


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
