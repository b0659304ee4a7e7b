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
from .plotting import (THETA_BAR, colors, fim_title, legend_entry, legend_outside, loss_axis, plot_runs,
                       quick_suffix, runs_by, tex_number)

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


def _check(config: dict) -> str | None:
    if any(not r > 0 for r in config["dampings"]):
        return "dampings must be > 0 (ρ = 0 is run on its own for zero_damping_depths)"
    if not set(config["zero_damping_depths"]) <= set(config["depths"]):
        return "zero_damping_depths must be among depths"
    return None


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


def _unstable(extra: dict, depth: int) -> list[dict]:
    """The runs at ``depth`` that exploded: stopped, or a rebound of the loss above ×10."""
    return [r for r in extra.get("runs", []) if r["depth"] == depth
            and (r["status"] != "ok" or (r["rebound"] or 0) > 10)]


def window_note(config: dict, extra: dict, depth: int = 5, tex: bool = True) -> str:
    """Why the L = 5 panel converges at small ρ (REPRODUCTION.md, Fig. 1(b)), from the measured runs."""
    num = (lambda v: f"${tex_number(v)}$") if tex else (lambda v: f"{v:g}")
    bad = _unstable(extra, depth)
    if bad:
        where = ", ".join(f"ρ = {num(r['damping'])} (the loss rebounds ×{fmt(r['rebound'], '.3g')}"
                          + (f", {r['status']} at step {r['stopped_at_step']}" if r["status"] != "ok" else "") + ")"
                          for r in bad)
        window = (f"it explodes only in a window of ρ: {where}, where ρ meets a negative eigenvalue of "
                  "Sᵀ(Σ⊗I)S/N (Σ is indefinite) and the damped Fisher is nearly singular")
    else:
        window = "no run of this grid explodes"
    text = (f"L = {depth} = 3s + 2: Σ is singular, so ρ = 0 is refused (Lemma 4.3); {window}. Below the window "
            "training converges like L = 4: 1 ⊥ null(Σ), so Θ̄ → (1ᵀΣ⁺1) I = 2I in function space.")
    if tex:  # mathtext for the symbols the default font lacks or drops (⊥, the macron of Θ̄)
        text = text.replace("Θ̄", THETA_BAR).replace("⊥", r"$\perp$").replace("Sᵀ(Σ⊗I)S/N", r"$S^\top(\Sigma\otimes I)S/N$")
    return text


def draw(plt, config: dict, rows: list[dict], extra: dict):
    import textwrap

    palette = colors(plt)
    depths = config["depths"]
    fig, axes = plt.subplots(1, len(depths), figsize=(7.2 * len(depths), 4.8))
    for ax, depth in zip(np.atleast_1d(axes), depths):
        sub = [r for r in rows if r["depth"] == depth]
        runs = runs_by(sub, lambda r: f"$\\rho = {tex_number(r['damping'])}$")
        plot_runs(ax, runs, palette, theory=True, axis=loss_axis(runs.values()))
        ref = [r for r in sub if r["damping"] == 0 and r.get("step") is not None]
        if ref:
            ax.semilogy([r["step"] for r in ref], [r["theory_train_loss"] or np.nan for r in ref], "k--", lw=1.2,
                        label=r"$\rho = 0$: NTK dynamics (Eq. 10)", zorder=2.5)
        if any(r.get("status") == "refused" for r in sub):
            legend_entry(ax, r"$\rho = 0$: refused (Lemma 4.3, $\Sigma$ singular)")
        ax.set_title(f"$L = {depth}$, $\\eta = {config['lr']}$, $M = {config['network']['width']}$"
                     f"{quick_suffix(config)}", fontsize=10)
        legend_outside(ax, fontsize=7.5)
        if depth % 3 == 2:  # the panel whose result reads against the paper's sentence: say why, on the figure
            ax.text(0.0, -0.17, "\n".join(textwrap.wrap(window_note(config, extra, depth), 95)),
                    transform=ax.transAxes, va="top", ha="left", fontsize=7.5)
    # the × marker is explained in the legend of a panel that draws one (plot_runs), not here
    fig.suptitle(f"Fig. 1(b): {fim_title('tridiag')} NGD; hollow markers: network, lines: Eq. 10 with the damped "
                 f"{THETA_BAR}", fontsize=10)
    return fig


def caption(config: dict, rows: list[dict], extra: dict) -> str:
    n, d = config["network"], config["data"]
    return (
        f"Training loss of block tri-diagonal NGD (Eq. 19), η = {config['lr']:g}, L = "
        + " and ".join(str(x) for x in config["depths"])
        + f", damping ρ ∈ {{{', '.join(f'{r:g}' for r in config['dampings'])}}} and ρ = 0; MNIST 0/7 "
        f"(N = {d['n_train']}), M = {n['width']}, {n['activation']}, σ_w² = {n['sigma_w2']:g}, "
        f"σ_b² = {n['sigma_b2']:g}, {config['steps']} steps, seed {config['init_seed']}. Hollow markers: the "
        "network, one shape and size per ρ (larger for smaller ρ, so runs that coincide — ρ = 1e-6, 1e-8 and "
        "0 — stay visible one inside the other); coloured lines: Eq. 10 with the damped Θ̄ of each run; black "
        "dashed: ρ = 0 (the NTK dynamics, α = 2). Each panel's y-axis spans its measured losses.\n\n"
        f"L = 4: the damped dynamics approach ρ = 0 as ρ → 0 (the window of instability shows there too, as a "
        f"smaller rebound of the loss). {window_note(config, extra, tex=False)} The "
        "paper's \"explodes as ρ → 0\" is what a grid that stops inside the window shows (REPRODUCTION.md, "
        "Fig. 1(b), also for the damping in the published code's units)."
    )


FIGURE = Figure(
    name=NAME,
    title="Fig. 1(b): block tri-diagonal NGD (η = 0.25), L = 4 and L = 5, damping ρ → 0",
    summary="block tri-diagonal NGD, L = 4 and 5, damping ρ → 0 (Lemma 4.3)",
    claim="tri-diagonal NGD converges at L = 4 but explodes as ρ → 0 at L = 5 = 3s + 2 (Σ singular)",
    config=config, cells=cells, analyse=analyse, draw=draw, caption=caption, check=_check,
    unread=(("network.depth", "the sweep sets the depth per cell: use --set depths=[…]"),),
)
