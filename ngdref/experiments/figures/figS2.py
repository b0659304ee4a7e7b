"""Fig. S.2: α/M of unit-wise NGD with the shifted ReLU against S.157 (C.3.3).

The isotropy constant of unit-wise NGD, α = Σ_{l=1}^{L−1} γ_l M_l (Lemma C.2, S.128), has for
the shifted ReLU φ(u) = max(u, −s) the closed form S.157 as a function of the shift s.
Measured: the mean diagonal of the unit-wise Θ̄(x, x) at initialisation (ρ = 1e-12);
L = 3, M = 4096, σ_b² = 0.5, Gaussian inputs with M0 = N = 10, s ∈ [0, 3].

Claim: the measured α/M agrees with S.157 over the whole range of shifts.
"""

from __future__ import annotations

import numpy as np

from ..sweep import Cell, CellOutcome
from .analysis import claim, div, holds, mean, std, worst
from .base import Figure, gaussian, net
from .cells import isotropy_cell, network, with_backend
from .plotting import THETA_BAR, quick_suffix

NAME = "figS2"


def config(quick: bool = False, data: str | None = None, seed: int = 0) -> dict:
    return {
        "figure": NAME, "quick": quick,
        "network": net(512 if quick else 4096, 3, activation="shifted-relu", sigma_b2=0.5),
        "shifts": [0.0, 1.0, 2.0] if quick else [round(0.25 * k, 2) for k in range(13)],
        "damping": 1e-12,
        "data": gaussian(10, 10, seed),
        "seeds": list(range(seed, seed + (2 if quick else 3))),
    }


def cells(config: dict, backend: str = "numpy", dtype: str = "float64") -> list[Cell]:
    out = []
    for s in config["shifts"]:
        for seed in config["seeds"]:
            p = with_backend({"figure": NAME, "network": {**config["network"], "shift": s}, "data": config["data"],
                              "fim": "unit", "width": config["network"]["width"], "seed": seed,
                              "damping": config["damping"], "s157": True}, backend, dtype)
            out.append(Cell.make(NAME, isotropy_cell, p, f"s{s:g}-seed{seed}"))
    return out


def analyse(config: dict, outcomes: list[CellOutcome]) -> tuple[list, list, dict]:
    width = config["network"]["width"]
    rows = []
    for o in outcomes:
        r = o.result
        rel = div(r["alpha_measured"], r["s157"])
        rows.append({"shift": o.params["network"]["shift"], "seed": o.params["seed"],
                     "alpha_measured_over_M": div(r["alpha_measured"], width), "s157_over_M": div(r["s157"], width),
                     "s157_plus_output_over_M": div(r["s157_with_output_unit"], width),
                     "relative_error": None if rel is None else rel - 1.0,
                     "condition_number": r["condition_number"]})
    per_s = {}
    for s in config["shifts"]:
        v = [r for r in rows if r["shift"] == s]
        per_s[s] = {"mean": mean(r["alpha_measured_over_M"] for r in v),
                    "std": std(r["alpha_measured_over_M"] for r in v),
                    "s157": v[0]["s157_over_M"]}
    err = worst(None if div(p["mean"], p["s157"]) is None else abs(p["mean"] / p["s157"] - 1) for p in per_s.values())
    claims = [claim(f"α/M measured (mean diag of unit-wise Θ̄, M = {width}) vs S.157, s ∈ "
                    f"[{min(config['shifts']):g}, {max(config['shifts']):g}]: max relative error",
                    "—" if err is None else f"{100 * err:.2f} %", "excellent agreement (Fig. S.2)",
                    holds(err, lambda v: v < 0.03), err)]
    return rows, claims, {"per_shift": per_s}


def s157_curve(config: dict, shifts: np.ndarray) -> np.ndarray:
    """S.157 α/M on a grid of shifts (the analytic line of Fig. S.2)."""
    from ...fisher.unitwise import shifted_relu_unit_alpha

    n = config["network"]
    out = []
    for s in shifts:
        out.append(shifted_relu_unit_alpha(network({**n, "shift": float(s)}, config["data"]["input_dim"], 1))
                   / n["width"])
    return np.asarray(out)


def draw(plt, config: dict, rows: list[dict], extra: dict):
    fig, ax = plt.subplots(figsize=(6, 4.5))
    grid = np.linspace(min(config["shifts"]), max(config["shifts"]), 121)
    ax.plot(grid, s157_curve(config, grid), "k-", label="S.157 (analytic)")
    per = extra["per_shift"]
    ss = sorted(s for s in per if per[s]["mean"] is not None)
    ax.errorbar(ss, [per[s]["mean"] for s in ss], yerr=[per[s]["std"] for s in ss], fmt="o", mfc="none",
                color="C3", label=f"mean diagonal of {THETA_BAR}$/M$ (network)", capsize=3)
    ax.set_xlabel("shift $s$")
    ax.set_ylabel(r"$\alpha / M$")
    ax.set_title(f"Fig. S.2{quick_suffix(config)}: shifted ReLU, $L = 3$, $M = {config['network']['width']}$, "
                 f"$M_0 = N = {config['data']['n_train']}$", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def caption(config: dict, rows: list[dict], extra: dict) -> str:
    n, d = config["network"], config["data"]
    return (
        f"α/M of unit-wise NGD with the shifted ReLU φ(u) = max(u, −s) against the shift s "
        f"({', '.join(f'{x:g}' for x in config['shifts'])}): markers, the mean diagonal of the unit-wise "
        f"Θ̄(x, x) / M at initialisation (mean ± std over seeds {', '.join(str(x) for x in config['seeds'])}; "
        f"damping ρ = {config['damping']:g}); line, the closed form S.157 / M. L = {n['depth']}, M = {n['width']}, "
        f"σ_w² = {n['sigma_w2']:g}, σ_b² = {n['sigma_b2']:g}, Gaussian inputs with M_0 = {d['input_dim']}, "
        f"N = {d['n_train']}."
    )


FIGURE = Figure(
    name=NAME,
    title="Fig. S.2: α/M of unit-wise NGD with shifted ReLU vs S.157",
    summary="α/M of unit-wise NGD with shifted ReLU vs S.157",
    claim="the measured α/M of unit-wise NGD agrees with S.157 for every shift",
    config=config, cells=cells, analyse=analyse, draw=draw, caption=caption,
    unread=(("network.shift", "the sweep sets the shift per cell: use --set shifts=[…]"),),
)
