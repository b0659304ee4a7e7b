"""The Fisher family: every approximation G of the paper behind one interface.

Names (the CLI's ``--fim`` choices come from :data:`REGISTRY`):

======== ===================================================== ===================
name     G                                                     analytic α
======== ===================================================== ===================
gd       I (plain gradient descent, Eq. 4–5)                   — (not isotropic)
exact    JᵀJ/N + ρI (Eq. 8–9, 13)                              1
layer    Sᵀ(Σ⊗I)S/N + ρI with any Σ (Eq. 15–16)                1ᵀΣ⁻¹1
bd       Σ = I (Section 4.1)                                   L
tridiag  Σ of Eq. 19 (Section 4.2)                             s / s+1 (Lemma 4.3)
kfac     (B*+ρI)⊗(A*+ρI) (Eq. 20, S.95, S.123)                 NL; N(L−1)+M0 (S.111)
unit     unit-wise blocks (Eq. 23)                             Σ_{l<L} γ_l M_l (S.128)
diag     entry-wise diagonal F_ii + ρ (Fig. 3)                 — (not isotropic)
quasi-   Ollivier's quasi-diagonal (Fig. 3, ref. [6])          — (not isotropic)
diag
======== ===================================================== ===================
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import FisherApproximation
from .exact import ExactFisher, GradientDescent
from .kfac import KFAC
from ..alpha import layerwise_alpha, tridiagonal_sigma
from .layerwise import BlockDiagonalFisher, LayerWiseFisher, TriDiagonalFisher

REGISTRY: dict[str, type[FisherApproximation]] = {
    "gd": GradientDescent,
    "exact": ExactFisher,
    "bd": BlockDiagonalFisher,
    "tridiag": TriDiagonalFisher,
    "layer": LayerWiseFisher,
    "kfac": KFAC,
}

try:  # unit-wise and entry-wise families
    from .unitwise import UnitWiseFisher  # noqa: F401

    REGISTRY["unit"] = UnitWiseFisher
except ImportError:  # pragma: no cover - while being written
    pass
try:
    from .diagonal import DiagonalFisher, QuasiDiagonalFisher  # noqa: F401

    REGISTRY["diag"] = DiagonalFisher
    REGISTRY["quasi-diag"] = QuasiDiagonalFisher
except ImportError:  # pragma: no cover
    pass

FISHER_NAMES = tuple(REGISTRY)


def get_fisher(name: str, network, damping: float = 0.0, **options) -> FisherApproximation:
    """Instantiate the approximation ``name`` for ``network`` (options: ``sigma`` for layer, ``bias`` for kfac)."""
    key = str(name).lower().replace("_", "-")
    if key == "quasidiag":
        key = "quasi-diag"
    if key not in REGISTRY:
        raise ConfigError(f"unknown Fisher approximation {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[key](network, damping, **options)


__all__ = [
    "FISHER_NAMES",
    "KFAC",
    "REGISTRY",
    "BlockDiagonalFisher",
    "ExactFisher",
    "FisherApproximation",
    "GradientDescent",
    "LayerWiseFisher",
    "TriDiagonalFisher",
    "get_fisher",
    "layerwise_alpha",
    "tridiagonal_sigma",
]
