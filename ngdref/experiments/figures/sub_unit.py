"""Extension (beyond Fig. 3): sub-unit block Fishers between entry-wise and unit-wise (issue 16, part 2).

Section 5 of the paper: "It would be interesting to explore any approximation satisfying the
isotropic condition that is larger than the entry-wise approximation but smaller than the unit-wise
one." The block-partition FIM (:mod:`ngdref.fisher.blockpartition`) cuts each unit's row
θ_i^{(l)} = [W_{i,:} | b_i] into groups of k incoming weights (bias last, the last group taking the
remainder; k = 1 entry-wise-like,
k = M_{l−1} + 1 unit-wise) and, the other way, merges g units into one block (g = 1 unit-wise,
g = M_l block-diagonal). On Fig. 3's setting (L = 3, ReLU, σ_w² = 2, σ_b² = 0.5, Gaussian inputs,
N = 80, M0 = 100, ρ = 1e-12) and on the bundled MNIST 0/7 subset (N = 80, M0 = 784) this sweeps
k (and g) × width and measures, per cell: cond(Θ̄(x, x)) and its mean diagonal (Eq. 11–12), the
training loss of NGD with η = 1/mean diagonal (Eq. 7, Corollary 4.2 with the measured α), and the
cost of one step — the FLOP model of the structured path and the measured seconds — beside
unit-wise NGD and K-FAC, each by its own structured code.

No claim is made in advance: the table states what the data show (where isotropy appears as a
function of k/N; whether a sub-unit FIM is cheaper than unit-wise).
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from ...errors import NgdrefError
from ..sweep import Cell, CellOutcome
from .analysis import claim, fmt, holds, mean, series_ratio, std
from .base import Figure, gaussian, mnist, net
from .cells import NUMBER, backend_of, dataset, finite, network, result_problem, with_backend
from .plotting import THETA_BAR, fim_title, quick_suffix, tex_number, width_axis

NAME = "sub-unit"

#: the data sets in words (titles, legends)
DATA_TITLES = {"gaussian": "Gaussian inputs", "mnist": "MNIST 0/7"}

#: cond(Θ̄) below this counts as isotropic in the claims (unit-wise at M = 1024 in Fig. 3: ≈ 1.3)
ISOTROPIC_COND = 1.5


def _variant(kind: str, value=None) -> dict:
    """One approximation of the sweep: ``sub`` (k, g = 1), ``group`` (k = all, g), or a reference FIM."""
    if kind == "sub":
        return {"id": f"k{value}", "fim": "block", "options": {"k": value, "g": 1}}
    if kind == "group":
        return {"id": f"g{value}", "fim": "block", "options": {"k": "all", "g": value}}
    return {"id": kind, "fim": kind, "options": {}}


def _label(v: dict, tex: bool = True) -> str:
    """A variant in words, the reference FIMs by their titles: k and g in mathtext for legends
    (``tex``), in plain text for the claims table."""
    if v["fim"] != "block":
        return fim_title(v["fim"])
    k, g = v["options"]["k"], v["options"]["g"]
    if tex:
        if g == 1:
            return "unit-wise (block, $k$ = all)" if k == "all" else f"sub-unit, $k = {k}$"
        return "block-diagonal (block, $g$ = all)" if g == "all" else f"unit groups, $g = {g}$"
    if g == 1:
        return "unit-wise (k=all)" if k == "all" else f"k={k}"
    return "block-diagonal (g=all)" if g == "all" else f"g={g}"


def config(quick: bool = False, data: str | None = None, seed: int = 0) -> dict:
    """Fig. 3's network and ρ; Gaussian inputs (N = 80, M0 = 100) and MNIST 0/7 (N = 80, M0 = 784).

    k = 1 … 160 (k/N = 1/80 … 2, ``ks``) with g = 1, whole rows with g = 1, 4, 16 (``gs``), all, and
    unit-wise NGD and K-FAC by their own code (:func:`variants`; ``ks`` and ``gs`` are settable).
    The full sweep keeps to ~15 min on one core: Gaussian M = 64 … 512 with two seeds and M = 1024
    for the variants around the isotropy threshold (one seed), MNIST (whose first layer has 785
    columns) M = 64 … 512 with one seed."""
    if quick:
        ks, gs, n = [1, 5, 10, 20], [4], 20
        sets = {"gaussian": {"data": gaussian(n, 30, seed), "widths": [16, 32], "seeds": [seed], "extra": []},
                "mnist": {"data": mnist(n, 0, seed), "widths": [16, 32], "seeds": [seed], "extra": []}}
        steps = 2
    else:
        ks, gs, n = [1, 8, 20, 40, 60, 80, 120, 160], [4, 16], 80
        near = ["k60", "k80", "k120", "kall", "unit", "kfac"]
        sets = {"gaussian": {"data": gaussian(n, 100, seed), "widths": [64, 128, 256, 512],
                             "seeds": [seed, seed + 1], "extra": [{"width": 1024, "variants": near}]},
                "mnist": {"data": mnist(n, 0, seed), "widths": [64, 128, 256, 512], "seeds": [seed], "extra": []}}
        steps = 3
    return {
        "figure": NAME, "quick": quick,
        "network": net(0, 3, sigma_b2=0.5),
        "ks": ks, "gs": gs,
        "damping": 1e-12,
        "datasets": sets,
        "steps": steps,
    }


def variants(config: dict) -> list[dict]:
    """The sweep's approximations: sub-unit k for each of ``ks`` (g = 1), whole rows (k = all, g = 1),
    unit groups g for each of ``gs`` (k = all), whole layers (g = all), unit-wise NGD and K-FAC."""
    return ([_variant("sub", k) for k in config["ks"]] + [_variant("sub", "all")]
            + [_variant("group", g) for g in config["gs"]] + [_variant("group", "all"), _variant("unit"),
                                                              _variant("kfac")])


def check(config: dict) -> str | None:
    """An overridden configuration's k/g grid: k ≥ 1 and g ≥ 2 integers (g = 1 is the whole-row
    variant, always swept), and every ``extra`` variant one of the sweep's."""
    for key, low in (("ks", 1), ("gs", 2)):
        bad = [v for v in config[key] if isinstance(v, bool) or not isinstance(v, int) or v < low]
        if bad:
            return f"{key} = {config[key]!r}: each must be an integer ≥ {low}" + (
                " (g = 1, whole rows, is always swept)" if key == "gs" else "")
    ids = {v["id"] for v in variants(config)}
    for name, d in config["datasets"].items():
        for e in d["extra"]:
            missing = [vid for vid in e["variants"] if vid not in ids]
            if missing:
                return (f"datasets.{name}.extra (M = {e['width']}) names {', '.join(missing)}, not in the sweep; "
                        f"add them to ks/gs (variants: {', '.join(sorted(ids))})")
    return None


