"""Extension (beyond Fig. 2's K-FAC, Section 4.3): the structure of K-FAC's Θ̄ with C > 1 outputs.

Section 4.3 derives K-FAC's isotropy Θ̄ = αI (α = NL, S.107) for one output and leaves C > 1
"for future research". ngdref's K-FAC is the natural generalisation (:mod:`ngdref.fisher.kfac`:
B*_l = δ_lᵀδ_l/N with δ_l stacked over the C outputs, B*_L = I_C/N), so Θ̄ = J G⁻¹ Jᵀ/N (Eq. 11)
is a CN × CN matrix of C × C blocks of N × N, output-major (row k·N + n). Per number of classes
C (MNIST digits 0 … C−1, one-hot targets, N = 100), variant (no bias; bias folded into the
Kronecker factor or in separate FIM blocks, S.123; M0 < N inputs with and without the Forster
transform, S.110–S.111, on Gaussian inputs since MNIST's 784 pixels exceed N), width and seed it
measures (:func:`block_structure`)

* ``iso_dev``         ‖Θ̄/ᾱ − I‖₂ with ᾱ the mean diagonal (isotropic: 0), and cond(Θ̄);
* ``off_block``       ‖Θ̄ − blockdiag(Θ̄)‖_F / ‖Θ̄‖_F, the weight of the cross-output blocks;
* ``block_dev``       max_k ‖Θ̄_kk/α_k − I‖₂ over the diagonal blocks (α_k: block k's mean diagonal);
* ``alpha_spread``    (max_k α_k − min_k α_k)/ᾱ, whether the blocks share one α;

and classifies Θ̄ as ``isotropic`` (iso_dev ≤ tol), ``block-isotropic`` (off_block ≤ tol and
block_dev ≤ tol, α_k differing) or ``neither``. Then NGD (Eq. 7, MSE) for a few steps with
η = 1/λ_max(Θ̄) and with η = 1/ᾱ, beside Eq. 10 with this Θ̄.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ...diagnostics import isotropy
from ..sweep import Cell, CellOutcome
from .analysis import claim, fmt, holds, series_ratio, worst
from .base import Figure, gaussian, mnist, net
from .cells import NUMBER, backend_of, dataset, finite, network, result_problem, with_backend
from .plotting import THETA_BAR, fim_title, integer_steps, quick_suffix

NAME = "kfac-multi-output"

#: the K-FAC variants: bias handling (S.123) and inputs with M0 < N, raw or Forster-transformed (S.110–S.111)
VARIANTS = {
    "no bias": {"inputs": "mnist", "sigma_b2": 0.0, "bias": "separate", "forster": False},
    "bias folded": {"inputs": "mnist", "sigma_b2": 0.5, "bias": "folded", "forster": False},
    "bias separate": {"inputs": "mnist", "sigma_b2": 0.5, "bias": "separate", "forster": False},
    "M0 < N": {"inputs": "gaussian", "sigma_b2": 0.0, "bias": "separate", "forster": False},
    "M0 < N, Forster": {"inputs": "gaussian", "sigma_b2": 0.0, "bias": "separate", "forster": True},
}

RULES = ("lambda_max", "mean_diag")  # η = 1/λ_max(Θ̄), η = 1/ᾱ
RULE_TEX = {"lambda_max": r"$\eta = 1/\lambda_{\max}(\bar{\Theta})$", "mean_diag": r"$\eta = 1/\bar{\alpha}$"}


def config(quick: bool = False, data: str | None = None, seed: int = 0) -> dict:
    n = 20 if quick else 100
    return {
        "figure": NAME, "quick": quick,
        "network": net(0, 3),
        "classes": [2, 3] if quick else [2, 5, 10],
        "n_train": n,
        "mnist": mnist(n, 0, seed, classes=(0, 1)),  # classes replaced per C: digits 0 … C−1
        "gaussian_m0": n // 2,  # M0 < N for the Forster pair
        "variants": list(VARIANTS),
        # widths around CN = 200, 500, 1000 (the hidden-layer K-FAC factor B_l = δ_lδ_lᵀ is CN × CN, rank ≤ M)
        "widths": [16, 64] if quick else [128, 512, 2048],
        # one seed: a C = 10 cell (CN = 1000) takes ~1–2 min on a loaded 2-core machine (eigh of CN × CN per
        # layer and step); the structure found is exact (round-off) or far from it, not a seed effect
        "seeds": [seed],
        "damping": 0.0,  # K-FAC's default: the pseudo-inverse (zero-damping limit)
        "steps": 3 if quick else 4,
        "tolerance": 0.05,
    }


def _data(config: dict, variant: str, c: int) -> dict:
    if VARIANTS[variant]["inputs"] == "gaussian":
        return {**gaussian(config["n_train"], config["gaussian_m0"], config["mnist"]["seed"]), "classes": list(range(c))}
    return {**config["mnist"], "n_train": config["n_train"], "classes": list(range(c))}  # one N for both inputs


def cells(config: dict, backend: str = "numpy", dtype: str = "float64") -> list[Cell]:
    out = []
    for c in config["classes"]:
        for variant in config["variants"]:
            v = VARIANTS[variant]
            for width in config["widths"]:
                for seed in config["seeds"]:
                    p = with_backend({"figure": NAME, "network": {**config["network"], "sigma_b2": v["sigma_b2"]},
                                      "data": _data(config, variant, c), "n_outputs": c, "variant": variant,
                                      "bias": v["bias"], "forster": v["forster"], "width": width, "seed": seed,
                                      "damping": config["damping"], "steps": config["steps"],
                                      "tolerance": config["tolerance"]}, backend, dtype)
                    out.append(Cell.make(NAME, kfac_multi_output_cell, p,
                                         f"C{c}-{variant.replace(' ', '').replace(',', '-')}-M{width}-s{seed}"))
    return out


# ---- the measure of structure -----------------------------------------------------------------


def block_structure(theta_bar, c: int, tol: float = 0.05) -> dict:
    """How close Θ̄ (CN × CN, output-major: block (k, k′) = rows kN…, columns k′N…) is to αI
    (isotropic) or to blockdiag(α_1 I, …, α_C I) (block-isotropic); see the module docstring."""
    m = np.asarray(theta_bar, dtype=np.float64)
    m = (m + m.T) / 2.0
    cn = m.shape[0]
    if cn % c:
        raise ValueError(f"a {cn} × {cn} Θ̄ has no {c} output blocks")
    n = cn // c
    whole = isotropy(m)  # λ's, mean diagonal ᾱ, max|λ/ᾱ − 1| (ngdref.diagnostics)
    alpha, iso_dev = whole["mean_diagonal"], whole["deviation_from_alpha_I"]
    blocks = m.reshape(c, n, c, n)
    per_block = [isotropy(blocks[k, :, k, :]) for k in range(c)]
    off = m.copy()
    for k in range(c):
        off[k * n:(k + 1) * n, k * n:(k + 1) * n] = 0.0
    alphas = [b["mean_diagonal"] for b in per_block]
    block_dev = max(b["deviation_from_alpha_I"] for b in per_block)
    off_block = float(np.linalg.norm(off) / np.linalg.norm(m))
    spread = (max(alphas) - min(alphas)) / alpha if alpha != 0 else math.inf
    if iso_dev <= tol:
        structure = "isotropic"
    elif off_block <= tol and block_dev <= tol:
        structure = "block-isotropic"
    else:
        structure = "neither"
    return {"alpha": alpha, "lambda_min": whole["lambda_min"], "lambda_max": whole["lambda_max"],
            "condition_number": whole["condition_number"],
            "iso_dev": iso_dev, "off_block": off_block, "block_dev": block_dev, "alpha_spread": spread,
            "block_alphas": alphas, "structure": structure}


def _one_hot_dataset(ds, c: int):
    """``ds`` with one-hot targets in C = ``c`` outputs (the bundled loader gives two classes one ±½ output)."""
    import dataclasses

    from ...train import one_hot

    assert len(ds.classes) == c, (ds.classes, c)
    return dataclasses.replace(ds, y_train=one_hot(ds.labels_train, ds.classes),
                               y_test=one_hot(ds.labels_test, ds.classes))


def kfac_multi_output_cell(p: dict) -> dict:
    """Θ̄ of K-FAC with C outputs at initialisation, its block structure, and a few NGD steps with η from it."""
    from ...backend import to_device, to_host
    from ...fisher import get_fisher
    from ...train import TrainConfig, train

    t0 = time.perf_counter()
    c = p["n_outputs"]
    ds = _one_hot_dataset(dataset(p["data"]), c)
    if p["forster"]:
        from ..transforms import forster_dataset

        ds = forster_dataset(ds)
    net = network(p["network"], ds.input_dim, c, width=p["width"])
    be = backend_of(p)
    options = {"bias": p["bias"], "forster": p["forster"]}
    fim = get_fisher("kfac", net, p["damping"], **options)
    params0 = net.init(p["seed"], be)
    s0 = net.signals(params0, to_device(ds.x_train, be))
    tb = np.asarray(to_host(fim.coefficient(s0)), dtype=np.float64)
    st = block_structure(tb, c, p["tolerance"])
    out = {k: (finite(v) if isinstance(v, float) else v) for k, v in st.items()}
    out["block_alphas"] = [finite(a) for a in st["block_alphas"]]
    out["alpha_over_nl"] = finite(st["alpha"] / (ds.n_train * net.depth))
    train_out = {}
    for rule in RULES:
        ref = st["lambda_max"] if rule == "lambda_max" else st["alpha"]
        if not (math.isfinite(ref) and ref > 0):
            train_out[rule] = {"status": "refused", "lr": None, "train_loss": [], "theory_train_loss": []}
            continue
        cfg = TrainConfig(fim="kfac", steps=p["steps"], lr=1.0 / ref, damping=p["damping"], fim_options=options)
        res = train(net, ds, cfg, be, p["seed"])
        train_out[rule] = {"status": res.status, "lr": finite(1.0 / ref),
                           "train_loss": [finite(r["train_loss"]) for r in res.records],
                           "theory_train_loss": [finite(r.get("theory_train_loss")) for r in res.records]}
    out["training"] = train_out
    out["seconds"] = finite(time.perf_counter() - t0)
    return out


RESULT_KEYS = ("alpha", "lambda_min", "lambda_max", "condition_number", "iso_dev", "off_block", "block_dev",
               "alpha_spread", "alpha_over_nl", "seconds")


def _check_result(r: dict, p: dict) -> str | None:
    problem = result_problem(r, {**{k: NUMBER for k in RESULT_KEYS}, "structure": str, "block_alphas": list,
                                 "training": dict})
    if problem:
        return problem
    for rule in RULES:
        t = r["training"].get(rule)
        problem = result_problem(t, {"status": str, "lr": NUMBER, "train_loss": list, "theory_train_loss": list},
                                 f"training {rule} ")
        if problem:
            return problem
    return None


kfac_multi_output_cell.check_result = _check_result
kfac_multi_output_cell.param_arrays = 2  # it trains: θ_0 and θ_t at least (a lower bound: cells.cell_memory, train_cell)


# ---- analysis ---------------------------------------------------------------------------------


def analyse(config: dict, outcomes: list[CellOutcome]) -> tuple[list, list, dict]:
    rows = []
    steps = config["steps"]
    for o in outcomes:
        p, r = o.params, o.result
        row = {"classes": p["n_outputs"], "variant": p["variant"], "width": p["width"], "seed": p["seed"],
               "cn": p["n_outputs"] * p["data"]["n_train"], **{k: r[k] for k in RESULT_KEYS},
               "structure": r["structure"]}
        for rule in RULES:
            t = r["training"][rule]
            row[f"lr_{rule}"] = t["lr"]
            row[f"loss1_ratio_{rule}"] = series_ratio(t["train_loss"], 1)
            row[f"loss{steps}_ratio_{rule}"] = series_ratio(t["train_loss"], steps)
            row[f"last_ratio_{rule}"] = series_ratio(t["train_loss"], len(t["train_loss"]) - 1)
            row[f"status_{rule}"] = t["status"]
        rows.append(row)
    tol = config["tolerance"]
    claims = []
    # where is Θ̄ isotropic? against M / (CN)
    table: dict = {}
    for variant in config["variants"]:
        table[variant] = {}
        for c in config["classes"]:
            table[variant][c] = {}
            for w in config["widths"]:
                rs = [r for r in rows if r["variant"] == variant and r["classes"] == c and r["width"] == w]
                kinds = sorted({r["structure"] for r in rs})
                table[variant][c][w] = {
                    "structure": kinds[0] if len(kinds) == 1 else "/".join(kinds),
                    **{k: worst([r[k] for r in rs]) for k in ("iso_dev", "off_block", "block_dev", "alpha_spread",
                                                             "condition_number", "alpha_over_nl")},
                    **{f"last_ratio_{rule}": worst([r[f"last_ratio_{rule}"] for r in rs]) for rule in RULES},
                    **{f"status_{rule}": "/".join(sorted({r[f"status_{rule}"] for r in rs})) for rule in RULES}}
    n = config["n_train"]
    for variant in config["variants"]:
        iso_pairs = [(c, w) for c in config["classes"] for w in config["widths"]
                     if table[variant][c][w]["structure"] == "isotropic"]
        ge = [(c, w) for c in config["classes"] for w in config["widths"] if w >= c * n]
        vals = [table[variant][c][w]["iso_dev"] for c in config["classes"] for w in config["widths"]]
        parts = []
        for c in config["classes"]:
            parts.append(f"C={c}: " + ", ".join(f"M={w} {table[variant][c][w]['structure']} "
                                                f"({fmt(table[variant][c][w]['iso_dev'], '.2g')})"
                                                for w in config["widths"]))
        claims.append(claim(
            f"{variant}: structure of Θ̄ (‖Θ̄/ᾱ − I‖₂, max over seeds); isotropic exactly where M ≥ CN?",
            "; ".join(parts), "Section 4.3: C > 1 left open (C = 1: α = NL, S.107)",
            holds(vals, lambda v: True) and sorted(iso_pairs) == sorted(ge),
            {"isotropic": iso_pairs, "m_ge_cn": ge}))
    big = config["widths"][-1]
    for c in config["classes"]:
        parts, faster = [], []
        for variant in config["variants"]:
            e = table[variant][c][big]
            a, b = (_outcome(e, rule) for rule in RULES)
            parts.append(f"{variant}: 1/λmax {a[0]}, 1/ᾱ {b[0]}")
            faster.append(None if a[1] is None or b[1] is None else a[1] <= b[1])
        claims.append(claim(
            f"C={c}, M={big}: loss after {steps} steps / initial (worst seed), η = 1/λ_max(Θ̄) vs η = 1/ᾱ; "
            "faster with 1/λ_max?",
            "; ".join(parts), "no rule given for C > 1 (C = 1 isotropic: η = 1/α converges in one step)",
            None, {"faster_with_lambda_max": faster}))
    curves = {}
    for o in outcomes:
        p = o.params
        if p["width"] == big and p["seed"] == config["seeds"][0]:
            curves.setdefault(str(p["n_outputs"]), {})[p["variant"]] = o.result["training"]
    summary = {"table": {v: {str(c): {str(w): e for w, e in d.items()} for c, d in t.items()}
                         for v, t in table.items()},
               "curves_at_largest_width": curves, "tolerance": tol}
    return rows, claims, summary


def _outcome(entry: dict, rule: str) -> tuple[str, float | None]:
    """A run in words (its last loss over the initial one, or where it diverged) and a value that orders runs."""
    last, status = entry[f"last_ratio_{rule}"], entry[f"status_{rule}"]
    if status == "ok":
        return fmt(last), last
    return f"{status} (×{fmt(last)})", math.inf


# ---- plot -------------------------------------------------------------------------------------

VARIANT_COLOR = {"no bias": "C0", "bias folded": "C1", "bias separate": "C3", "M0 < N": "C2", "M0 < N, Forster": "C4"}
CLASS_MARKER = {2: "o", 3: "s", 5: "s", 10: "^"}
FLOOR = 1e-16  # an exact 0 (round-off) on a log axis


def _variant_label(v: str) -> str:
    return v.replace("M0 < N", "$M_0 < N$")


def _ratio_axis(ax) -> None:
    """x = M/(CN) on a log axis with plain-number ticks at the decades and halves (no crowded minor labels)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    lo, hi = ax.get_xlim()
    ticks = [t for t in (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50) if lo <= t <= hi]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())


