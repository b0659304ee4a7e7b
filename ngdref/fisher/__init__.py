"""The Fisher family: every approximation G of the paper, one module per family.

======== ===================================================== =================== ===========
name     G                                                     analytic α          module
======== ===================================================== =================== ===========
gd       I (plain gradient descent, Eq. 4–5)                   — (not isotropic)   exact
exact    JᵀJ/N + ρI (Eq. 8–9, 13)                              1                   exact
layer    Sᵀ(Σ⊗I)S/N + ρI with any Σ (Eq. 15–16)                1ᵀΣ⁻¹1              layerwise
bd       Σ = I (Section 4.1)                                   L                   layerwise
tridiag  Σ of Eq. 19 (Section 4.2)                             s / s+1 (Lemma 4.3) layerwise
kfac     (B*+ρI)⊗(A*+ρI) (Eq. 20, S.95, S.123)                 NL; N(L−1)+M0       kfac
unit     unit-wise blocks (Eq. 23)                             Σ_{l<L} γ_l M_l +1  unitwise
diag     entry-wise diagonal F_ii + ρ (Fig. 3)                 — (not isotropic)   diagonal
quasi-   Ollivier's quasi-diagonal (Fig. 3, ref. [6])          — (not isotropic)   diagonal
diag
======== ===================================================== =================== ===========

Each class carries its :class:`~ngdref.fisher.spec.FisherSpec` and is registered with
:func:`~ngdref.fisher.spec.register`; :data:`REGISTRY` maps names to classes in the order
above. Importing this package imports every family module, which registers it.

Unit-wise α: Σ_{l<L} γ_l M_l (S.128) is the paper's, the infinite-width value; a finite network's
output unit (δ_L = 1 on every sample) adds exactly 1 (the l = L term of S.137), which is what
``UnitWiseFisher.analytic_alpha`` returns and what Θ̄(x, x) of a finite network shows.
"""

from __future__ import annotations

from .base import FisherApproximation
from .spec import REGISTRY, FisherOption, FisherSpec, fisher_class, fisher_names, get_fisher, register, unregister
from .exact import ExactFisher, GradientDescent  # noqa: E402  (registration order = table order)
from .layerwise import BlockDiagonalFisher, LayerWiseFisher, TriDiagonalFisher, layerwise_alpha, tridiagonal_sigma
from .kfac import KFAC
from .unitwise import UnitWiseFisher
from .diagonal import DiagonalFisher, QuasiDiagonalFisher
from .blockpartition import BlockPartitionFisher

__all__ = [
    "KFAC",
    "REGISTRY",
    "BlockDiagonalFisher",
    "BlockPartitionFisher",
    "DiagonalFisher",
    "ExactFisher",
    "FisherApproximation",
    "FisherOption",
    "FisherSpec",
    "GradientDescent",
    "LayerWiseFisher",
    "QuasiDiagonalFisher",
    "TriDiagonalFisher",
    "UnitWiseFisher",
    "fisher_class",
    "fisher_names",
    "get_fisher",
    "layerwise_alpha",
    "register",
    "tridiagonal_sigma",
    "unregister",
]