def _widths(d: dict) -> list[int]:
    return sorted(set(d["widths"]) | {e["width"] for e in d["extra"]})


def cells(config: dict, backend: str = "numpy", dtype: str = "float64") -> list[Cell]:
    out = []
    for data_name, d in config["datasets"].items():
        plan = [(w, s, v) for w in d["widths"] for s in d["seeds"] for v in variants(config)]
        plan += [(e["width"], d["seeds"][0], v) for e in d["extra"] for v in variants(config)
                 if v["id"] in e["variants"]]
        for width, seed, v in plan:
            p = with_backend({"figure": NAME, "network": config["network"], "data": d["data"], "data_name": data_name,
                              "variant": v, "width": width, "seed": seed, "damping": config["damping"],
                              "steps": config["steps"]}, backend, dtype)
            out.append(Cell.make(NAME, subunit_cell, p, f"{data_name}-{v['id']}-M{width}-s{seed}"))
    return out


def subunit_cell(p: dict) -> dict:
    """cond(Θ̄(x, x)), its mean diagonal, NGD at η = 1/mean diagonal, and the cost of one step."""
    from ...backend import to_device, to_float
    from ...diagnostics import isotropy
    from ...fisher import fisher_class
    from ...fisher.cost import Shape
    from ...train import ngd_step

    ds = dataset(p["data"])
    net = network(p["network"], ds.input_dim, 1, width=p["width"])
    b = backend_of(p)
    v = p["variant"]
    cls = fisher_class(v["fim"])
    damping = cls.spec.applicable_damping(p["damping"])
    fim = cls(net, damping, **v["options"])
    params = net.init(p["seed"], b)
    x, y = to_device(ds.x_train, b), to_device(ds.y_train, b)
    n = ds.n_train
    t0 = time.perf_counter()
    s = net.signals(params, x)
    theta_bar = fim.coefficient(s)
    seconds_theta_bar = time.perf_counter() - t0
    iso = isotropy(theta_bar)
    alpha = iso["mean_diagonal"]
    eta = 1.0 / alpha
    xp = b.xp
    losses, step_seconds, status = [], [], "ok"
    for t in range(p["steps"] + 1):
        loss = to_float(xp.sum((s.f - y) ** 2)) / (2.0 * n)
        losses.append(finite(loss))
        if t == p["steps"] or finite(loss) is None:
            break
        t1 = time.perf_counter()
        try:
            params = ngd_step(fim, params, s, (s.f - y).T, eta)
        except (NgdrefError, np.linalg.LinAlgError) as err:  # K-FAC's damped factor at ρ = 1e-12 with M_l < N
            status = f"step {t + 1} failed: {type(err).__name__}: {err}"
            break
        step_seconds.append(time.perf_counter() - t1)
        s = net.signals(params, x)
    flops = fim.flops(Shape.of(net, n), damping)  # the block partition's own k, g
    return {
        "condition_number": finite(iso["condition_number"]), "lambda_min": finite(iso["lambda_min"]),
        "lambda_max": finite(iso["lambda_max"]), "mean_diagonal": finite(alpha),
        "alpha_analytic": finite(fim.analytic_alpha(n)), "lr": finite(eta), "train_loss": losses,
        "seconds_theta_bar": seconds_theta_bar,
        "seconds_step": statistics.median(step_seconds) if step_seconds else None,
        "flops_step": float(flops["direction"][0]), "flops_theta_bar": float(flops["coefficient"][0]),
        "n_params": net.n_params, "train_status": status,
    }


