"""Matplotlib helpers shared by the figure modules (Agg backend; the ``plot`` extra).

Matplotlib is imported only inside :func:`save_plot`, so the figures' data never depend on
it: without it :func:`save_plot` returns a one-line reason (:data:`PLOT_HINT`) and writes nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ...io import atomic_path

PLOT_HINT = "matplotlib is not installed; the data were written, for the plot: pip install 'ngdref[plot]'"

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


#: a predicted loss at or below this fraction of the run's initial loss is 0 up to round-off: with
#: η = 1/α the Eq. 10 / Eq. 24 error (1 − c)^t (f_0 − y) is exactly 0 after one step (c = 1), and the
#: float64 evaluation of it leaves ~1e-31 (a square of ~1e-16 relative round-off times L_0)
ZERO_RELATIVE = 1e-24

#: the marker styles of the runs on a loss panel, in turn: a different shape *and* size for each, hollow,
#: so runs that coincide (exact and BD at c = 1, ρ = 1e-8 and ρ = 0) stay visible inside one another
MARKERS = ("o", "s", "D", "^", "v", "p", "h", "<", ">")
LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1)), (0, (1, 3)))


def marker_style(i: int) -> dict:
    """Style of the ``i``-th run: its own shape, a size that grows with ``i`` (later runs enclose earlier
    ones), its own line style for the theory line."""
    return {"marker": MARKERS[i % len(MARKERS)], "ms": 5.0 + 1.2 * (i % len(MARKERS)),
            "ls": LINESTYLES[i % len(LINESTYLES)]}


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


def width_axis(ax, widths) -> None:
    """A log₂ x-axis of widths M, each width labelled as a number (not 2^k), no minor ticks."""
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log", base=2)
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("width $M$")


def integer_steps(ax) -> None:
    """Only whole numbers on the x-axis (training steps)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _is_zero(v, l0) -> bool:
    """A loss that is 0 up to round-off (:data:`ZERO_RELATIVE` of the initial loss ``l0``), or ≤ 0."""
    return v is not None and (v <= 0 or (l0 is not None and l0 > 0 and v <= ZERO_RELATIVE * l0))


MARGIN = 0.8  # decades of room beyond the extreme measured losses (the largest markers are drawn whole)


@dataclass
class LossAxis:
    """The y-range of training-loss panels fitted to the data, and where a loss of 0 is drawn.

    ``bottom``/``top``: :data:`MARGIN` decades beyond the smallest / largest network loss, room for the
    largest marker (a theory line that explodes or falls further leaves through the edge).
    ``zero``: when some loss is 0 up to round-off (c = 1 after one step), the level, 1.5 decades below
    every other value, where it is drawn on a dotted line marked "0" — never silently off the axis.
    """

    bottom: float
    top: float
    zero: float | None


def loss_axis(runs: Iterable[list[dict]], theory_key: str | None = "theory_train_loss") -> LossAxis:
    """:class:`LossAxis` for the runs (lists of per-step rows) drawn on one or more shared panels."""
    values, zero = [], False
    for rs in runs:
        l0 = rs[0].get("train_loss") if rs else None
        for r in rs:
            v = r.get("train_loss")  # measured: only a loss ≤ 0 is 0 (a tiny positive loss is data, drawn)
            if v is not None and v <= 0:
                zero = True
            elif v is not None and not math.isnan(v):
                values.append(v)
            t = r.get(theory_key) if theory_key else None
            zero = zero or _is_zero(t, l0)
    lo, hi = (min(values), max(values)) if values else (1e-3, 1.0)
    top = hi * 10 ** MARGIN
    if not zero:
        return LossAxis(lo / 10 ** MARGIN, top, None)
    level = lo / 10 ** 1.5
    return LossAxis(level / 10 ** MARGIN, top, level)