def draw(plt, config: dict, rows: list[dict], extra: dict):
    from matplotlib.lines import Line2D

    fig = plt.figure(figsize=(16, 5.4))
    grid = fig.add_gridspec(2, 4, height_ratios=[1, 0.16])
    axes = [fig.add_subplot(grid[0, i]) for i in range(4)]
    panels = (("iso_dev", r"isotropy: $\|\bar{\Theta}/\bar{\alpha} - I\|_2$"),
              ("off_block", r"cross-output blocks: $\|\mathrm{off}(\bar{\Theta})\|_F/\|\bar{\Theta}\|_F$"),
              ("block_dev", r"within blocks: $\max_{k}\, \|\bar{\Theta}_{kk}/\alpha_k - I\|_2$"))
    n = config["n_train"]
    for ax, (key, title) in zip(axes, panels):
        for variant in config["variants"]:
            for c in config["classes"]:
                rs = [r for r in rows if r["variant"] == variant and r["classes"] == c and r[key] is not None]
                if not rs:
                    continue
                xs = sorted({r["width"] for r in rs})
                ys = [max(max(r[key] for r in rs if r["width"] == w), FLOOR) for w in xs]
                ax.plot([w / (c * n) for w in xs], ys, "-", marker=CLASS_MARKER.get(c, "o"), mfc="none",
                        color=VARIANT_COLOR.get(variant, "C7"), ms=6, lw=1)
        ax.axvline(1.0, color="0.4", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        _ratio_axis(ax)
        ax.set_xlabel("$M/(CN)$")
        ax.set_title(title, fontsize=9.5)
        ax.grid(True, which="major", alpha=0.3)
    ax = axes[3]
    steps = config["steps"]
    c = str(config["classes"][-1])
    curves = extra["curves_at_largest_width"].get(c, {})
    for variant in config["variants"]:
        tr = curves.get(variant)
        if not tr:
            continue
        for rule, ls in zip(RULES, ("-", "--")):
            losses = [np.nan if v is None or v <= 0 else v for v in tr[rule]["train_loss"]]
            if losses:
                ax.semilogy(range(len(losses)), losses, ls=ls, marker="o", ms=4, mfc="none",
                            color=VARIANT_COLOR.get(variant, "C7"))
    integer_steps(ax)
    ax.set_xlim(-0.2, steps + 0.2)
    ax.set_xlabel("step $t$")
    ax.set_ylabel("training loss")
    ax.set_title(f"NGD with {fim_title('kfac')}, $C = {c}$, $M = {config['widths'][-1]}$", fontsize=9.5)
    ax.grid(True, which="major", alpha=0.3)
    key = fig.add_subplot(grid[1, :])
    key.axis("off")
    handles = [Line2D([], [], color=VARIANT_COLOR.get(v, "C7"), lw=2, label=_variant_label(v))
               for v in config["variants"]]
    handles += [Line2D([], [], color="0.3", ls="none", marker=CLASS_MARKER.get(c, "o"), mfc="none", label=f"$C = {c}$")
                for c in config["classes"]]
    handles += [Line2D([], [], color="0.3", ls=ls, label=RULE_TEX[r]) for r, ls in zip(RULES, ("-", "--"))]
    handles += [Line2D([], [], color="0.4", ls=":", label="$M = CN$")]
    key.legend(handles=handles, loc="center", ncol=(len(handles) + 1) // 2, fontsize=8.5, frameon=False)
    fig.suptitle(f"Extension{quick_suffix(config)}: {fim_title('kfac')} with $C > 1$ outputs — structure of "
                 f"{THETA_BAR} (Eq. 11) at initialisation, $N = {n}$, $L = {config['network']['depth']}$, ReLU, "
                 f"$\\rho = 0$; max over {len(config['seeds'])} seed(s); 0 (round-off) drawn at $10^{{-16}}$",
                 fontsize=10)
    return fig


def _variant_phrases(config: dict) -> str:
    """The variants that ran, in words (the caption names no input or bias setting that was not drawn)."""
    m0 = config["gaussian_m0"]
    words = {
        "no bias": "no bias",
        "bias folded": "σ_b² = 0.5 with the bias folded into the Kronecker factor (S.123)",
        "bias separate": "σ_b² = 0.5 with the bias in separate FIM blocks (S.123)",
        "M0 < N": f"Gaussian inputs with M_0 = {m0} < N (S.110)",
        "M0 < N, Forster": f"the same Gaussian inputs (M_0 = {m0}) Forster-transformed (S.110–S.111)",
    }
    return "; ".join(words[v] for v in config["variants"])


def caption(config: dict, rows: list[dict], extra: dict) -> str:
    n = config["n_train"]
    return (
        "Extension (not a figure of the paper). K-FAC (Eq. 20, B*_l = δ_lᵀδ_l/N with δ_l stacked over the C outputs, "
        "B*_L = I_C/N) with C = " + ", ".join(str(c) for c in config["classes"]) + " outputs: one-hot targets of the "
        f"MNIST digits 0 … C−1, N = {n} ({config['network']['activation']}, L = {config['network']['depth']}, "
        f"σ_w² = {config['network']['sigma_w2']:g}, ρ = {config['damping']:g}: pseudo-inverse), widths M = "
        f"{', '.join(str(w) for w in config['widths'])}, {len(config['seeds'])} initialisation(s). Variants "
        f"(colours): {_variant_phrases(config)}. "
        "Θ̄ = J G⁻¹ Jᵀ/N (Eq. 11) is CN × CN in C × C output blocks; the x-axis is M/(CN), the dotted line M = CN "
        "(above it every hidden-layer factor B_l = δ_lδ_lᵀ, CN × CN, can be invertible). Panels: ‖Θ̄/ᾱ − I‖₂ with ᾱ "
        "the mean diagonal (0: isotropic); the Frobenius weight of the cross-output blocks; the worst diagonal block's "
        "‖Θ̄_kk/α_k − I‖₂ (0 with the first: block-isotropic); markers: C. Values of 0 (round-off) are drawn at 1e-16. "
        f"Last panel: training loss of NGD at C = {config['classes'][-1]}, M = {config['widths'][-1]} with "
        "η = 1/λ_max(Θ̄) (solid) and η = 1/ᾱ (dashed); a run that diverged ends early."
    )


def _check(config: dict) -> str | None:
    unknown = [v for v in config["variants"] if v not in VARIANTS]
    if unknown:
        return f"variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}"
    bad = [c for c in config["classes"] if not 2 <= c <= 10]
    if bad:
        return f"classes: C must be 2 … 10 (MNIST digits 0 … C−1), got {', '.join(str(c) for c in bad)}"
    gaussian_used = any(VARIANTS[v]["inputs"] == "gaussian" for v in config["variants"])
    if gaussian_used and not config["gaussian_m0"] < config["n_train"]:
        return (f"gaussian_m0 = {config['gaussian_m0']} must be < n_train = {config['n_train']} "
                "(the M0 < N variants and their Forster transform, S.110–S.111)")
    if list(config["widths"]) != sorted(config["widths"]):
        return "widths must be increasing (the claims and the last panel read the largest width last)"
    return None


FIGURE = Figure(
    name=NAME,
    title="Extension: K-FAC with C > 1 outputs — is Θ̄ isotropic, block-isotropic or neither?",
    summary="extension: K-FAC's Θ̄ and its learning rate for C = 2, 5, 10 outputs",
    claim="Section 4.3 leaves C > 1 open: the data say whether Θ̄ is isotropic, block-isotropic or neither",
    config=config, cells=cells, analyse=analyse, draw=draw, caption=caption, check=_check,
    unread=(("network.width", "the sweep sets the width per cell: use --set widths=[…]"),
            ("network.sigma_b2", "each variant sets σ_b² (0 without bias, 0.5 with): choose --set variants=[…]"),
            ("mnist.classes", "the digits are 0 … C−1 per C: use --set classes=[…]"),
            ("mnist.n_train", "one N serves the MNIST and the Gaussian inputs: use --set n_train=…")),
)