def _check_cell(r: dict, p: dict) -> str | None:
    keys = ("condition_number", "lambda_min", "lambda_max", "mean_diagonal", "alpha_analytic", "lr",
            "seconds_theta_bar", "seconds_step", "flops_step", "flops_theta_bar")
    problem = result_problem(r, {**{k: NUMBER for k in keys}, "train_loss": list, "n_params": int,
                                 "train_status": str})
    if problem:
        return problem
    if not r["train_loss"] or not all(v is None or isinstance(v, (int, float)) for v in r["train_loss"]):
        return "'train_loss' is not a list of numbers"
    return None


subunit_cell.check_result = _check_cell
subunit_cell.param_arrays = 2  # it trains: θ_0 and θ_t at least (a lower bound: cells.cell_memory, train_cell)


# ---- analysis -------------------------------------------------------------------------------------
def _k_value(v: dict):
    """k of a sub-unit variant (g = 1, numeric k), else None."""
    k = v["options"].get("k") if v["fim"] == "block" else None
    return k if isinstance(k, int) and v["options"].get("g") == 1 else None


def _option_text(v: dict, name: str) -> str | None:
    """A block variant's k or g as ``--option`` writes it ("1", "20", "all"): one type (str) per column,
    None for an approximation without it (unit-wise, K-FAC)."""
    value = v["options"].get(name)
    return None if value is None else str(value)


