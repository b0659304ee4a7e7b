"""Extension (beyond Fig. 1(a) and Fig. S.1): how far a finite network is from the NGD theory, against width.

Section 6 of the paper asks for "a non-asymptotic analysis of NGD … quantifying the effect of a
finite width on the convergence". With η = c/α and c = 1 the theory (Eq. 10 with Θ̄ = αI, Eq. 24)
says the training error vanishes after one step; a finite network leaves a residual. Per
approximation (exact, block-diagonal, block tri-diagonal, K-FAC, unit-wise), width M and seed,
one NGD step (Eq. 7) from θ_0 on MNIST 0/7 (N = 100, L = 3, ReLU, σ_w² = 2, σ_b² = 0) measures

* ``loss_ratio``           L(θ_1)/L(θ_0), the one-step residual (0 in the theory);
* ``theta_bar_dev``        ‖Θ̄_0/α − I‖₂ at initialisation (Eq. 12: 0 when isotropic);
* ``theta_bar_change``     ‖Θ̄_1 − Θ̄_0‖₂/α, the coefficient matrix (Eq. 11) moved by one step
  (Θ̄_1 with G and J at θ_1);
* ``param_change``         ‖θ_1 − θ_0‖₂/‖θ_0‖₂ (lazy training: → 0 with width);
* ``flin_gap``             max_n |f_1(x_n) − f_1^lin(x_n)|, f_1^lin = f_0 − ηΘ̄_0(f_0 − y) (S.23–S.24).

α and η as ``ngdref train`` chooses them: α analytic where the paper gives one (BD: L, tri-diagonal:
Lemma 4.3, K-FAC: NL, S.107; unit-wise: S.128), η = c/α; exact NGD η = c/λ_max(Θ̄) (its α = 1).
The damping is each approximation's default (ρ = 0, the pseudo-inverse; unit-wise ρ = 1e-12 as in
C.3), and for unit-wise NGD the same measurement runs over ρ = 1e-16 … 1e-6 at three widths.

Analysis: mean and spread (min–max over seeds) per width, and a power law ⟨q⟩ ∝ M^(−κ) fitted by
least squares on log q against log M over all seeds (:func:`power_law_fit`: κ with its 95 %
confidence interval from Student's t with n − 2 degrees of freedom).
"""

from __future__ import annotations

import math
import time

import numpy as np

from ...losses import mse_loss
from ..sweep import Cell, CellOutcome
from .analysis import claim, fmt, holds
from .base import Figure, mnist, net
from .cells import NUMBER, backend_of, dataset, finite, network, result_problem, with_backend
from .plotting import THETA_BAR, fim_title, quick_suffix, tex_number, width_axis

NAME = "finite-width"

#: the measured quantities: key → (in words for tables, mathtext for the plot)
QUANTITIES = {
    "loss_ratio": ("loss₁/loss₀", r"$L(\theta_1)/L(\theta_0)$"),
    "theta_bar_dev": ("‖Θ̄₀/α − I‖₂", r"$\|\bar{\Theta}_0/\alpha - I\|_2$"),
    "theta_bar_change": ("‖Θ̄₁ − Θ̄₀‖₂/α", r"$\|\bar{\Theta}_1 - \bar{\Theta}_0\|_2/\alpha$"),
    "param_change": ("‖θ₁ − θ₀‖/‖θ₀‖", r"$\|\theta_1 - \theta_0\|/\|\theta_0\|$"),
    "flin_gap": ("max|f₁ − f₁^lin|", r"$\max_n |f_1 - f_1^{\mathrm{lin}}|$"),
}

#: below this a quantity is round-off (e.g. exact NGD's Θ̄ = I at ρ = 0): no power law is fitted
ROUND_OFF = 1e-10


def config(quick: bool = False, data: str | None = None, seed: int = 0) -> dict:
    # Full size chosen to finish in ~25 min on a loaded 2-core machine with --jobs 2 (see REPRODUCTION.md):
    # 16384 (a 2 GiB weight matrix per copy, several copies per step) does not fit that budget.
    return {
        "figure": NAME, "quick": quick,
        "network": net(0, 3),
        "data": mnist(20, 0, seed) if quick else mnist(100, 0, seed),
        "fims": ["exact", "bd", "tridiag", "kfac", "unit"],
        "widths": [32, 64, 128] if quick else [256, 512, 1024, 2048, 4096, 8192],
        "seeds": list(range(seed, seed + (2 if quick else 5))),
        "lr_scale": 1.0,
        # ρ in the width sweep of the approximations that damp by default (unit-wise, C.3); the others
        # use their default ρ = 0 (pseudo-inverse)
        "damping": 1e-12,
        # unit-wise ρ sweep at three widths
        "dampings": [1e-14, 1e-10, 1e-6] if quick else [1e-16, 1e-14, 1e-12, 1e-10, 1e-8, 1e-6],
        "damping_widths": [32, 128] if quick else [512, 2048, 4096],  # 4096: Fig. 1(a)'s and S.1's width
    }


