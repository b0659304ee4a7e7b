"""Fig. 3: condition number of Θ̄(x, x) against the width M (C.3.1).

cond(Θ̄(x, x)) = λ_max/λ_min of the coefficient matrix Θ̄ = J G⁻¹ Jᵀ/N (Eq. 11) at
initialisation for the NTK (GD, G = I), block-diagonal, unit-wise, diagonal and
quasi-diagonal Fishers; L = 3, ReLU, σ_b² = 0.5, Gaussian inputs (N = 80, M0 = 100),
damping ρ = 1e-12, 5 seeds per width.

Claim: BD and unit-wise NGD satisfy the isotropic condition Θ̄ = αI (Eq. 12) as M → ∞
(cond → 1); the entry-wise (diagonal, quasi-diagonal) Fishers improve on the NTK but
stay above 1.
"""

from __future__ import annotations


from ..sweep import Cell, CellOutcome
from .analysis import claim, fmt, holds, mean, std
from .base import Figure, gaussian, net
from .cells import isotropy_cell, with_backend
from .plotting import THETA_BAR, fim_title, quick_suffix, tex_number, width_axis

NAME = "fig3"


def config(quick: bool = False, data: str | None = None, seed: int = 0) -> dict:
    return {
        "figure": NAME, "quick": quick,
        "network": net(0, 3, sigma_b2=0.5),
        "widths": [32, 128, 512] if quick else [64, 128, 256, 512, 1024, 2048, 4096],
        "fims": ["gd", "bd", "unit", "diag", "quasi-diag"],
        "damping": 1e-12,
        "data": gaussian(20, 30, seed) if quick else gaussian(80, 100, seed),
        "seeds": list(range(seed, seed + (2 if quick else 5))),
    }


def _check(config: dict) -> str | None:
    """The claims compare the NTK, BD, unit-wise, diagonal and quasi-diagonal Fishers at the largest width."""
    missing_fims = [f for f in ("gd", "bd", "unit", "diag", "quasi-diag") if f not in config["fims"]]
    if missing_fims:
        return f"fims must include {', '.join(missing_fims)} (the claims compare them; add others freely)"
    return None


def cells(config: dict, backend: str = "numpy", dtype: str = "float64") -> list[Cell]:
    out = []
    for width in config["widths"]:
        for seed in config["seeds"]:
            for fim in config["fims"]:
                p = with_backend({"figure": NAME, "network": config["network"], "data": config["data"], "fim": fim,
                                  "width": width, "seed": seed, "damping": config["damping"]}, backend, dtype)
                out.append(Cell.make(NAME, isotropy_cell, p, f"{fim}-M{width}-s{seed}"))
    return out


def analyse(config: dict, outcomes: list[CellOutcome]) -> tuple[list, list, dict]:
    rows = [{"fim": o.params["fim"], "width": o.params["width"], "seed": o.params["seed"],
             "condition_number": o.result["condition_number"], "lambda_min": o.result["lambda_min"],
             "lambda_max": o.result["lambda_max"], "alpha_measured": o.result["alpha_measured"],
             "alpha_analytic": o.result["alpha_analytic"], "seconds": o.result["seconds"]} for o in outcomes]
    stats: dict = {}
    for fim in config["fims"]:
        stats[fim] = {}
        for w in config["widths"]:
            vals = [r["condition_number"] for r in rows if r["fim"] == fim and r["width"] == w]
            stats[fim][w] = {"mean": mean(vals), "std": std(vals)}  # None when a seed's value is missing
    wmax, wmin = config["widths"][-1], config["widths"][0]
    c = {f: stats[f][wmax]["mean"] for f in config["fims"]}
    claims = [
        claim(f"cond(Θ̄) at M = {wmax}: BD, unit-wise", f"BD {fmt(c['bd'], '.4g')}, unit {fmt(c['unit'], '.4g')}",
              "→ 1 at large width (isotropic condition, Eq. 12)",
              holds([c["bd"], c["unit"], c["diag"], c["quasi-diag"]], lambda v: v[0] < 1.1 and v[1] < min(v[2], v[3])),
              {"bd": c["bd"], "unit": c["unit"]}),
        claim(f"cond(Θ̄) at M = {wmax}: diagonal, quasi-diagonal vs NTK",
              f"diag {fmt(c['diag'], '.4g')}, quasi-diag {fmt(c['quasi-diag'], '.4g')}, NTK {fmt(c['gd'], '.4g')}",
              "entry-wise FIMs: better than the NTK but stay > 1",
              holds([c["diag"], c["quasi-diag"], c["gd"]], lambda v: v[0] > 1.1 and v[1] > 1.1 and max(v[0], v[1]) < v[2]),
              {"diag": c["diag"], "quasi-diag": c["quasi-diag"], "gd": c["gd"]}),
        claim(f"unit-wise cond(Θ̄): M = {wmin} → {wmax}",
              f"{fmt(stats['unit'][wmin]['mean'], '.4g')} → {fmt(c['unit'], '.4g')}", "decreases toward 1 with width",
              holds([c["unit"], stats["unit"][wmin]["mean"]], lambda v: v[0] < v[1]), None),
    ]
    return rows, claims, {"condition_number": stats}


