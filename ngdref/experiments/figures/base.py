"""What a figure is (:class:`Figure`) and the configuration pieces the figures share.

A figure of the paper is: a configuration (the paper's settings, or a ``quick`` shrink
that runs in seconds), a list of independent cells computed from it
(:mod:`ngdref.experiments.sweep`), an analysis turning the cell results into table rows,
claims with their measured values and a summary, and a plot of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from ..sweep import Cell, CellOutcome
from .plotting import save_plot

Analysis = tuple[list, list, dict]  # rows (CSV), claims, summary


@dataclass(frozen=True)
class Figure:
    """One figure of Karakida & Osawa (2020) as a sweep of cells plus the claim it tests.

    ``config(quick=False, data=None, seed=0)`` → the full configuration (a JSON-able dict
    with ``"figure": name``); ``cells(config, backend, dtype)`` → the sweep;
    ``analyse(config, outcomes)`` → (rows, claims, summary);
    ``draw(plt, config, rows, summary)`` → a matplotlib figure (see :meth:`plot`);
    ``caption(config, rows, summary)`` → the figure's caption (Markdown: the settings, what the lines
    and markers are, how to read it), written next to the figure with its claims (:meth:`caption_text`).
    ``fixed``: configuration keys ``--set``/``--config`` may not change (the structure the analysis
    relies on); ``check(config)``: what is wrong with an overridden configuration (None when fine);
    ``unread``: (key, what to set instead) for keys the sweep does not read.
    """

    name: str
    title: str  # heading of the claims table and the JSON record
    summary: str  # one line for ``ngdref reproduce --help``
    claim: str  # the paper's claim the figure tests
    config: Callable[..., dict]
    cells: Callable[[dict, str, str], list[Cell]]
    analyse: Callable[[dict, list[CellOutcome]], Analysis]
    draw: Callable[[Any, dict, list, dict], Any]
    #: the figure reads ``--data`` (a folder of MNIST IDX files or CIFAR-10 batches); the others use
    #: the paper's own inputs (bundled MNIST subset, Gaussian inputs)
    takes_data: bool = False
    caption: Callable[[dict, list, dict], str] | None = None
    fixed: tuple[str, ...] = ()
    check: Callable[[dict], str | None] | None = None
    #: configuration keys the sweep never reads because another key sets that value per cell (fig3's
    #: ``network.width``: it sweeps ``widths``), each with what to set instead; ``--set``/``--config`` of
    #: one is refused (tests/test_figures.py checks each is truly unread: the cells do not change with it)
    unread: tuple[tuple[str, str], ...] = ()

    def plot(self, config: dict, rows: list[dict], extra: dict, path: str | Path,
             formats: Iterable[str] = ("png",)) -> str:
        """Write the figure at ``path`` in each of ``formats`` (the suffix of ``path`` replaced by each);
        ``"ok"`` or a one-line reason why not (matplotlib missing)."""
        return save_plot(self.draw, config, rows, extra, path, formats)

    def caption_text(self, config: dict, rows: list[dict], extra: dict) -> str:
        """The figure's own caption (:attr:`caption`), or its claim when it has none."""
        return self.caption(config, rows, extra) if self.caption is not None else self.claim


def mnist(n_train: int, n_test: int, seed: int, classes=(0, 7)) -> dict:
    """The bundled MNIST subset, M0 = 100 (C.3)."""
    return {"source": "mnist", "classes": list(classes), "n_train": n_train, "n_test": n_test, "seed": seed,
            "input_dim": 100}


def gaussian(n: int, m0: int, seed: int) -> dict:
    """N Gaussian inputs of dimension M0 (C.3.1)."""
    return {"source": "gaussian", "classes": [0, 1], "n_train": n, "n_test": 0, "seed": seed, "input_dim": m0}


def net(width: int, depth: int, activation="relu", shift=1.0, sigma_w2=2.0, sigma_b2=0.0) -> dict:
    return {"width": width, "depth": depth, "activation": activation, "shift": shift, "sigma_w2": sigma_w2,
            "sigma_b2": sigma_b2}