def _damping(fim: str, config: dict) -> float:
    """ρ of ``fim`` in the width sweep: each approximation's default (its spec), with ``config["damping"]``
    in place of a non-zero default (unit-wise's 1e-12, C.3); ρ = 0 (the pseudo-inverse) otherwise."""
    from ...fisher import fisher_class

    default = fisher_class(fim).spec.default_damping
    return float(config["damping"]) if default > 0 else float(default)


def cells(config: dict, backend: str = "numpy", dtype: str = "float64") -> list[Cell]:
    out = []
    base = {"figure": NAME, "network": config["network"], "data": config["data"], "lr_scale": config["lr_scale"]}
    for width in config["widths"]:
        for seed in config["seeds"]:
            for fim in config["fims"]:
                p = with_backend({**base, "sweep": "width", "fim": fim, "width": width, "seed": seed,
                                  "damping": _damping(fim, config)}, backend, dtype)
                out.append(Cell.make(NAME, finite_width_cell, p, f"{fim}-M{width}-s{seed}"))
    for width in config["damping_widths"]:
        for seed in config["seeds"]:
            for rho in config["dampings"]:
                p = with_backend({**base, "sweep": "damping", "fim": "unit", "width": width, "seed": seed,
                                  "damping": rho}, backend, dtype)
                out.append(Cell.make(NAME, finite_width_cell, p, f"unit-rho{rho:g}-M{width}-s{seed}"))
    return out


def finite_width_cell(p: dict) -> dict:
    """One NGD step (Eq. 7) at c = 1 from θ_0 and the five distances from the theory (module docstring)."""
    from ...backend import to_device, to_host
    from ...diagnostics import isotropy
    from ...fisher import get_fisher
    from ...train import fetch, ngd_step, squared_distance

    t0 = time.perf_counter()
    ds = dataset(p["data"])
    net = network(p["network"], ds.input_dim, ds.n_outputs, width=p["width"])
    be = backend_of(p)
    fim = get_fisher(p["fim"], net, p["damping"])
    x, n = to_device(ds.x_train, be), ds.n_train
    params0 = net.init(p["seed"], be)
    s0 = net.signals(params0, x)
    tb0_dev = fim.coefficient(s0)
    tb0 = np.asarray(to_host(tb0_dev), dtype=np.float64)
    alpha, source = fim.analytic_alpha(n), "analytic"
    if alpha is None:
        alpha, source = float(np.mean(np.diag(tb0))), "measured mean diagonal"
    eta, rule = fim.learning_rate(p["lr_scale"], alpha, tb0_dev)
    stats = isotropy(tb0, alpha)
    y = ds.y_train
    f0 = np.asarray(to_host(s0.f), dtype=np.float64)
    resid0 = (f0 - y).T.reshape(-1)  # output-major CN vector
    flin1 = f0.T.reshape(-1) - eta * tb0 @ resid0
    params1 = ngd_step(fim, params0, s0, to_device((f0 - y).T, be), eta)
    s1 = net.signals(params1, x)
    f1 = np.asarray(to_host(s1.f), dtype=np.float64)
    tb1 = np.asarray(to_host(fim.coefficient(s1)), dtype=np.float64)
    # ‖θ_1 − θ_0‖² and ‖θ_0‖² blockwise (a None reference is 0): no parameter-sized temporary
    d2, n2 = (float(v) for v in fetch(squared_distance(params1, params0),
                                      squared_distance(params0, [None] * len(params0))))
    loss0, loss1 = mse_loss(f0, y), mse_loss(f1, y)  # Eq. 3
    lin_loss1 = float(np.sum((flin1 - y.T.reshape(-1)) ** 2) / (2 * n))
    return {
        "alpha": finite(alpha), "alpha_source": source, "lr": finite(eta), "lr_rule": rule,
        "loss0": finite(loss0), "loss1": finite(loss1), "loss_ratio": finite(loss1 / loss0),
        "lin_loss_ratio": finite(lin_loss1 / loss0),
        "theta_bar_dev": finite(stats["deviation_from_alpha_I"]),
        "condition_number": finite(stats["condition_number"]),
        "mean_diagonal_over_alpha": finite(stats["mean_diagonal"] / alpha),
        "theta_bar_change": finite(float(np.linalg.norm(tb1 - tb0, 2)) / alpha),
        "param_change": finite(math.sqrt(d2 / n2)),
        "flin_gap": finite(float(np.max(np.abs(f1.T.reshape(-1) - flin1)))),
        "seconds": finite(time.perf_counter() - t0),
    }