def _at(v, l0, axis: LossAxis | None):
    """A loss for a log axis: at ``axis.zero`` when 0 (a prediction: up to round-off, ``l0`` its initial
    loss; a measurement: ``l0`` None, ≤ 0 only), NaN when missing."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return np.nan
    if _is_zero(v, l0):
        return np.nan if axis is None or axis.zero is None else axis.zero
    return v


def plot_runs(ax, runs: dict, palette: list, theory_key: str = "theory_train_loss", theory: bool = True,
              axis: LossAxis | None = None, styles: dict | None = None) -> int:
    """Training loss per run: hollow markers for the network, lines for ``theory_key``, × where a run stopped.

    Each run has its own colour, marker shape and size and line style (:func:`marker_style`, or
    ``styles[label]``), so coinciding runs stay visible. With ``axis`` (:func:`loss_axis`) the y-range is
    fitted to the data and a loss of 0 (up to round-off) is drawn on the marked zero level. The × gets
    a legend entry (black) only when one is drawn; returns the number of × drawn.
    """
    stopped = 0
    zero_steps = []
    for i, (label, rs) in enumerate(runs.items()):
        col = palette[i % len(palette)]
        st = {**marker_style(i), **((styles or {}).get(label, {}))}
        steps = [r["step"] for r in rs]
        l0 = rs[0].get("train_loss")
        (marks,) = ax.semilogy(steps, [_at(r["train_loss"], None, axis) for r in rs], st["marker"], color=col,
                               ms=st["ms"], mfc="none", mew=1.2, label=label, zorder=3 + 0.01 * i)
        if theory:
            (line,) = ax.semilogy(steps, [_at(r.get(theory_key), l0, axis) for r in rs], color=col, ls=st["ls"],
                                  lw=1.3, zorder=2)
            marks.theory_line = line  # the legend shows the run's marker on its line style (legend_outside)
            zero_steps += [r["step"] for r in rs if _is_zero(r.get(theory_key), l0)]
        if rs[-1].get("status") not in (None, "ok"):
            ax.semilogy([steps[-1]], [_at(rs[-1]["train_loss"], None, axis)], "x", color=col, ms=10, mew=2, zorder=4)
            stopped += 1
    if stopped:
        legend_entry(ax, "× run stopped (diverged or non-finite)", marker="x", color="k", ms=8, mew=2, ls="none")
    if axis is not None:
        ax.set_ylim(axis.bottom, axis.top)
        if axis.zero is not None:
            ax.axhline(axis.zero, color="0.35", ls=":", lw=1.0, zorder=1,
                       label="loss 0 (theory, exact: $c = 1$ after one step)")
            # where the first prediction reaches 0 (step 1 at c = 1): the measured losses there are still far
            # above the line, the lowest ones come at the last steps
            first = min(zero_steps) if zero_steps else 0
            ax.annotate("theory: 0", (first, axis.zero), xytext=(4, 2), textcoords="offset points", ha="left",
                        va="bottom", fontsize=7, color="0.3")
    integer_steps(ax)
    ax.set_xlabel("step $t$")
    ax.set_ylabel("training loss")
    ax.grid(True, which="major", alpha=0.3)
    return stopped


def legend_entry(ax, label: str, **style) -> None:
    """A legend entry for something not drawn as a series (a marker explained, a run refused): a proxy
    artist kept for :func:`legend_outside`, never added to the axes (so no plotted series is empty)."""
    from matplotlib.lines import Line2D

    if "ls" not in style and "linestyle" not in style:
        style["ls"] = "none"
    ax.legend_extra = [*getattr(ax, "legend_extra", []), (Line2D([], [], **style), label)]


def legend_outside(ax, where: str = "right", ncol: int = 1, fontsize: float = 8):
    """The panel's legend outside its axes (right of it, or below it), where it covers no data; a run of
    :func:`plot_runs` shows its marker drawn on its theory line's style."""
    from matplotlib.legend_handler import HandlerTuple

    handles, labels = ax.get_legend_handles_labels()
    handles = [(h, h.theory_line) if getattr(h, "theory_line", None) is not None else h for h in handles]
    for h, label in getattr(ax, "legend_extra", []):
        handles.append(h)
        labels.append(label)
    kw = {"fontsize": fontsize, "ncol": ncol, "handler_map": {tuple: HandlerTuple(ndivide=None)}, "handlelength": 3.0}
    if where == "right":
        return ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **kw)
    return ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False, **kw)


FORMATS = ("png", "pdf", "svg")  # what ``ngdref reproduce --format`` writes (vector: pdf, svg)


def save_plot(draw: Callable, config: dict, rows: list[dict], extra: dict, path: str | Path,
              formats: Iterable[str] = ("png",)) -> str:
    """``draw(plt, config, rows, extra)`` → a matplotlib figure, saved atomically at ``path`` with each
    of ``formats`` as its suffix (through temporary files unique to this writer, so concurrent runs never
    clash); the outside legends are kept inside the saved image (``bbox_inches="tight"``).

    Returns ``"ok"``, or :data:`PLOT_HINT` when matplotlib is missing.
    """
    plt = pyplot()
    if plt is None:
        return PLOT_HINT
    fig = draw(plt, config, rows, extra)
    try:
        fig.tight_layout()
        for fmt in formats:
            with atomic_path(Path(path).with_suffix(f".{fmt}"), suffix=f".{fmt}") as tmp:
                fig.savefig(tmp, dpi=110, format=fmt, bbox_inches="tight")
    finally:
        plt.close(fig)
    return "ok"
