"""Fig. 1(b): block tri-diagonal NGD (Eq. 19), η = 0.25, L = 4 and L = 5, damping ρ → 0.

Layer-wise NGD with the tri-diagonal Σ of Eq. 19 has Θ̄ = αI with α = 1ᵀΣ⁻¹1 (Theorem 4.1)
while Σ is invertible: α = s + 1 = 2 for L = 4 = 3s + 1, so f_t − y ∝ (1 − αη)^t = 0.5^t.
For L = 5 = 3s + 2, Σ is singular (Lemma 4.3): there is no ρ → 0 limit and training
explodes as the damping ρ becomes small; ρ = 0 itself is refused.

Claims: at L = 4 the damped dynamics approach the ρ = 0 (NTK, Eq. 10) dynamics as ρ → 0 and
never explode; at L = 5 they explode once ρ is small and ρ = 0 is refused (Lemma 4.3).
"""

from __future__ import annotations

import math

import numpy as np

from ..sweep import Cell, CellOutcome
from .analysis import claim, div, fmt, holds, max_theory_gap, missing, ratio, training_rows, worst
from .base import Figure, mnist, net
from .cells import train_cell, with_backend
from .plotting import FLOOR, THETA_BAR, colors, fim_title, floored, plot_runs, quick_suffix, runs_by, tex_number

NAME = "fig1b"


def config(quick: bool = False, data: str | None = None, seed: int = 0) -> dict:
    # Θ_l(x, x) = J_l J_lᵀ/N has eigenvalues ~1e-7 … 2e-3 here (N = 100), so ρ spans that range
    dampings = [1e-3, 1e-4, 1e-6, 1e-8] if quick else [1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8]
    return {
        "figure": NAME, "quick": quick,
        "network": net(256 if quick else 4096, 4),
        "depths": [4, 5], "lr": 0.25, "dampings": dampings,
        "zero_damping_depths": [4, 5],  # L = 5, ρ = 0 is refused (Lemma 4.3) and recorded as such
        "data": mnist(20, 20, seed) if quick else mnist(100, 100, seed),
        "steps": 6 if quick else 20, "init_seed": seed,
    }


def cells(config: dict, backend: str = "numpy", dtype: str = "float64") -> list[Cell]:
    out = []
    for depth in config["depths"]:
        rhos = list(config["dampings"]) + ([0.0] if depth in config["zero_damping_depths"] else [])
        for rho in rhos:
            p = with_backend({"figure": NAME, "network": {**config["network"], "depth": depth}, "data": config["data"],
                              "train": {"fim": "tridiag", "steps": config["steps"], "lr": config["lr"], "damping": rho},
                              "seed": config["init_seed"],
                              "refusal_expected": bool(rho == 0 and depth % 3 == 2)}, backend, dtype)
            out.append(Cell.make(NAME, train_cell, p, f"L{depth}-rho{rho:g}"))
    return out


def _gappy(res: dict) -> bool:
    """A run that finished ("ok") but lacks a loss at some step: its cell holds a NaN or is damaged."""
    return res["status"] == "ok" and any(missing(r["train_loss"]) for r in res["records"])