def analyse(config: dict, outcomes: list[CellOutcome]) -> tuple[list, list, dict]:
    rows = []
    for o in outcomes:
        p, r = o.params, o.result
        v = p["variant"]
        rows.append({
            "data": p["data_name"], "variant": v["id"], "approximation": _label(v), "k": _option_text(v, "k"),
            "g": _option_text(v, "g"), "width": p["width"], "seed": p["seed"],
            "condition_number": r["condition_number"], "lambda_min": r["lambda_min"], "lambda_max": r["lambda_max"],
            "mean_diagonal": r["mean_diagonal"], "alpha_analytic": r["alpha_analytic"], "lr": r["lr"],
            "loss_1_over_0": series_ratio(r["train_loss"], 1),
            "loss_last_over_0": series_ratio(r["train_loss"], config["steps"]),
            "train_loss": " ".join("nan" if x is None else f"{x:.6g}" for x in r["train_loss"]),
            "train_status": r["train_status"],
            "seconds_step": r["seconds_step"], "seconds_theta_bar": r["seconds_theta_bar"],
            "flops_step": r["flops_step"], "flops_theta_bar": r["flops_theta_bar"], "n_params": r["n_params"],
        })
    stats: dict = {}
    for data_name, d in config["datasets"].items():
        stats[data_name] = {}
        for v in variants(config):
            per_width = {}
            for w in _widths(d):
                rs = [r for r in rows if r["data"] == data_name and r["variant"] == v["id"] and r["width"] == w]
                if not rs:
                    continue
                first = min(rs, key=lambda r: r["seed"])
                curve = next(o.result["train_loss"] for o in outcomes if o.params["data_name"] == data_name
                             and o.params["variant"]["id"] == v["id"] and o.params["width"] == w
                             and o.params["seed"] == first["seed"])
                per_width[w] = {
                    "cond_mean": mean(r["condition_number"] for r in rs), "cond_std": std(r["condition_number"] for r in rs),
                    "mean_diagonal": mean(r["mean_diagonal"] for r in rs), "alpha_analytic": first["alpha_analytic"],
                    "seconds_step": mean(r["seconds_step"] for r in rs), "flops_step": first["flops_step"],
                    "loss_curve": curve, "loss_1_over_0": first["loss_1_over_0"], "seeds": len(rs),
                }
            stats[data_name][v["id"]] = per_width
    claims = _claims(config, stats)
    return rows, claims, {"stats": stats, "labels": {v["id"]: _label(v) for v in variants(config)},
                          "isotropic_cond": ISOTROPIC_COND}


def _at(stats, data_name, vid, w, key):
    return stats[data_name].get(vid, {}).get(w, {}).get(key)


