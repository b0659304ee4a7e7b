"""Cell functions shared by several figures, and the helpers every cell uses.

A cell is a module-level function of JSON parameters (backend name, dtype and seeds
included) returning host Python values only (:mod:`ngdref.experiments.sweep`), so it
pickles by reference into spawn process pools and Dask workers.

* :func:`train_cell`: one NGD training run (Eq. 7) beside its Eq. 10 / Eq. 24 predictions
  (Fig. 1(a), Fig. 1(b), Fig. S.1);
* :func:`isotropy_cell`: cond(Θ̄(x, x)) and its mean diagonal α (Eq. 11–12), optionally
  beside S.157 (Fig. 3, Fig. S.2).

Each cell function carries ``check_result(result, params)``: what is wrong with a stored
result of it (a resumed sweep recomputes a cell whose file fails it; see :func:`result_problem`).
"""

from __future__ import annotations

import functools
import json
import math
import warnings

from ...errors import NgdrefError

RECORD_KEYS = (
    "step", "train_loss", "theory_train_loss", "isotropic_train_loss", "test_loss", "theory_test_loss",
    "train_accuracy", "test_accuracy", "max_abs_f_minus_flin_train", "max_abs_f_minus_flin_test", "param_distance",
)


def with_backend(p: dict, backend: str, dtype: str) -> dict:
    """Cell parameters ``p`` with the array backend and dtype they run on."""
    return {**p, "backend": backend, "dtype": dtype}


def backend_of(p: dict):
    from ...backend import get_backend

    return get_backend(p.get("backend", "numpy"), p.get("dtype", "float64"))


@functools.lru_cache(maxsize=4)
def _dataset_cached(key: str):
    from ...data import load_dataset

    d = json.loads(key)
    return load_dataset(d["source"], tuple(d["classes"]), d["n_train"], d["n_test"], d["seed"], d["input_dim"])


def dataset(d: dict):
    """The dataset of a config's ``data`` entry (cached per process)."""
    return _dataset_cached(json.dumps(d, sort_keys=True))


def network(n: dict, input_dim: int, n_outputs: int = 1, width: int | None = None, **override):
    """The :class:`~ngdref.network.Network` of a config's ``network`` entry (``override`` replaces entries)."""
    from ...network import Network

    n = {**n, **override}
    return Network.build(input_dim, n["width"] if width is None else width, n["depth"], n_outputs, n["activation"],
                         n["shift"], n["sigma_w2"], n["sigma_b2"])