RESULT_KEYS = ("alpha", "lr", "loss0", "loss1", "loss_ratio", "lin_loss_ratio", "theta_bar_dev", "condition_number",
               "mean_diagonal_over_alpha", "theta_bar_change", "param_change", "flin_gap", "seconds")


def _check_result(r: dict, p: dict) -> str | None:
    return result_problem(r, {**{k: NUMBER for k in RESULT_KEYS}, "alpha_source": str, "lr_rule": str})


finite_width_cell.check_result = _check_result
finite_width_cell.param_arrays = 2  # it trains: θ_0 and θ_t at least (a lower bound: cells.cell_memory, train_cell)


# ---- analysis ---------------------------------------------------------------------------------


def power_law_fit(widths, values, confidence: float = 0.95) -> dict | None:
    """Least-squares fit of log q = log A − κ log M (scipy.stats.linregress) over the points
    (M_i, q_i) with q_i > 0; κ with its ``confidence`` interval κ ± t_{n−2} · stderr.

    None with fewer than three positive points (no interval), or when a value is missing.
    """
    from scipy import stats

    values = list(values)
    if any(q is None or not math.isfinite(q) for q in values):
        return None
    pts = [(float(m), float(q)) for m, q in zip(widths, values)]
    pts = [(m, q) for m, q in pts if q > 0]
    if len(pts) < 3 or len({m for m, _ in pts}) < 2:
        return None
    lm, lq = np.log([m for m, _ in pts]), np.log([q for _, q in pts])
    fit = stats.linregress(lm, lq)
    half = float(stats.t.ppf(0.5 + confidence / 2, len(pts) - 2) * fit.stderr)
    kappa = -float(fit.slope)
    return {"kappa": kappa, "low": kappa - half, "high": kappa + half, "stderr": float(fit.stderr),
            "prefactor": float(math.exp(fit.intercept)), "n": len(pts), "r2": float(fit.rvalue**2)}


def _spread(vals: list) -> dict:
    """Mean, min and max of one width's seeds; all None when there are none or any is missing (None, NaN)."""
    if not vals or any(v is None or not math.isfinite(v) for v in vals):
        return {"mean": None, "min": None, "max": None, "n": len(vals)}
    return {"mean": float(np.mean(vals)), "min": float(min(vals)), "max": float(max(vals)), "n": len(vals)}


def _row(o: CellOutcome) -> dict:
    p, r = o.params, o.result
    return {"sweep": p["sweep"], "fim": p["fim"], "width": p["width"], "seed": p["seed"], "damping": p["damping"],
            **{k: r[k] for k in RESULT_KEYS}, "alpha_source": r["alpha_source"], "lr_rule": r["lr_rule"]}


def _fit_text(fit: dict | None, note: str | None = None) -> str:
    if note:
        return note
    if fit is None:
        return "—"
    return f"{fit['kappa']:.2f} [{fit['low']:.2f}, {fit['high']:.2f}]"