def _approach_to_rho0(by: dict, order: list, claims: list, extra: dict) -> None:
    """L = 4: the damped dynamics against the ρ = 0 (NTK) dynamics."""
    ref = by.get((4, 0.0))
    if not (ref and ref["records"]):
        return
    l0 = ref["records"][0]["train_loss"]
    dist = {}
    for rho in order:
        rec = by[(4, rho)]["records"]
        ok = by[(4, rho)]["status"] == "ok"
        gaps = [None if missing(a["train_loss"]) or missing(b["train_loss"]) else abs(a["train_loss"] - b["train_loss"])
                for a, b in zip(rec, ref["records"])]
        dist[rho] = div(worst(gaps), l0) if ok else None
    vals = [dist[r] for r in order]
    # a run that stopped has no distance (shown by its status); a missing one of a finished run fails the claim
    complete = not _gappy(ref) and all(dist[r] is not None for r in order if by[(4, r)]["status"] == "ok")
    closer = complete and holds(vals[-1], lambda v: v < 0.05) and (vals[0] is None or vals[-1] < vals[0])
    claims.append(claim("L=4: max_t |L_t(ρ) − L_t(ρ=0)| / L_0 for ρ = " + ", ".join(f"{r:g}" for r in order),
                        ", ".join(fmt(v, ".2g") if v is not None else by[(4, r)]["status"]
                                  for v, r in zip(vals, order)),
                        "dynamics get closer to ρ = 0 (the NTK dynamics) as ρ → 0", closer, dist))
    fin = ratio(ref["records"], len(ref["records"]) - 1)
    claims.append(claim(f"L=4, ρ=0: loss after {len(ref['records']) - 1} steps / initial", fmt(fin),
                        "converges (α = 2, f_t − y ∝ (1 − αη)^t = 0.5^t)", holds(fin, lambda v: v < 1e-3), fin))
    theory_gap = max_theory_gap(ref["records"])
    claims.append(claim("L=4, ρ=0: max_t |L_t − L_t^theory (Eq. 10)| / L_0", fmt(theory_gap),
                        "network follows the NTK dynamics", holds(theory_gap, lambda v: v < 0.05), theory_gap))
    extra["L4_distance_to_rho0"] = dist


def _instability(config: dict, by: dict, order: list) -> dict:
    """Per run: the largest rebound max_t L_t / min_{s<t} L_s (1 for a monotone decrease), beside η·λ_max(Θ̄_0).

    A run that finished but lacks a loss at some step is marked ``gappy``: no claim holds on it.
    """
    runs = {}
    for depth in config["depths"]:
        for rho in order:
            res = by[(depth, rho)]
            rec = res["records"]
            losses = [r["train_loss"] for r in rec if not missing(r["train_loss"])]
            rebound, low = 1.0, math.inf
            for v in losses:
                if low < math.inf and low > 0:
                    rebound = max(rebound, v / low)
                low = min(low, v)
            tb = res["summary"].get("theta_bar_train") or {}
            lam = tb.get("lambda_max")
            runs[(depth, rho)] = {
                "rebound": rebound if losses else None,
                "max_loss_over_initial": div(max(losses), losses[0]) if losses else None,
                "final_loss_over_initial": ratio(rec, len(rec) - 1), "status": res["status"],
                "stopped_at_step": rec[-1]["step"] if rec else None,
                "lambda_min_theta_bar": tb.get("lambda_min"), "lambda_max_theta_bar": lam,
                "eta_lambda_max": None if missing(lam) else config["lr"] * lam,
                "gappy": _gappy(res),
            }
    return runs