COLOR = {"gd": "k", "bd": "C3", "unit": "C0", "diag": "C2", "quasi-diag": "C9"}


def _label(fim: str) -> str:
    return f"{fim_title(fim)} (NTK)" if fim == "gd" else fim_title(fim)


def draw(plt, config: dict, rows: list[dict], extra: dict):
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    st = extra["condition_number"]
    for fim in config["fims"]:
        ws = [w for w in config["widths"] if st[fim][w]["mean"] is not None]
        ax.errorbar(ws, [st[fim][w]["mean"] for w in ws], yerr=[st[fim][w]["std"] for w in ws], fmt="o-",
                    color=COLOR.get(fim, "C7"), label=_label(fim), ms=5, capsize=3)
    width_axis(ax, config["widths"])
    ax.set_yscale("log")
    ax.set_ylabel(f"condition number of {THETA_BAR}$(x, x)$")
    d = config["data"]
    ax.set_title(f"Fig. 3{quick_suffix(config)}: ReLU, $L = 3$, Gaussian inputs, $N = {d['n_train']}$, "
                 f"$M_0 = {d['input_dim']}$, $\\rho = {tex_number(config['damping'])}$", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)  # outside: covers no data
    return fig


def caption(config: dict, rows: list[dict], extra: dict) -> str:
    n, d = config["network"], config["data"]
    return (
        f"Condition number λ_max/λ_min of Θ̄(x, x) = J G⁻¹ Jᵀ/N (Eq. 11) at initialisation against the width M "
        f"({', '.join(str(w) for w in config['widths'])}) for "
        + ", ".join(_label(f) for f in config["fims"])
        + f"; {n['activation']}, L = {n['depth']}, σ_w² = {n['sigma_w2']:g}, σ_b² = {n['sigma_b2']:g}, Gaussian "
        f"inputs on the unit sphere (N = {d['n_train']}, M_0 = {d['input_dim']}), damping ρ = {config['damping']:g} "
        f"(none for the NTK), {len(config['seeds'])} initialisations (seeds "
        f"{', '.join(str(s) for s in config['seeds'])}). Markers: mean over the initialisations, bars: ± std; "
        "both axes logarithmic. The isotropic condition Θ̄ = αI (Eq. 12) is cond = 1."
    )


FIGURE = Figure(
    name=NAME,
    title="Fig. 3: condition number of Θ̄(x, x) against width",
    summary="cond(Θ̄) against width: NTK, BD, unit-wise, diagonal, quasi-diagonal",
    claim="cond(Θ̄) → 1 with width for BD and unit-wise NGD, not for the entry-wise Fishers",
    config=config, cells=cells, analyse=analyse, draw=draw, caption=caption, check=_check,
    unread=(("network.width", "the sweep sets the width per cell: use --set widths=[…]"),),
)
