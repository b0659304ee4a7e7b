"""Data transforms used by experiments: the Forster transform of B.3.1(ii) applied to a Dataset."""

from __future__ import annotations

import dataclasses

from ..data import Dataset, forster_transform, normalise_rows


def forster_dataset(ds: Dataset) -> Dataset:
    """Forster-transform the training inputs (X̄ᵀX̄ = (N/M0) I, ‖x̄‖ = 1; S.110) and map the test
    inputs with the same linear map, renormalised."""
    x_bar, b = forster_transform(ds.x_train, return_map=True)
    x_test = normalise_rows(ds.x_test @ b) if ds.n_test else ds.x_test
    return dataclasses.replace(ds, x_train=x_bar, x_test=x_test, name=f"{ds.name}+forster")