def analyse(config: dict, outcomes: list[CellOutcome]) -> tuple[list, list, dict]:
    rows = training_rows(outcomes, lambda p: {"depth": p["network"]["depth"], "damping": p["train"]["damping"],
                                              "lr": p["train"]["lr"]})
    by = {(o.params["network"]["depth"], o.params["train"]["damping"]): o.result for o in outcomes}
    claims: list = []
    extra: dict = {}
    order = sorted(config["dampings"], reverse=True)
    _approach_to_rho0(by, order, claims, extra)
    runs = _instability(config, by, order)
    extra["runs"] = [{"depth": d, "damping": r, **v} for (d, r), v in runs.items()]

    def describe(depth):
        out = []
        for r in order:
            v = runs[(depth, r)]
            txt = f"{fmt(v['rebound'], '.2g')} [{fmt(v['eta_lambda_max'], '.2g')}]"
            if v["status"] != "ok":
                txt += f" ({v['status']} at step {v['stopped_at_step']})"
            out.append(txt)
        return ", ".join(out)

    def unstable(depth):
        return [r for r in order if runs[(depth, r)]["status"] != "ok"
                or (runs[(depth, r)]["rebound"] or 0) > 10]

    def gappy(depth):
        return any(runs[(depth, r)]["gappy"] for r in order)

    head = "max_t L_t / min_{s<t} L_s [η·λ_max(Θ̄_0)] for ρ = " + ", ".join(f"{r:g}" for r in order)
    if 4 in config["depths"]:
        claims.append(claim(f"L=4: {head}", describe(4), "no explosion at L = 4 (Σ invertible, Theorem 4.1)",
                            not unstable(4) and not gappy(4), {"unstable_at": unstable(4)}))
    if 5 in config["depths"]:
        bad = [r for r in unstable(5) if r != order[0]]
        claims.append(claim(f"L=5: {head}", describe(5), "training explodes as ρ becomes small (Σ singular, L = 3s+2)",
                            bool(bad) and not gappy(5), {"unstable_at": bad}))
        small = runs[(5, order[-1])]
        fin = small["final_loss_over_initial"]
        diverged = small["status"] != "ok"
        claims.append(claim(
            f"L=5, smallest ρ = {order[-1]:g}: loss after {small['stopped_at_step']} steps / initial",
            fmt(fin) + ("" if not diverged else f" ({small['status']})"),
            "explodes as ρ → 0", not small["gappy"] and (diverged or holds(fin, lambda v: v > 1.0)), small))
        refused = by.get((5, 0.0))
        if refused is not None:
            claims.append(claim("L=5, ρ=0", refused["status"] + (": Lemma 4.3" if refused["status"] == "refused" else ""),
                                "no zero-damping limit (Lemma 4.3)", refused["status"] == "refused",
                                refused["message"]))
    return rows, claims, extra


def draw(plt, config: dict, rows: list[dict], extra: dict):
    palette = colors(plt)
    fig, axes = plt.subplots(1, len(config["depths"]), figsize=(11, 4.5))
    for ax, depth in zip(np.atleast_1d(axes), config["depths"]):
        sub = [r for r in rows if r["depth"] == depth]
        plot_runs(ax, runs_by(sub, lambda r: f"$\\rho = {tex_number(r['damping'])}$"), palette, theory=True)
        ref = [r for r in sub if r["damping"] == 0 and r.get("step") is not None]
        if ref:
            ax.semilogy([r["step"] for r in ref], [floored(r["theory_train_loss"]) for r in ref], "k--", lw=1.5,
                        label=r"$\rho = 0$: NTK dynamics (Eq. 10)")
        if any(r.get("status") == "refused" for r in sub):
            ax.text(0.02, 0.02, r"$\rho = 0$ refused (Lemma 4.3: $\Sigma$ singular)", transform=ax.transAxes,
                    fontsize=8)
        ax.set_title(f"$L = {depth}$, $\\eta = {config['lr']}$, $M = {config['network']['width']}$"
                     f"{quick_suffix(config)}", fontsize=10)
        observed = [r["train_loss"] for r in sub if r.get("train_loss")]
        # the damped Eq. 10 lines can explode far above the network (ρ near an eigenvalue of Θ_l): cap the axis
        ax.set_ylim(FLOOR, 30 * max(observed) if observed else None)
        ax.legend(fontsize=7)
    # the × marker is explained in the legend of a panel that draws one (plot_runs), not here
    fig.suptitle(f"Fig. 1(b): {fim_title('tridiag')} NGD; markers: network, lines: Eq. 10 with the damped "
                 f"{THETA_BAR}", fontsize=10)
    return fig


FIGURE = Figure(
    name=NAME,
    title="Fig. 1(b): block tri-diagonal NGD (η = 0.25), L = 4 and L = 5, damping ρ → 0",
    summary="block tri-diagonal NGD, L = 4 and 5, damping ρ → 0 (Lemma 4.3)",
    claim="tri-diagonal NGD converges at L = 4 but explodes as ρ → 0 at L = 5 = 3s + 2 (Σ singular)",
    config=config, cells=cells, analyse=analyse, draw=draw,
)
