"""Every figure of Karakida & Osawa (NeurIPS 2020) as a sweep of cells plus the claim it tests.

One module per figure holds everything about it — title, claim, configuration (the
paper's settings or a ``quick`` shrink that runs in seconds), cells, analysis (rows,
claims, summary) and plot — as a :class:`~.base.Figure`:

fig1a  BD-NGD (η = c/L), exact NGD and GD (η = 1/λ_max(Θ)) on MNIST 0/7 vs Eq. 10.
fig1b  block tri-diagonal NGD, η = 0.25, L = 4 and 5, damping ρ → 0 (Lemma 4.3).
fig2   test accuracy of the kernel-regression predictions f_∞ (Eq. 14) with analytic Θ̄ (Section E).
fig3   cond(Θ̄(x, x)) against width for the NTK, BD, unit-wise, diagonal and quasi-diagonal FIMs (C.3.1).
figS1  unit-wise NGD against Eq. 24 for tanh, ReLU and shifted ReLU (C.3.2).
figS2  α/M of unit-wise NGD with shifted ReLU against S.157 (C.3.3).

Shared pieces: :mod:`.cells` (cell functions several figures use), :mod:`.analysis`
(claims, loss ratios), :mod:`.plotting` (matplotlib, optional), :mod:`.registry`
(the figures by name), :mod:`.run` (:func:`run_figure`: cells → CSV, JSON, PNG).
"""

from __future__ import annotations

from .base import Figure
from .cells import isotropy_cell, train_cell
from .fig2 import fig2_cell
from .figS2 import s157_curve
from .registry import FIGURES, REGISTRY, TITLES, build_cells, figure_config, get_figure
from .run import rows_to_csv, run_figure

__all__ = [
    "FIGURES",
    "REGISTRY",
    "TITLES",
    "Figure",
    "build_cells",
    "fig2_cell",
    "figure_config",
    "get_figure",
    "isotropy_cell",
    "rows_to_csv",
    "run_figure",
    "s157_curve",
    "train_cell",
]