def _claims(config: dict, stats: dict) -> list:
    claims = []
    vs = variants(config)
    subs = [v for v in vs if _k_value(v) is not None]
    for data_name, d in config["datasets"].items():
        n = d["data"]["n_train"]
        wmax = max(d["widths"])
        wtop = _widths(d)[-1]
        conds = {v["id"]: _at(stats, data_name, v["id"], wmax, "cond_mean") for v in subs}
        found = [v for v in subs if holds(conds[v["id"]], lambda c: c < ISOTROPIC_COND)]
        listing = ", ".join(f"k={_k_value(v)}: {fmt(conds[v['id']], '.3g')}" for v in subs)
        unit = _at(stats, data_name, "kall", wmax, "cond_mean")
        claims.append(claim(
            f"{data_name}, M = {wmax}: smallest sub-unit k (< M_(l-1)+1) with cond(Θ̄) < {ISOTROPIC_COND}",
            (f"k = {_k_value(found[0])} (k/N = {_k_value(found[0]) / n:.3g})" if found else "none")
            + f"; cond {listing}; whole rows (unit-wise) {fmt(unit, '.3g')}",
            "Section 5 asks for an isotropic FIM between entry-wise and unit-wise",
            holds(list(conds.values()), lambda c: any(x < ISOTROPIC_COND for x in c)),
            {v["id"]: conds[v["id"]] for v in subs}))
        trend = [v for v in subs if _at(stats, data_name, v["id"], wtop, "cond_mean") is not None
                 and _at(stats, data_name, v["id"], min(d["widths"]), "cond_mean") is not None]
        if trend:
            w0 = min(d["widths"])
            txt = ", ".join(f"k={_k_value(v)}: {fmt(_at(stats, data_name, v['id'], w0, 'cond_mean'), '.3g')} → "
                            f"{fmt(_at(stats, data_name, v['id'], wtop, 'cond_mean'), '.3g')}" for v in trend)
            claims.append(claim(f"{data_name}: sub-unit cond(Θ̄), M = {w0} → {wtop}", txt,
                                "no claim in the paper (extension): does isotropy appear with width?", None,
                                None))
        groups = [v for v in vs if v["fim"] == "block" and v["options"]["k"] == "all"]
        gc = [_at(stats, data_name, v["id"], wmax, "cond_mean") for v in groups]
        claims.append(claim(
            f"{data_name}, M = {wmax}: whole-row blocks of g units, cond(Θ̄)",
            ", ".join(f"g={v['options']['g']}: {fmt(c, '.4g')}" for v, c in zip(groups, gc)),
            "g = 1 unit-wise (Eq. 23), g = M_l block-diagonal (Section 4.1): isotropic",
            holds(gc, lambda c: max(c) < ISOTROPIC_COND), gc))
        dev = [None if _at(stats, data_name, v["id"], wmax, "alpha_analytic") is None else
               abs(_at(stats, data_name, v["id"], wmax, "mean_diagonal")
                   / _at(stats, data_name, v["id"], wmax, "alpha_analytic") - 1.0)
               if _at(stats, data_name, v["id"], wmax, "mean_diagonal") is not None else None for v in groups]
        claims.append(claim(
            f"{data_name}, M = {wmax}: whole-row blocks, mean diagonal vs α = Σ_l Σ_groups (1−(1−γ_l)^g) + 1",
            f"max |measured/α − 1| = {fmt(max(dev) if all(x is not None for x in dev) else None, '.3g')}",
            "extension of S.128 (g = 1) and Section 4.1 (g = M_l, α = L)",
            holds(dev, lambda x: max(x) < 0.05), dev))
        losses = {v["id"]: _at(stats, data_name, v["id"], wmax, "loss_1_over_0") for v in vs}
        claims.append(claim(
            f"{data_name}, M = {wmax}: NGD at η = 1/mean diagonal, loss after 1 step / initial",
            ", ".join(f"{_label(v, tex=False)}: {fmt(losses[v['id']], '.3g')}" for v in vs),
            "η = c/α converges for 0 < c < 2 only when Θ̄ ≈ αI (Corollary 4.2)", None, losses))
        best = found[0]["id"] if found else None
        names = {v["id"]: _label(v, tex=False) for v in vs}
        secs = {vid: _at(stats, data_name, vid, wmax, "seconds_step") for vid in ("unit", "kfac", "kall", best) if vid}
        flops = {vid: _at(stats, data_name, vid, wmax, "flops_step") for vid in secs}
        cheaper = (holds([secs[best], secs["unit"], flops[best], flops["unit"]],
                         lambda x: x[0] < x[1] and x[2] < x[3]) if best else False)
        claims.append(claim(
            f"{data_name}, M = {wmax}: cost of one step (FLOP model; measured s)",
            "; ".join(f"{names[vid]}: {fmt(flops[vid], '.3g')} FLOP, {fmt(secs[vid], '.3g')} s" for vid in secs)
            + ("" if best else "; no isotropic sub-unit FIM to compare"),
            "the paper's wish: an isotropic FIM cheaper than unit-wise", cheaper, {"seconds": secs, "flops": flops}))
    return claims