def analyse(config: dict, outcomes: list[CellOutcome]) -> tuple[list, list, dict]:
    rows = [_row(o) for o in outcomes]
    width_rows = [r for r in rows if r["sweep"] == "width"]
    stats: dict = {}
    fits: dict = {}
    notes: dict = {}
    for q in QUANTITIES:
        stats[q], fits[q], notes[q] = {}, {}, {}
        for fim in config["fims"]:
            rs = [r for r in width_rows if r["fim"] == fim]
            stats[q][fim] = {w: _spread([r[q] for r in rs if r["width"] == w]) for w in config["widths"]}
            vals = [r[q] for r in rs]
            if vals and all(v is not None for v in vals) and max(abs(v) for v in vals) < ROUND_OFF:
                fits[q][fim], notes[q][fim] = None, "≡ 0 (round-off)"
            else:  # a value at round-off is no point of a power law (it is 0): fitted on the others
                keep = [r for r in rs if r[q] is None or abs(r[q]) >= ROUND_OFF]
                fits[q][fim], notes[q][fim] = power_law_fit([r["width"] for r in keep], [r[q] for r in keep]), None
                zero = sorted({r["width"] for r in rs} - {r["width"] for r in keep})
                if zero and fits[q][fim] is None:
                    notes[q][fim] = f"≡ 0 (round-off) at M = {', '.join(str(w) for w in zero)}; too few other points"
    damp: dict = {}
    for w in config["damping_widths"]:
        damp[w] = {}
        for rho in config["dampings"]:
            rs = [r for r in rows if r["sweep"] == "damping" and r["width"] == w and r["damping"] == rho]
            damp[w][rho] = {q: _spread([r[q] for r in rs]) for q in ("loss_ratio", "theta_bar_dev", "flin_gap")}
    wmin, wmax = config["widths"][0], config["widths"][-1]
    claims = []
    for q, (words, _) in QUANTITIES.items():
        parts = [f"{fim_title(f)} {_fit_text(fits[q][f], notes[q][f])}" for f in config["fims"]]
        shrinking = [f for f in config["fims"] if fits[q][f] is not None and fits[q][f]["low"] > 0]
        fitted = [f for f in config["fims"] if notes[q][f] is None]
        claims.append(claim(
            f"{words} ∝ M^−κ over M = {wmin}…{wmax}: κ [95% CI] per approximation",
            "; ".join(parts), "→ 0 as M → ∞ (theory at infinite width); no finite-width rate is stated",
            holds([fits[q][f]["kappa"] if fits[q][f] else None for f in fitted], lambda v: True) and
            len(shrinking) == len(fitted),
            {f: fits[q][f] for f in config["fims"]}))
    means = {f: stats["loss_ratio"][f][wmax]["mean"] for f in config["fims"]}
    first = {f: stats["loss_ratio"][f][wmin]["mean"] for f in config["fims"]}
    claims.append(claim(
        f"loss₁/loss₀ at c = 1, mean over {len(config['seeds'])} seeds: M = {wmin} → {wmax}",
        "; ".join(f"{fim_title(f)} {fmt(first[f])} → {fmt(means[f])}" for f in config["fims"]),
        "one-step convergence (Eq. 24 at c = 1: 0)",
        holds([means[f] for f in config["fims"]] + [first[f] for f in config["fims"]],
              lambda v: all(v[i] < v[i + len(config["fims"])] for i in range(len(config["fims"])))),
        {"first": first, "last": means}))
    for w in config["damping_widths"]:
        vals = [damp[w][rho]["loss_ratio"]["mean"] for rho in config["dampings"]]
        best = None if any(v is None for v in vals) else config["dampings"][int(np.argmin(vals))]
        claims.append(claim(
            f"unit-wise, M = {w}: loss₁/loss₀ over ρ = " + ", ".join(f"{r:g}" for r in config["dampings"]),
            ", ".join(fmt(v) for v in vals) + f" (smallest at ρ = {fmt(best)})",
            "Theorem 5.1: ρ = M^(−ε) → 0; the paper's runs use ρ = 1e-12 (C.3)",
            None if holds(vals, lambda v: True) else False, {"values": vals, "best_damping": best}))
    summary = {"stats": _keys_to_str(stats), "fits": fits, "fit_notes": notes, "damping": _keys_to_str(damp),
               "seconds_per_cell": {f: {w: _spread([r["seconds"] for r in width_rows
                                                    if r["fim"] == f and r["width"] == w])["mean"]
                                        for w in config["widths"]} for f in config["fims"]}}
    return rows, claims, _keys_to_str(summary)


def _keys_to_str(d):
    """JSON object keys as strings (widths, dampings), recursively — the summary round-trips through JSON."""
    if isinstance(d, dict):
        return {(k if isinstance(k, str) else f"{k:g}" if isinstance(k, float) else str(k)): _keys_to_str(v)
                for k, v in d.items()}
    return d


# ---- plot -------------------------------------------------------------------------------------

COLOR = {"exact": "k", "bd": "C3", "tridiag": "C1", "kfac": "C2", "unit": "C0"}
MARKER = {"exact": "s", "bd": "o", "tridiag": "D", "kfac": "^", "unit": "v"}


