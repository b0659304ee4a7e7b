"""Helpers the figures' analyses share: claims, loss ratios, the gap to the theory, training rows.

A claim never holds on a value that is missing or NaN (a cell stores a non-finite number as
JSON null): :func:`holds` is False for it, and the aggregations (:func:`worst`, :func:`mean`,
:func:`max_theory_gap`) return None when any value they aggregate is missing, where ``max()``
and ``np.mean`` of the values that remain would hide it.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import numpy as np

from ..sweep import CellOutcome


def claim(text: str, measured: str, paper: str, holds: bool | None, value=None) -> dict:
    """One row of the claims table: what is measured, its value, what the paper says, whether it holds."""
    return {"claim": text, "measured": measured, "paper": paper, "holds": holds, "value": value}


def missing(v) -> bool:
    """True for None (JSON null) and NaN."""
    return v is None or (isinstance(v, float) and math.isnan(v))


def holds(value, test: Callable) -> bool:
    """``test(value)`` as a bool; False when ``value`` (or any entry of a list/tuple of them) is missing."""
    parts = value if isinstance(value, (list, tuple)) else [value]
    return not any(missing(v) for v in parts) and bool(test(value))


def worst(values: Iterable) -> float | None:
    """max of ``values``; None when there are none or any is missing (``max`` would skip a NaN)."""
    values = list(values)
    return None if not values or any(missing(v) for v in values) else max(values)


def mean(values: Iterable) -> float | None:
    """``np.mean`` of ``values``; None when there are none or any is missing."""
    values = list(values)
    return None if not values or any(missing(v) for v in values) else float(np.mean(values))


def std(values: Iterable) -> float | None:
    """``np.std`` of ``values``; None when there are none or any is missing."""
    values = list(values)
    return None if not values or any(missing(v) for v in values) else float(np.std(values))


def div(a, b) -> float | None:
    """a / b; None when either is missing or b is 0."""
    return None if missing(a) or missing(b) or b == 0 else a / b


def series_ratio(values: list, step: int) -> float | None:
    """values[step] / values[0] (e.g. L_t / L_0 of a loss series); None when either is missing or 0 is."""
    return None if len(values) <= step else div(values[step], values[0])


def ratio(rec: list, step: int) -> float | None:
    """L_step / L_0 of a training run's records."""
    return series_ratio([r["train_loss"] for r in rec[: step + 1]], step)


def max_theory_gap(rec: list, key: str = "theory_train_loss") -> float | None:
    """max_t |L_t − L_t^theory| / L_0; None when a loss or its prediction is missing at some step."""
    if not rec:
        return None
    gaps = [None if missing(r["train_loss"]) or missing(r.get(key)) else abs(r["train_loss"] - r[key]) for r in rec]
    return div(worst(gaps), rec[0]["train_loss"])


def fmt(v, spec=".3g") -> str:
    return "—" if v is None else format(v, spec)


def training_rows(outcomes: list[CellOutcome], extra: Callable[[dict], dict]) -> list[dict]:
    """One row per training run and step (a refused run: one row with its message); ``extra(params)`` first."""
    rows = []
    for o in outcomes:
        res = o.result
        base = extra(o.params)
        base.update({"status": res["status"], "alpha": res["summary"].get("alpha"), "lr": res["summary"].get("lr")})
        if not res["records"]:
            rows.append({**base, "step": None, "message": res["message"]})
        for r in res["records"]:
            rows.append({**base, **r})
    return rows
