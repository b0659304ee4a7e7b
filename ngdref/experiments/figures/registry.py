"""The figures of the paper by name, built from their modules (one module per figure)."""

from __future__ import annotations

from ...errors import ConfigError
from ..sweep import Cell
from . import fig1a, fig1b, fig2, fig3, figS1, figS2
from . import finite_width, kfac_multi_output, sub_unit  # extensions beyond the paper (issue 16)
from .base import Figure

REGISTRY: dict[str, Figure] = {m.FIGURE.name: m.FIGURE for m in (fig1a, fig1b, fig2, fig3, figS1, figS2)}
REGISTRY.update({m.FIGURE.name: m.FIGURE for m in (finite_width, kfac_multi_output, sub_unit)})  # extensions (issue 16)

FIGURES = tuple(REGISTRY)

#: figure groups ``ngdref reproduce GROUP`` runs (each also writes a contact sheet): ``all`` is the
#: paper's figures, ``extensions`` the experiments beyond the paper (issue 16), ``everything`` both
PAPER_FIGURES = tuple(m.FIGURE.name for m in (fig1a, fig1b, fig2, fig3, figS1, figS2))
GROUPS: dict[str, tuple[str, ...]] = {
    "all": PAPER_FIGURES,
    "extensions": tuple(name for name in FIGURES if name not in PAPER_FIGURES),
    "everything": FIGURES,
}
GROUP_HELP = {"all": "every figure of the paper above", "extensions": "every extension above (beyond the paper)",
              "everything": "all and extensions"}

TITLES = {name: f.title for name, f in REGISTRY.items()}


def get_figure(name: str) -> Figure:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown figure {name!r}; choose one of {', '.join(FIGURES)} or {', '.join(GROUPS)}") from None


def figure_config(name: str, quick: bool = False, data: str | None = None, seed: int = 0) -> dict:
    """The full configuration of figure ``name``: the paper's settings, or a seconds-sized shrink (``quick``).

    ``data`` (a folder with MNIST IDX files or CIFAR-10 python batches) is used by fig2 only;
    the other figures use the bundled MNIST 0/7 subset or Gaussian inputs, as in the paper.
    """
    return get_figure(name).config(quick, data, seed)


def build_cells(config: dict, backend: str = "numpy", dtype: str = "float64") -> list[Cell]:
    """The sweep of the figure ``config`` belongs to (``config["figure"]``)."""
    return get_figure(config["figure"]).cells(config, backend, dtype)