def _guides(ax, widths, anchor: float) -> list:
    """M^−1/2 and M^−1 guide lines through ``anchor`` at the smallest width (grey, dotted/dashed)."""
    w = np.array([widths[0], widths[-1]], dtype=float)
    return [ax.plot(w, anchor * (w / w[0]) ** -0.5, ":", color="0.45", lw=1.3)[0],
            ax.plot(w, anchor * (w / w[0]) ** -1.0, "--", color="0.45", lw=1.3)[0]]


def _kappa_label(fit: dict) -> str:
    return f"$\\kappa = {fit['kappa']:.2f}$ [{fit['low']:.2f}, {fit['high']:.2f}]"


def _quantity_panel(ax, config: dict, q: str, tex: str, st: dict, fits: dict, notes: dict) -> None:
    """One quantity against M: mean and min–max over seeds, the fitted M^−κ (legend: κ and its 95 % CI,
    upper right, above the data), the guides; approximations at round-off named in the panel."""
    widths = config["widths"]
    firsts, handles, zero = [], [], []
    for fim in config["fims"]:
        if notes[q][fim]:
            zero.append(fim_title(fim))
            continue
        s = st[q][fim]
        ws = [w for w in widths if s[str(w)]["mean"] is not None and s[str(w)]["mean"] >= ROUND_OFF]
        if not ws:
            continue
        m = np.array([s[str(w)]["mean"] for w in ws])
        lo = np.maximum(m - np.array([s[str(w)]["min"] for w in ws]), 0)
        hi = np.maximum(np.array([s[str(w)]["max"] for w in ws]) - m, 0)
        h = ax.errorbar(ws, m, yerr=[lo, hi], fmt=MARKER.get(fim, "o"), color=COLOR.get(fim, "C7"), ms=5, capsize=3)
        fit = fits[q][fim]
        if fit is not None:
            w = np.array([ws[0], ws[-1]], dtype=float)
            ax.plot(w, fit["prefactor"] * w ** -fit["kappa"], "-", color=COLOR.get(fim, "C7"), lw=1)
            h.set_label(_kappa_label(fit))
            handles.append(h)
        firsts.append(m[0])
    ax.set_yscale("log")
    if firsts:
        _guides(ax, widths, float(np.exp(np.mean(np.log(firsts)))))
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi * (hi / lo) ** 0.7)  # room above the data for the κ legend
        ax.legend(handles=handles, fontsize=6.5, loc="upper right", framealpha=0.9, title="fit $M^{-\\kappa}$, 95% CI",
                  title_fontsize=6.5)
    if zero:
        ax.text(0.03, 0.03 if firsts else 0.5, "0 up to round-off (< $10^{-10}$):\n" + ", ".join(zero),
                transform=ax.transAxes, fontsize=7, va="bottom" if firsts else "center", color="0.25")
    width_axis(ax, widths)
    ax.set_title(tex, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)


