"""PNG plots of the reproduced figures (matplotlib with the Agg backend; the ``plot`` extra).

:func:`plot_figure` returns ``"ok"`` or a one-line reason why no plot was written
(matplotlib missing); the data files never depend on it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PLOT_HINT = "matplotlib is not installed; the data were written, for the plot: pip install 'ngdref[plot]'"


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _loss(v):
    return np.nan if v is None or v <= 0 else v


def _runs(rows, key):
    out: dict = {}
    for r in rows:
        if r.get("step") is None:
            continue
        out.setdefault(key(r), []).append(r)
    return out


FLOOR = 1e-15  # lower y-limit of the loss plots; a theory value below it (c = 1: exactly 0) is drawn at it


def _floored(v):
    return np.nan if v is None else max(v, FLOOR)


def _plot_runs(ax, runs, colors, theory_key="theory_train_loss", theory=True):
    for i, (label, rs) in enumerate(runs.items()):
        col = colors[i % len(colors)]
        steps = [r["step"] for r in rs]
        ax.semilogy(steps, [_loss(r["train_loss"]) for r in rs], "o", color=col, ms=5, mfc="none", label=label)
        if theory:
            ax.semilogy(steps, [_floored(r.get(theory_key)) for r in rs], "-", color=col, lw=1.2)
        if rs[-1].get("status") not in (None, "ok"):
            ax.semilogy([steps[-1]], [_loss(rs[-1]["train_loss"])], "x", color=col, ms=10, mew=2)
    ax.set_xlabel("step t")
    ax.set_ylabel("training loss")
    ax.grid(True, which="major", alpha=0.3)


def plot_figure(name: str, config: dict, rows: list[dict], extra: dict, path: str | Path) -> str:
    plt = _pyplot()
    if plt is None:
        return PLOT_HINT
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    suffix = " (quick)" if config.get("quick") else ""
    if name == "fig1a":
        fig, ax = plt.subplots(figsize=(6, 4.5))
        _plot_runs(ax, _runs(rows, lambda r: r["run"]), colors)
        n = config["network"]
        ax.set_title(f"Fig. 1(a){suffix}: MNIST 0/7, L={n['depth']}, M={n['width']}\nmarkers: network, lines: Eq. 10",
                     fontsize=10)
        ax.set_ylim(bottom=FLOOR)
        ax.legend(fontsize=8)
    elif name == "fig1b":
        fig, axes = plt.subplots(1, len(config["depths"]), figsize=(11, 4.5))
        for ax, depth in zip(np.atleast_1d(axes), config["depths"]):
            sub = [r for r in rows if r["depth"] == depth]
            runs = _runs(sub, lambda r: f"ρ = {r['damping']:g}")
            _plot_runs(ax, runs, colors, theory=True)
            ref = [r for r in sub if r["damping"] == 0 and r.get("step") is not None]
            if ref:
                ax.semilogy([r["step"] for r in ref], [_floored(r["theory_train_loss"]) for r in ref], "k--", lw=1.5,
                            label="ρ = 0: NTK dynamics (Eq. 10)")
            refused = [r for r in sub if r.get("status") == "refused"]
            if refused:
                ax.text(0.02, 0.02, "ρ = 0 refused (Lemma 4.3: Σ singular)", transform=ax.transAxes, fontsize=8)
            ax.set_title(f"L = {depth}, η = {config['lr']}, M = {config['network']['width']}{suffix}", fontsize=10)
            observed = [r["train_loss"] for r in sub if r.get("train_loss")]
            # the damped Eq. 10 lines can explode far above the network (ρ near an eigenvalue of Θ_l): cap the axis
            ax.set_ylim(FLOOR, 30 * max(observed) if observed else None)
            ax.legend(fontsize=7)
        fig.suptitle("Fig. 1(b): block tri-diagonal NGD; markers: network, lines: Eq. 10 with the damped Θ̄ "
                     "(× = diverged)", fontsize=10)
    elif name == "fig2":
        tasks = config["tasks"]
        fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4))
        for ax, task in zip(np.atleast_1d(axes), tasks):
            st = extra[task["name"]]["methods"]
            ms = [m for m in task["methods"] if st[m]["mean"] is not None]
            x = np.arange(len(ms))
            for i, m in enumerate(ms):
                accs = [r["accuracy"] for r in rows if r["task"] == task["name"] and r["method"] == m
                        and r["seed"] != "f0=0" and r["accuracy"] is not None]
                ax.plot(np.full(len(accs), i) + 0.12, accs, ".", color="0.6", ms=4)
            ax.errorbar(x, [st[m]["mean"] for m in ms], yerr=[st[m]["std"] for m in ms], fmt="s", capsize=5,
                        color="C0", label="mean ± std over f_0 draws")
            ax.plot(x, [st[m]["f0_zero"] for m in ms], "o", mfc="none", color="C3", ms=9, label="f_0 = 0 (α⁻¹Θ̄y)")
            ax.set_xticks(x, ms)
            d = extra[task["name"]]["data"]
            ax.set_title(f"{task['name']}: {Path(str(d['name'])).name}, N={d['n_train']}, N'={d['n_test']}", fontsize=10)
            ax.set_ylabel("test accuracy")
            ax.grid(True, axis="y", alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"Fig. 2{suffix}: kernel-regression prediction, L=3, ReLU, analytic Θ̄", fontsize=10)
    elif name == "fig3":
        fig, ax = plt.subplots(figsize=(6, 4.5))
        style = {"gd": ("k", "NTK (GD)"), "bd": ("C3", "block diagonal"), "unit": ("C0", "unit-wise"),
                 "diag": ("C2", "diagonal"), "quasi-diag": ("C9", "quasi-diagonal")}
        st = extra["condition_number"]
        for fim in config["fims"]:
            ws = [w for w in config["widths"] if st[fim][w]["mean"] is not None]
            col, lab = style.get(fim, ("C7", fim))
            ax.errorbar(ws, [st[fim][w]["mean"] for w in ws], yerr=[st[fim][w]["std"] for w in ws], fmt="o-",
                        color=col, label=lab, ms=5, capsize=3)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("width M")
        ax.set_ylabel("condition number of Θ̄(x, x)")
        d = config["data"]
        ax.set_title(f"Fig. 3{suffix}: ReLU, L=3, Gaussian inputs, N={d['n_train']}, M0={d['input_dim']}, "
                     f"ρ={config['damping']:g}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    elif name == "figS1":
        acts = list(dict.fromkeys(r["activation"] for r in rows))
        fig, axes = plt.subplots(1, len(acts), figsize=(5 * len(acts), 4))
        for ax, act in zip(np.atleast_1d(axes), acts):
            runs = _runs([r for r in rows if r["activation"] == act], lambda r: f"c = {r['lr_scale']:g}")
            _plot_runs(ax, runs, colors, theory_key="isotropic_train_loss")
            alpha = next(r["alpha"] for r in rows if r["activation"] == act)
            ax.set_title(f"{act}: α/M = {alpha / config['network']['width']:.4f}", fontsize=10)
            ax.set_ylim(bottom=FLOOR)
            ax.legend(fontsize=8)
        fig.suptitle(f"Fig. S.1{suffix}: unit-wise NGD, η = c/α, M = {config['network']['width']} "
                     "(markers: network, lines: Eq. 24)", fontsize=10)
    elif name == "figS2":
        fig, ax = plt.subplots(figsize=(6, 4.5))
        from .figures import s157_curve

        grid = np.linspace(min(config["shifts"]), max(config["shifts"]), 121)
        ax.plot(grid, s157_curve(config, grid), "k-", label="S.157 (analytic)")
        per = extra["per_shift"]
        ss = sorted(per)
        ax.errorbar(ss, [per[s]["mean"] for s in ss], yerr=[per[s]["std"] for s in ss], fmt="o", mfc="none",
                    color="C3", label="mean diagonal of Θ̄ / M (network)", capsize=3)
        ax.set_xlabel("shift s")
        ax.set_ylabel("α / M")
        ax.set_title(f"Fig. S.2{suffix}: shifted ReLU, L=3, M={config['network']['width']}, M0=N="
                     f"{config['data']['n_train']}", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    else:  # pragma: no cover
        return f"no plot for {name}"
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return "ok"