# ---- plot ----------------------------------------------------------------------------------------
#: the fixed variants' styles by variant id: unit-wise (whole rows) black; the reference FIMs by their
#: own code grey (unit-wise: hollow diamonds); the k and g families are coloured by :func:`_style`
STYLES = {
    "kall": {"color": "k", "ls": "-", "marker": "o"},
    "unit": {"color": "k", "ls": "none", "marker": "D", "mfc": "none", "ms": 9},
    "kfac": {"color": "0.5", "ls": ":", "marker": "v"},
}


def _style(v: dict, vs: list, plt) -> dict:
    """:data:`STYLES` for the fixed variants; sub-unit k: viridis from small to large k, solid,
    circles; unit groups g: reds, dashed, squares."""
    if v["id"] in STYLES:
        return dict(STYLES[v["id"]])
    if _k_value(v) is not None:
        subs = [x for x in vs if _k_value(x) is not None]
        i = [x["id"] for x in subs].index(v["id"])
        return {"color": plt.get_cmap("viridis")(0.9 * i / max(1, len(subs) - 1)), "ls": "-", "marker": "o"}
    groups = [x for x in vs if x["fim"] == "block" and x["options"]["g"] != 1]
    i = [x["id"] for x in groups].index(v["id"])
    return {"color": plt.get_cmap("autumn")(0.75 * i / max(1, len(groups) - 1)), "ls": "--", "marker": "s"}


def _title(name: str) -> str:
    return DATA_TITLES.get(name, name)


def _headroom(ax, fraction: float) -> None:
    """Log y-limits that keep every line's positive values in the lower ``fraction`` of ``ax`` (axhlines
    included), leaving the top free for a legend."""
    ys = np.concatenate([np.asarray(line.get_ydata(), float) for line in ax.get_lines()] or [np.ones(1)])
    ys = ys[np.isfinite(ys) & (ys > 0)]
    if not ys.size:
        return
    lo, hi = float(ys.min()), float(ys.max())
    total = max(np.log(hi / lo), np.log(10.0)) / fraction
    bottom = lo * float(np.exp(-0.05 * total))
    ax.set_ylim(bottom, bottom * float(np.exp(total)))


