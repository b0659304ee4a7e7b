"""Fig. 2: test accuracy of the trained model's kernel-regression prediction, analytic Θ̄.

After training (Eq. 10 at t → ∞) the model predicts, under the isotropic condition Θ̄ = αI
(Eq. 12), f_∞(x′) = α⁻¹Θ̄(x′, x)(y − f_0(x)) + f_0(x′) (Eq. 14, Section 4.4), with the
infinite-width Θ̄(x′, x) of each approximate Fisher (Section E): exact NGD (Eq. 13), block
diagonal and block tri-diagonal (Eq. 16, 19), K-FAC (S.105–S.123, two-class only). f_0 is
drawn from the infinite-width output Gaussian process (covariance σ_w² A_{L−1} + σ_b²).
L = 3, ReLU, M = 4096; two-class (0/7) and ten-class tasks.

Claim: the approximate Fishers give test accuracies comparable to exact NGD.

Cells are keyed by the data's content (:func:`data_digest`, a SHA-256 of the data files'
bytes, computed once per configuration), not only by the folder's path, so data regenerated in
the same folder is never answered from stale cells; and by the dtype, so that a run with another
``--dtype`` never reuses these cells (the analytic kernels themselves are float64 on the host).
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np

from ...errors import ConfigError
from ..sweep import Cell, CellOutcome
from .analysis import claim, fmt, holds, mean, missing, std, worst
from .base import Figure, mnist, net
from .cells import NUMBER, dataset, network, result_problem
from .plotting import THETA_BAR, fim_title, legend_outside, quick_suffix

NAME = "fig2"

CIFAR_SUBDIR = "cifar-10-batches-py"


def _data_file(path: Path) -> bool:
    """A file the folder loaders can read: MNIST IDX (``*-ubyte``, ``*-ubyte.gz``) or a CIFAR-10 batch."""
    name = path.name
    return path.is_file() and (name.endswith(("ubyte", "ubyte.gz")) or name.startswith(("data_batch", "test_batch")))


def data_digest(folder: str | Path) -> str:
    """SHA-256 of the names and bytes of the data files in ``folder`` and its CIFAR-10 subfolder.

    These are every file :func:`ngdref.data.load_dataset` can read from the folder. The bytes
    are hashed, because a regenerated file can keep its size and modification time. ConfigError
    when the folder holds no such file.
    """
    root = Path(folder)
    files = sorted(p for sub in (root, root / CIFAR_SUBDIR) if sub.is_dir() for p in sub.iterdir() if _data_file(p))
    if not files:
        raise ConfigError(f"--data {str(folder)!r} holds no MNIST IDX files (train-images-idx3-ubyte, …) "
                          f"or CIFAR-10 python batches (data_batch_1..5, test_batch)")
    h = hashlib.sha256()
    try:
        for f in files:
            h.update(f"{f.relative_to(root)}\0".encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    except OSError as exc:
        raise ConfigError(f"cannot read {f}: {exc.strerror or exc}") from None
    return "sha256:" + h.hexdigest()


def config(quick: bool = False, data: str | None = None, seed: int = 0) -> dict:
    """``data``: a folder with MNIST IDX files or CIFAR-10 python batches (default: the bundled MNIST subset)."""
    if data and data not in ("mnist",):
        content = data_digest(data)
        two = {"source": str(data), "content": content, "classes": [0, 7], "n_train": 10000, "n_test": 2000,
               "seed": seed, "input_dim": 100}
        ten = {"source": str(data), "content": content, "classes": list(range(10)), "n_train": 10000,
               "n_test": 10000, "seed": seed, "input_dim": 100}
        if quick:
            two.update(n_train=100, n_test=100)
            ten.update(n_train=200, n_test=100)
        note = (f"data from {data}: two-class uses labels 0/7 (CIFAR-10: airplane/horse, MNIST: '0'/'7'); "
                f"N = {two['n_train']}/{ten['n_train']}, N' = {two['n_test']}/{ten['n_test']}")
    else:
        if quick:
            two, ten = mnist(100, 100, seed), mnist(200, 100, seed, classes=range(10))
        else:
            # K-FAC's analytic Θ̄ needs linearly independent inputs with M0 >= N (Section 4.3): the
            # all 1,000 bundled 0/7 images: N = 800, N' = 200 (their span has rank ~524 < M0, so
            # K-FAC's first-layer factor is the projection P′P⁺ of S.108, not isotropic, S.109)
            two, ten = mnist(800, 200, seed), mnist(4000, 1000, seed, classes=range(10))
        note = ("bundled MNIST 5k subset (the paper used N = 10,000 of CIFAR-10 and MNIST; pass --data PATH "
                f"with MNIST IDX or CIFAR-10 python files for that): two-class 0/7 N = {two['n_train']}, "
                f"N' = {two['n_test']}; ten-class N = {ten['n_train']}, N' = {ten['n_test']}")
    return {
        "figure": NAME, "quick": quick, "network": net(4096, 3),
        "tasks": [{"name": "two-class", "data": two, "methods": ["exact", "bd", "tridiag", "kfac"]},
                  {"name": "ten-class", "data": ten, "methods": ["exact", "bd", "tridiag"]}],
        "seeds": list(range(seed, seed + (3 if quick else 10))),
        "f0": "infinite-width output Gaussian process, covariance σ_w² A_{L−1} + σ_b² (analytic, Section E), "
              "sampled jointly on train + test inputs, independently per output",
        "data_note": note,
        "arithmetic": "float64 NumPy on the host (analytic kernels), whatever --backend and --dtype",
    }


@functools.lru_cache(maxsize=2)
def _predictor(key: str):
    """Seed-independent part of a Fig. 2 task (regression matrices, f_0 sampler): ngdref.experiments.prediction."""
    from ..prediction import AnalyticPredictor

    task = json.loads(key)
    ds = dataset(task["data"])
    return AnalyticPredictor(network(task["network"], ds.input_dim, ds.n_outputs), ds, task["methods"])


def fig2_cell(p: dict) -> dict:
    """Test accuracy of f_∞ for every method, for one draw of f_0 (``seed``) or f_0 = 0 (``seed`` None)."""
    task = {k: p[k] for k in ("data", "network", "methods")}
    predictor = _predictor(json.dumps(task, sort_keys=True))
    f0, _ = predictor.sample_f0(p["seed"])
    return {"seed": p["seed"], "accuracy": predictor.accuracies(p["seed"]), "methods": predictor.info(),
            "f0_jitter": predictor.jitter, "f0_train_std": float(np.std(f0)), "data": predictor.dataset.to_dict()}


def _check_fig2_result(r: dict, p: dict) -> str | None:
    problem = result_problem(r, {"seed": (int, type(None)), "accuracy": dict, "methods": dict, "f0_jitter": NUMBER,
                                 "f0_train_std": NUMBER, "data": dict})
    return problem or result_problem(r["accuracy"], {m: NUMBER for m in p["methods"]}, "accuracy ") \
        or result_problem(r["methods"], {m: dict for m in p["methods"]}, "methods ") \
        or result_problem(r["data"], {"name": str, "n_train": int, "n_test": int}, "data ")


fig2_cell.check_result = _check_fig2_result


def _check(config: dict) -> str | None:
    for task in config["tasks"]:
        unknown = [m for m in task["methods"] if m not in ("exact", "bd", "tridiag", "kfac")]
        if unknown:
            return f"{task['name']}: methods {unknown} have no analytic Θ̄ here; choose among exact, bd, tridiag, kfac"
    return None


def cells(config: dict, backend: str = "numpy", dtype: str = "float64") -> list[Cell]:
    """One cell per task and f_0 draw, plus f_0 = 0; analytic kernels on the host (no backend in the
    parameters), keyed by the dtype all the same so that runs with different dtypes never share cells."""
    out = []
    for task in config["tasks"]:
        for seed in [None, *config["seeds"]]:
            p = {"figure": NAME, "task": task["name"], "data": task["data"], "network": config["network"],
                 "methods": task["methods"], "seed": seed, "dtype": dtype}
            out.append(Cell.make(NAME, fig2_cell, p, f"{task['name']}-{'mean' if seed is None else f's{seed}'}"))
    return out


def analyse(config: dict, outcomes: list[CellOutcome]) -> tuple[list, list, dict]:
    rows, claims, summary = [], [], {}
    for task in config["tasks"]:
        outs = [o for o in outcomes if o.params["task"] == task["name"]]
        mean_pred = next(o.result for o in outs if o.params["seed"] is None)
        seeded = [o.result for o in outs if o.params["seed"] is not None]
        stats = {}
        for m in task["methods"]:
            if "error" in mean_pred["methods"].get(m, {}):  # not applicable here (said in the table)
                accs, f0_zero = [], None
            else:  # every draw counts: a missing accuracy makes the mean missing, not a mean of the rest
                accs, f0_zero = [r["accuracy"].get(m) for r in seeded], mean_pred["accuracy"].get(m)
            stats[m] = {"mean": mean(accs), "std": std(accs), "f0_zero": f0_zero, "n_seeds": len(accs),
                        **mean_pred["methods"].get(m, {})}
            # one type per column: ``initial_output`` says which f_0, ``seed`` is its draw (null for f_0 = 0)
            for r in seeded:
                rows.append({"task": task["name"], "method": m, "initial_output": "sampled", "seed": r["seed"],
                             "accuracy": r["accuracy"].get(m)})
            rows.append({"task": task["name"], "method": m, "initial_output": "zero", "seed": None,
                         "accuracy": mean_pred["accuracy"].get(m)})
        summary[task["name"]] = {"methods": stats, "data": mean_pred["data"], "f0_jitter": mean_pred["f0_jitter"]}
        applicable = [s for s in stats.values() if "error" not in s]
        means = [s["mean"] for s in applicable]
        complete = all(not missing(s["f0_zero"]) for s in applicable)
        spread = None if worst(means) is None else worst(means) - min(means)
        d = mean_pred["data"]
        claims.append(claim(
            f"{task['name']} ({d['name']}, N={d['n_train']}, N'={d['n_test']}): test accuracy, mean ± std over "
            f"{len(seeded)} draws of f_0 [f_0 = 0]",
            "; ".join(f"{m} {fmt(s['mean'], '.3f')}±{fmt(s['std'], '.3f')} [{fmt(s['f0_zero'], '.3f')}]"
                      if "error" not in s else f"{m} n/a ({s['error']})" for m, s in stats.items()),
            "approximate FIMs give comparable accuracy to exact NGD",
            complete and holds(spread, lambda v: v < 0.05), stats))
    return rows, claims, summary


#: the smallest span of the accuracy axis, in percentage points: a 0.5 % difference is then 1/20 of the
#: axis, not its whole height
MIN_SPAN = 10.0


def _accuracy_range(values: list[float], n_classes: int) -> tuple[float, float]:
    """y-limits in percent: up to 100 % (and a little above), down to at least :data:`MIN_SPAN` below
    it and below every value, never below chance level."""
    chance = 100.0 / max(n_classes, 2)
    low = min([100.0 - MIN_SPAN] + [v - 2.0 for v in values])
    return max(low, chance - 1.0), 100.8


def draw(plt, config: dict, rows: list[dict], extra: dict):
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    tasks = config["tasks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.8))
    for ax, task in zip(np.atleast_1d(axes), tasks):
        st = extra[task["name"]]["methods"]
        ms = [m for m in task["methods"] if st[m]["mean"] is not None]
        x = np.arange(len(ms))
        dots, shown = False, []
        for i, m in enumerate(ms):
            accs = [100 * r["accuracy"] for r in rows if r["task"] == task["name"] and r["method"] == m
                    and r["initial_output"] == "sampled" and not missing(r["accuracy"])]
            shown += accs
            ax.plot(np.full(len(accs), i) + 0.14, accs, ".", color="0.55", ms=4,
                    label=None if dots or not accs else "one draw of $f_0$")
            dots = dots or bool(accs)
        means = np.array([100 * st[m]["mean"] for m in ms])
        stds = np.array([100 * (st[m]["std"] or 0.0) for m in ms])
        # the band mean ± std clipped to [0, 100] %: an accuracy has no value beyond either end
        yerr = np.vstack([np.minimum(stds, means), np.minimum(stds, 100.0 - means)])
        ax.errorbar(x, means, yerr=yerr, fmt="s", capsize=5, color="C0",
                    label="mean ± std over $f_0$ draws (within 0–100 %)")
        zero = [np.nan if missing(st[m]["f0_zero"]) else 100 * st[m]["f0_zero"] for m in ms]
        ax.plot(x, zero, "o", mfc="none", color="C3", ms=9, label=r"$f_0 = 0$ ($\alpha^{-1}\bar{\Theta}y$)")
        for xi, mu in zip(x, means):
            ax.annotate(f"{mu:.1f} %", (xi, mu), xytext=(-8, 0), textcoords="offset points", ha="right",
                        va="center", fontsize=7.5, color="C0")
        n_classes = len(task["data"]["classes"])
        ax.set_ylim(*_accuracy_range(shown + list(means) + [z for z in zero if not np.isnan(z)], n_classes))
        ax.set_xlim(-0.7, len(ms) - 0.4)
        ax.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 5, 10]))
        ax.yaxis.set_major_formatter(PercentFormatter(100, decimals=0))
        ax.set_xticks(x, [fim_title(m) for m in ms], fontsize=8)
        d = extra[task["name"]]["data"]
        ax.set_title(f"{task['name']}: {Path(str(d['name'])).name}, $N = {d['n_train']}$, $N' = {d['n_test']}$",
                     fontsize=10)
        ax.set_ylabel("test accuracy")
        ax.grid(True, axis="y", alpha=0.3)
        legend_outside(ax, "below", ncol=2)  # below the panel, where it covers no data point
    fig.suptitle(f"Fig. 2{quick_suffix(config)}: kernel-regression prediction, $L = 3$, ReLU, analytic {THETA_BAR}",
                 fontsize=10)
    return fig


def caption(config: dict, rows: list[dict], extra: dict) -> str:
    n = config["network"]
    parts = []
    for task in config["tasks"]:
        d = extra[task["name"]]["data"]
        parts.append(f"{task['name']} ({Path(str(d['name'])).name}, N = {d['n_train']}, N' = {d['n_test']}; "
                     f"{', '.join(fim_title(m) for m in task['methods'])})")
    return (
        "Test accuracy of the trained model's prediction f_∞(x′) = α⁻¹Θ̄(x′, x)(y − f_0(x)) + f_0(x′) (Eq. 14) "
        f"with the analytic infinite-width Θ̄ of each Fisher (Section E): {'; '.join(parts)}. L = {n['depth']}, "
        f"{n['activation']}, M = {n['width']}, σ_w² = {n['sigma_w2']:g}, σ_b² = {n['sigma_b2']:g}; f_0 drawn from "
        f"the infinite-width output Gaussian process, {len(config['seeds'])} draws (seeds "
        f"{', '.join(str(s) for s in config['seeds'])}). Squares: mean over the draws with ± std (the band clipped "
        "to 0–100 %) and its value in %; grey dots: each draw; red circles: f_0 = 0 (α⁻¹Θ̄y). The y-axis spans "
        f"at least {MIN_SPAN:g} percentage points (never below chance), so differences of a few tenths of a "
        f"percent look as small as they are. Data: {config['data_note']}."
    )


FIGURE = Figure(
    name=NAME,
    title="Fig. 2: test accuracy of the trained model's kernel-regression prediction (analytic Θ̄)",
    summary="test accuracy of the kernel-regression prediction (analytic Θ̄)",
    claim="approximate Fishers give test accuracy comparable to exact NGD",
    config=config, cells=cells, analyse=analyse, draw=draw, takes_data=True, caption=caption,
    fixed=("f0", "data_note", "arithmetic"), check=_check,
)