def draw(plt, config: dict, rows: list[dict], extra: dict):
    from matplotlib.lines import Line2D

    fig = plt.figure(figsize=(13, 8.8))
    grid = fig.add_gridspec(3, 3, height_ratios=[1, 1, 0.13])
    axes = [fig.add_subplot(grid[i // 3, i % 3]) for i in range(6)]
    for ax, (q, (_, tex)) in zip(axes, QUANTITIES.items()):
        _quantity_panel(ax, config, q, tex, extra["stats"], extra["fits"], extra["fit_notes"])
    ax = axes[5]
    dampings = config["dampings"]
    for i, w in enumerate(config["damping_widths"]):
        d = extra["damping"][str(w)]
        m = [d[f"{r:g}"]["loss_ratio"]["mean"] for r in dampings]
        lo = [d[f"{r:g}"]["loss_ratio"]["min"] for r in dampings]
        hi = [d[f"{r:g}"]["loss_ratio"]["max"] for r in dampings]
        keep = [j for j, v in enumerate(m) if v is not None and v > 0]
        ax.errorbar([dampings[j] for j in keep], [m[j] for j in keep],
                    yerr=[[m[j] - lo[j] for j in keep], [hi[j] - m[j] for j in keep]], fmt="o-", color=f"C{4 + i}",
                    ms=5, capsize=3, label=f"$M = {w}$")
    ax.axvline(config["damping"], color="0.45", ls=":", lw=1, label=f"$\\rho = {tex_number(config['damping'])}$ (C.3)")
    ax.axhline(1.0, color="0.3", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(r"damping $\rho$")
    ax.set_title(f"{fim_title('unit')}: " + r"$L(\theta_1)/L(\theta_0)$ against $\rho$", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi * (hi / lo) ** 0.35)
    ax.legend(fontsize=7, loc="upper right", framealpha=0.9)
    key = fig.add_subplot(grid[2, :])
    key.axis("off")
    handles = [Line2D([], [], color=COLOR.get(f, "C7"), marker=MARKER.get(f, "o"), ls="-", lw=1, label=fim_title(f))
               for f in config["fims"]]
    handles += [Line2D([], [], color="0.45", ls=":", lw=1.3, label=r"guide $\propto M^{-1/2}$"),
                Line2D([], [], color="0.45", ls="--", lw=1.3, label=r"guide $\propto M^{-1}$")]
    key.legend(handles=handles, loc="center", ncol=len(handles), fontsize=8.5, frameon=False)
    d = config["data"]
    fig.suptitle(f"Extension{quick_suffix(config)}: finite-width effects of one NGD step, $\\eta = c/\\alpha$, "
                 f"$c = {config['lr_scale']:g}$ — MNIST {'/'.join(str(k) for k in d['classes'])}, $N = {d['n_train']}$, "
                 f"$L = {config['network']['depth']}$, {config['network']['activation']}, $\\sigma_b^2 = {config['network']['sigma_b2']:g}$; markers: mean, bars: min–max over "
                 f"{len(config['seeds'])} seeds; {THETA_BAR} of Eq. 11", fontsize=10)
    return fig


def caption(config: dict, rows: list[dict], extra: dict) -> str:
    n, d = config["network"], config["data"]
    fims = ", ".join(fim_title(f) for f in config["fims"])
    return (
        "Extension (not a figure of the paper). One NGD step (Eq. 7) with η = c/α, "
        f"c = {config['lr_scale']:g} (Eq. 24 predicts zero training error after it), from the initialisation θ_0 of "
        f"{fims}; {n['activation']}, L = {n['depth']}, σ_w² = {n['sigma_w2']:g}, σ_b² = {n['sigma_b2']:g}, MNIST "
        f"{'/'.join(str(c) for c in d['classes'])} (N = {d['n_train']}), widths M = "
        f"{', '.join(str(w) for w in config['widths'])}, {len(config['seeds'])} initialisations each. α is the "
        "analytic one where the paper gives it (BD L, tri-diagonal, K-FAC NL, unit-wise S.128), exact NGD steps with "
        f"η = c/λ_max(Θ̄); damping ρ = 0 (pseudo-inverse) except unit-wise, ρ = {config['damping']:g}. Panels: the "
        "loss ratio L(θ_1)/L(θ_0); ‖Θ̄_0/α − I‖₂ (isotropy at initialisation, Eq. 12); ‖Θ̄_1 − Θ̄_0‖₂/α (Θ̄ of Eq. 11 "
        "recomputed at θ_1); ‖θ_1 − θ_0‖/‖θ_0‖; max_n |f_1 − f_1^lin| with f_1^lin = f_0 − ηΘ̄_0(f_0 − y) (S.23). "
        "Markers: mean over the initialisations, bars: min–max; solid lines: least-squares power law M^−κ on all "
        "points above round-off (legend: κ and its 95 % confidence interval, Student t); grey: M^−1/2 (dotted) and M^−1 (dashed) "
        "guides. Values below 1e-10 are round-off (exactly 0 in exact arithmetic) and are named, not drawn. Last "
        f"panel: unit-wise L(θ_1)/L(θ_0) against ρ at M = {' and '.join(str(w) for w in config['damping_widths'])} "
        "(mean, min–max); the horizontal line is no change of the loss."
    )


def _check(config: dict) -> str | None:
    from ...fisher import fisher_names

    unknown = [f for f in config["fims"] if f not in fisher_names()]
    if unknown:
        return f"fims: unknown approximation {', '.join(unknown)}; choose from {', '.join(fisher_names())}"
    for key in ("widths", "damping_widths"):  # the claims read the first and last width as M_min → M_max
        if list(config[key]) != sorted(config[key]):
            return f"{key} must be increasing (the claims compare the smallest width with the largest)"
    return None


FIGURE = Figure(
    name=NAME,
    title="Extension: finite-width distance from the NGD theory after one step, against width",
    summary="extension: finite-width residual, isotropy, lazy gaps against M",
    claim="the finite-width deviations from the theory vanish as M → ∞ (the paper gives no rate)",
    config=config, cells=cells, analyse=analyse, draw=draw, caption=caption, check=_check,
    unread=(("network.width", "the sweep sets the width per cell: use --set widths=[…] (or damping_widths=[…])"),),
)
