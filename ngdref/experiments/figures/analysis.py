"""Helpers the figures' analyses share: claims, loss ratios, the gap to the theory, training rows."""

from __future__ import annotations

from typing import Callable

from ..sweep import CellOutcome


def claim(text: str, measured: str, paper: str, holds: bool | None, value=None) -> dict:
    """One row of the claims table: what is measured, its value, what the paper says, whether it holds."""
    return {"claim": text, "measured": measured, "paper": paper, "holds": holds, "value": value}


def ratio(rec: list, step: int) -> float | None:
    """L_step / L_0 of a training run's records."""
    if len(rec) <= step or rec[0]["train_loss"] in (None, 0):
        return None
    v = rec[step]["train_loss"]
    return None if v is None else v / rec[0]["train_loss"]


def max_theory_gap(rec: list, key: str = "theory_train_loss") -> float | None:
    """max_t |L_t − L_t^theory| / L_0."""
    if not rec or not rec[0]["train_loss"]:
        return None
    gaps = [abs(r["train_loss"] - r[key]) for r in rec if r["train_loss"] is not None and r.get(key) is not None]
    return max(gaps) / rec[0]["train_loss"] if gaps else None


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