def finite(v):
    """``v`` as a float, or None when missing or not finite (JSON has no NaN/inf)."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


NUMBER = "number"  # a result value that is an int, a float or None (JSON null: missing or not finite)


def _kind_ok(v, kind) -> bool:
    if kind == NUMBER:
        return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
    if isinstance(kind, tuple) and NUMBER in kind:
        return _kind_ok(v, NUMBER) or isinstance(v, tuple(k for k in kind if k != NUMBER))
    return isinstance(v, kind) and not (kind is int and isinstance(v, bool))


def result_problem(result: dict, spec: dict, where: str = "") -> str | None:
    """The first key of ``spec`` (key → type, tuple of types or :data:`NUMBER`) that ``result``
    lacks or holds with the wrong kind of value, said in a few words; None when all fit."""
    if not isinstance(result, dict):
        return f"{where or 'result'} is not an object"
    for key, kind in spec.items():
        if key not in result:
            return f"no {where}{key!r}"
        if not _kind_ok(result[key], kind):
            return f"{where}{key!r} is {type(result[key]).__name__}"
    return None


def train_cell(p: dict) -> dict:
    """One NGD training run (Eq. 7) beside its Eq. 10 / Eq. 24 predictions; records per step."""
    from ...train import TrainConfig, train

    ds = dataset(p["data"])
    net = network(p["network"], ds.input_dim, ds.n_outputs)
    t = p["train"]
    config = TrainConfig(fim=t["fim"], steps=t["steps"], lr=t.get("lr"), lr_scale=t.get("lr_scale", 1.0),
                         damping=t.get("damping", 0.0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        try:
            result = train(net, ds, config, backend_of(p), p["seed"])
        except NgdrefError as err:
            if not p.get("refusal_expected"):
                raise
            return {"status": "refused", "message": str(err), "records": [], "summary": {}, "warnings": []}
    records = [{k: finite(r.get(k)) if k != "step" else int(r["step"]) for k in RECORD_KEYS} for r in result.records]
    s = result.summary
    summary = {
        "alpha": finite(s.get("alpha")), "lr": finite(s.get("lr")), "alpha_source": s.get("alpha_source"),
        "lr_source": s.get("lr_source"), "seconds": finite(s.get("seconds")), "n_params": s.get("n_params"),
        "eq22_relative_error": finite(s.get("eq22_relative_error")),
    }
    if "theta_bar_train" in s:
        summary["theta_bar_train"] = {k: finite(v) for k, v in s["theta_bar_train"].items()}
    notes = sorted({str(w.message) for w in caught})
    return {"status": result.status, "message": result.message, "records": records, "summary": summary,
            "warnings": notes}


def _check_train_result(r: dict, p: dict) -> str | None:
    problem = result_problem(r, {"status": str, "message": (str, type(None)), "records": list, "summary": dict,
                                 "warnings": list})
    if problem:
        return problem
    for rec in r["records"]:
        problem = result_problem(rec, {**{k: NUMBER for k in RECORD_KEYS}, "step": int}, "record ")
        if problem:
            return problem
    return result_problem(r["summary"], {"alpha": NUMBER, "lr": NUMBER} if r["records"] else {}, "summary ")


train_cell.check_result = _check_train_result


def isotropy_cell(p: dict) -> dict:
    """cond(Θ̄(x, x)) and its mean diagonal for one approximation, width and seed (Fig. 3, Fig. S.2)."""
    from ..isotropy import isotropy_row

    ds = dataset(p["data"])
    net = network(p["network"], ds.input_dim, 1, width=p["width"])
    row = isotropy_row(net, p["fim"], ds.x_train, p["seed"], backend_of(p), p["damping"])
    out = {k: (finite(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
           for k, v in row.items() if k != "alpha_note"}
    if p.get("s157"):
        from ...fisher.unitwise import shifted_relu_unit_alpha

        out["s157"] = shifted_relu_unit_alpha(net)
        out["s157_with_output_unit"] = shifted_relu_unit_alpha(net, include_output_layer=True)
    return out


ISOTROPY_KEYS = ("condition_number", "lambda_min", "lambda_max", "alpha_measured", "alpha_analytic", "seconds")


def _check_isotropy_result(r: dict, p: dict) -> str | None:
    keys = ISOTROPY_KEYS + (("s157", "s157_with_output_unit") if p.get("s157") else ())
    return result_problem(r, {k: NUMBER for k in keys})


isotropy_cell.check_result = _check_isotropy_result


# ---- memory: refuse a sweep whose largest cell would not fit, before its first cell -------------------
#: ``func.param_arrays``: how many parameter-sized (P) arrays a cell function holds at once, at least — a number,
#: or a function of the cell's parameters. Training: θ_0 (kept for Eq. 22's distance) and θ_t, 2 where the
#: approximation has a factored direction (gd, exact, bd, tridiag, layer, kfac, unit, block apply it a block of
#: rows at a time, ngdref.train.ngd_step), 3 where it has not (diag, quasi-diag make the direction Δθ beside
#: them: :func:`training_arrays`; block too where its tiles are sub-unit or primal, which 2 under-counts — the
#: estimate is a lower bound); an isotropy measurement: θ and one P-sized array (an entry-wise Fisher's
#: diagonal, a direction) (2). A function without it builds no network of the sweep's width (Fig. 2's
#: analytic kernels) and is not estimated.
def training_arrays(fim: str) -> int:
    """P-sized arrays of a training run that keeps θ_0: θ_0 and θ_t, plus Δθ without a factored direction."""
    from ...fisher import fisher_class

    return 2 if fisher_class(fim).has_factored_direction() else 3


train_cell.param_arrays = lambda p: training_arrays(p["train"]["fim"])
isotropy_cell.param_arrays = 2


def cell_memory(cell) -> tuple[int, str]:
    """A lower-bound estimate of the bytes one cell holds at once, and how it was counted.

    bytes = itemsize · (k·P + 3·(N + N′)·ΣM_l): k parameter-sized arrays (``param_arrays`` of the cell
    function) of the network's P parameters, and its layer signals (pre-activations u, activations a and
    back-propagated δ, one N × M_l array each per layer) on the training and test inputs. Structures
    that are not P- or signal-sized (N × N duals, an approximation's own factors) are left out: the true
    peak is higher, never lower. 0 for a cell function without ``param_arrays``.
    """
    k = getattr(cell.func, "param_arrays", 0)
    q = cell.params
    if callable(k):
        k = k(q)
    if not k or not isinstance(q.get("network"), dict) or not isinstance(q.get("data"), dict):
        return 0, ""
    d = q["data"]
    c = q.get("n_outputs") or (len(d.get("classes", ())) if len(d.get("classes", ())) > 2 else 1)
    net = network(q["network"], d["input_dim"], c, width=q.get("width"))
    itemsize = 4 if q.get("dtype") == "float32" else 8
    n = int(d.get("n_train", 0)) + int(d.get("n_test", 0))
    p = net.n_params
    signals = 3 * n * sum(net.widths[1:])
    return itemsize * (k * p + signals), (f"{k} parameter-sized arrays of P = {p:,} and the layer signals of "
                                          f"N + N′ = {n} inputs, {itemsize} bytes each")


def check_sweep_memory(name: str, cells, jobs: int = 1) -> int:
    """Refuse (:class:`~ngdref.errors.MemoryLimitError`, one line with the GiB estimate) a sweep whose largest
    cell — times the cells that run at once (``jobs``) — would exceed the limit of :mod:`ngdref.memory`
    (``NGDREF_MAX_BYTES``, default 4 GiB; here a cell's whole estimate :func:`cell_memory`, not one array).
    Returns the estimate in bytes."""
    from ...errors import MemoryLimitError
    from ...memory import human, max_bytes

    sized = [(cell_memory(c), c) for c in cells]
    if not sized:
        return 0
    (nbytes, how), cell = max(sized, key=lambda t: t[0][0])
    at_once = max(1, min(jobs, len(sized)))
    total, limit = nbytes * at_once, max_bytes()
    if total > limit:
        par = f" × {at_once} cells at once (--jobs)" if at_once > 1 else ""
        raise MemoryLimitError(
            f"{name}: its largest cell {cell.key} would hold at least {human(nbytes)}{par} ({how}), above the "
            f"limit of {human(limit)}; use smaller widths, fewer --jobs, or raise NGDREF_MAX_BYTES")
    return total