def draw(plt, config: dict, rows: list[dict], extra: dict):
    st, vs = extra["stats"], variants(config)
    names = list(config["datasets"])
    first, second = names[0], names[-1]
    fig = plt.figure(figsize=(15, 11))
    grid = fig.add_gridspec(3, 3, height_ratios=[1.0, 1.0, 0.14])
    (a_cond, a_k, a_diag), (a_l1, a_l2, a_cost) = [[fig.add_subplot(grid[i, j]) for j in range(3)] for i in range(2)]
    a_legend = fig.add_subplot(grid[2, :])  # the shared legend of (a), (d), (e), in its own row: it covers no data
    a_legend.axis("off")
    handles = {}

    # (a) cond(Θ̄) against width on the first data set (Fig. 3's setting)
    d = config["datasets"][first]
    for v in vs:
        ws = [w for w in _widths(d) if _at(st, first, v["id"], w, "cond_mean") is not None]
        if not ws:
            continue
        (h,) = a_cond.plot(ws, [_at(st, first, v["id"], w, "cond_mean") for w in ws], label=_label(v),
                           **{"ms": 5, **_style(v, vs, plt)})
        handles[_label(v)] = h
    width_axis(a_cond, _widths(d))
    a_cond.set_yscale("log")
    a_cond.axhline(extra["isotropic_cond"], color="0.6", lw=0.8, ls="-.")
    a_cond.set_ylabel(f"cond {THETA_BAR}$(x, x)$")
    a_cond.set_title(f"(a) {_title(first)}: condition number against width", fontsize=10)

    # (b), (c) cond and mean diagonal against k/N at the largest width with every variant
    subs = [v for v in vs if _k_value(v) is not None]
    for name, marker in ((first, "o"), (second, "s")):
        d = config["datasets"][name]
        n, w = d["data"]["n_train"], max(d["widths"])
        for ax, key in ((a_k, "cond_mean"), (a_diag, "mean_diagonal")):
            ks = [v for v in subs if _at(st, name, v["id"], w, key) is not None]
            ax.plot([_k_value(v) / n for v in ks], [_at(st, name, v["id"], w, key) for v in ks], marker=marker,
                    ls="-", color="C0" if name == first else "C1", label=f"sub-unit, {_title(name)}, $M = {w}$")
            ref = _at(st, name, "kall", w, key)
            if ref is not None:
                ax.axhline(ref, color="C0" if name == first else "C1", ls="--", lw=1.0,
                           label=f"unit-wise (whole rows), {_title(name)}")
    for ax, what in ((a_k, f"cond {THETA_BAR}$(x, x)$"), (a_diag, f"mean diagonal of {THETA_BAR}$(x, x)$")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("$k / N$ (incoming weights per block / samples)")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper right" if ax is a_k else "lower left")
    a_k.axhline(extra["isotropic_cond"], color="0.6", lw=0.8, ls="-.")
    a_k.set_title("(b) condition number against $k/N$ ($g = 1$)", fontsize=10)
    a_diag.set_title("(c) mean diagonal ($\\eta$ = 1/mean diagonal) against $k/N$", fontsize=10)

    # (d), (e) training loss at the largest width with every variant, η = 1/mean diagonal
    for ax, name, tag in ((a_l1, first, "(d)"), (a_l2, second, "(e)")):
        d = config["datasets"][name]
        w = max(d["widths"])
        for v in vs:
            curve = _at(st, name, v["id"], w, "loss_curve")
            if not curve:
                continue
            pts = [(t, x) for t, x in enumerate(curve) if x is not None and x > 0]
            if pts:
                style = {"ms": 5, **_style(v, vs, plt)}
                style["ls"] = style["ls"] if style["ls"] != "none" else ":"
                ax.semilogy([t for t, _ in pts], [x for _, x in pts], label=_label(v), **style)
        ax.set_xlabel("step $t$")
        ax.set_ylabel("training loss")
        ax.set_xticks(range(config["steps"] + 1))
        ax.set_title(f"{tag} {_title(name)}, $M = {w}$: NGD with $\\eta$ = 1/mean diagonal", fontsize=10)
        ax.grid(True, which="major", alpha=0.3)

    # (f) cost of one step relative to unit-wise NGD (its own code)
    for name, marker in ((first, "o"), (second, "s")):
        d = config["datasets"][name]
        n, w = d["data"]["n_train"], max(d["widths"])
        unit_f, unit_s = _at(st, name, "unit", w, "flops_step"), _at(st, name, "unit", w, "seconds_step")
        ks = [v for v in subs if _at(st, name, v["id"], w, "flops_step") is not None]
        col = "C0" if name == first else "C1"
        if unit_f:
            a_cost.plot([_k_value(v) / n for v in ks], [_at(st, name, v["id"], w, "flops_step") / unit_f for v in ks],
                        marker=marker, ls="-", color=col, label=f"FLOP model, {_title(name)}")
        if unit_s:
            a_cost.plot([_k_value(v) / n for v in ks],
                        [(_at(st, name, v["id"], w, "seconds_step") or float("nan")) / unit_s for v in ks],
                        marker=marker, ls=":", mfc="none", color=col, label=f"measured seconds, {_title(name)}")
            kf = _at(st, name, "kfac", w, "seconds_step")
            if kf:
                a_cost.axhline(kf / unit_s, color=col, ls="-.", lw=0.9, label=f"K-FAC (seconds), {_title(name)}")
    a_cost.axhline(1.0, color="k", lw=1.0, label="unit-wise (its own code) = 1")
    a_cost.set_xscale("log")
    a_cost.set_yscale("log")
    a_cost.set_xlabel("$k / N$")
    a_cost.set_ylabel("cost of one step / unit-wise")
    a_cost.grid(True, which="both", alpha=0.3)
    _headroom(a_cost, 0.6)  # the legend's seven entries sit above the data (measured seconds vary by run)
    a_cost.legend(fontsize=7, loc="upper left")
    a_cost.set_title("(f) cost per step relative to unit-wise ($g = 1$)", fontsize=10)
    for ax in (a_cond,):
        ax.grid(True, which="both", alpha=0.3)

    a_legend.legend(list(handles.values()), list(handles.keys()), loc="center", ncol=7, fontsize=8, frameon=False,
                    title="legend of (a), (d), (e)", title_fontsize=8)
    net_ = config["network"]
    dd = config["datasets"][first]["data"]
    fig.suptitle(f"Extension: sub-unit block Fishers{quick_suffix(config)} — ReLU, $L = {net_['depth']}$, "
                 f"$\\sigma_b^2 = {net_['sigma_b2']:g}$, $N = {dd['n_train']}$, "
                 f"$\\rho = {tex_number(config['damping'])}$; blocks of $k$ incoming weights (bias last) of one unit, "
                 "or of $g$ whole units", fontsize=11)
    fig.tight_layout()
    return fig


def caption(config: dict, rows: list[dict], extra: dict) -> str:
    n = config["network"]
    sets = "; ".join(
        f"{_title(name)} (N = {d['data']['n_train']}, widths {', '.join(str(w) for w in _widths(d))}, "
        f"{len(d['seeds'])} initialisation(s)"
        + (", " + "; ".join(f"M = {e['width']} for {len(e['variants'])} variants, one initialisation"
                            for e in d["extra"]) if d["extra"] else "") + ")"
        for name, d in config["datasets"].items())
    return (
        "Extension (not a figure of the paper): block-partition Fishers G = ⊕_B (J_BᵀJ_B/N + ρI) whose blocks B are "
        "k consecutive incoming weights of one unit's row [W_i | b_i] (bias last; 'sub-unit', g = 1) or g whole "
        "units (k = all; g = 1 is unit-wise, Eq. 23, g = all block-diagonal, Section 4.1), beside unit-wise NGD and "
        f"K-FAC by their own code. {n['activation']}, L = {n['depth']}, σ_w² = {n['sigma_w2']:g}, "
        f"σ_b² = {n['sigma_b2']:g}, ρ = {config['damping']:g}; {sets}. (a) cond Θ̄(x, x) (Eq. 11) against the "
        "width, mean over the initialisations (where k > fan_l/2 a row is one group and the curve is unit-wise's); "
        "the dash-dotted line is cond = "
        f"{ISOTROPIC_COND:g}, the level the claims call isotropic. (b) cond Θ̄ and (c) its mean diagonal against "
        "k/N at the largest width of each data set, dashed: whole rows (unit-wise). (d), (e) training loss of NGD "
        f"(Eq. 7) with η = 1/mean diagonal for {config['steps']} steps, first initialisation; a curve that stops "
        "went non-finite or its step failed (K-FAC's damped factor inverse at ρ = 1e-12 when M_l < N). (f) cost of one step relative to unit-wise NGD: the FLOP model of the structured path "
        "(spec.flops) and the measured seconds (one core); dash-dotted: K-FAC's measured seconds."
    )


FIGURE = Figure(
    name=NAME,
    title="Extension: sub-unit block Fishers between entry-wise and unit-wise (Section 5's open question)",
    summary="extension: block-partition Fishers between entry- and unit-wise",
    claim="(extension, no claim in advance) where a block-partition Fisher smaller than unit-wise is isotropic, "
          "and at what cost",
    config=config, cells=cells, analyse=analyse, draw=draw, caption=caption, check=check,
    unread=(("network.width", "the sweep sets the width per cell: use --set datasets.gaussian.widths=[…] "
                              "or datasets.mnist.widths=[…]"),),
)
