"""The benchmark suites: cases, their measurement, ratios and the issue's targets.

Every case is one call, timed by :func:`benchmarks.timing.measure` (median over
repeats after one warm-up; peak memory of the warm-up call) and given a FLOP count
from :mod:`benchmarks.flops`, hence GFLOP/s and its "GEMM floor" (counted FLOPs /
the large-GEMM rate measured in the same run). See ``benchmarks/RESULTS.md``.

Groups of cases
---------------
``gemm``      the machine's large-GEMM rate per backend and dtype (the floor's denominator)
``core``      forward+backward signals; empirical NTK structured and explicit (J Jᵀ/N,
              only where J fits ``explicit_jacobian_bytes``)
``fisher``    per approximation in ``ngdref.fisher.REGISTRY`` (all but those with a required
              option, ``layer``'s Σ, covered by bd and tridiag): Θ̄(x, x) from signals (``coefficient``), one
              NGD direction from signals (``direction``), one training step
              (``step`` = signals + direction + in-place update θ ← θ − ηΔθ, done as
              ``Δθ *= η; θ -= Δθ`` so the update allocates nothing; η = 0 by default so that
              every repeat times the same network)
``explicit``  a tiny network where the P×P oracles fit: structured vs explicit time and memory
``train``     ``ngdref.train.train`` with 1 step (includes its setup: Θ̄, theory lines), if present
``analytic``  ``ngdref.kernels.analytic_kernels(...).ntk`` (ReLU closed forms) at N = 1,000 / 5,000 / 10,000
``peer``      neural-tangents' empirical NTK on the same weights (subprocess; optional)
``cli``       wall time of ``ngdref train --fim unit`` with its defaults (subprocess)
``operator``  the matrix-free operators of :mod:`ngdref.fisher.operators` per approximation: one
              ``G-matvec`` and one ``G-inverse-matvec`` (its N-sized factors built in the warm-up call
              and reused, as in CG or Lanczos) on a fixed vector, beside ``signals`` (forward + backward)
              of the same network; ``over_signals`` = matvec / signals time, ``peak_over_params``
              (tracemalloc) and ``peak_rss_growth_over_params`` (the forked-child RSS probe)
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import numpy as np

from . import flops as F
from .machine import machine_info
from .timing import MEMORY_CUPY, MEMORY_NUMPY, measure

SCHEMA = "ngdref-bench/1"
GiB = 1024**3
TIMING_NOTE = (
    "median wall time (time.perf_counter) over `repeats` calls after one warm-up call; "
    "device synchronised after each call on CuPy"
)
MEMORY_NOTE = (
    f"NumPy: {MEMORY_NUMPY}. BLAS/LAPACK internal workspaces (malloc'ed by OpenBLAS or inside "
    f"numpy.linalg) are not seen by tracemalloc. CuPy: {MEMORY_CUPY}."
)


@dataclass
class SuiteConfig:
    """Everything that defines a benchmark run (recorded in the JSON as ``settings``)."""

    name: str = "cpu"
    widths: tuple = (256, 1024, 2048, 4096)
    dtypes: tuple = ("float64", "float32")
    backends: tuple = ("auto",)  # "auto" = numpy, plus cupy when usable
    repeats: int = 5
    case_budget_s: float = 12.0  # the repeats of one case are cut to stay near this
    case_limit_s: float = 40.0  # a case predicted (from a smaller width, ∝ M²) to take longer per call is skipped
    min_repeats: int = 3
    depth: int = 3
    input_dim: int = 784
    n: int = 100
    data: str = "mnist"
    classes: tuple = (0, 7)
    activation: str = "relu"
    sigma_w2: float = 2.0
    sigma_b2: float = 0.5
    damping: float = 0.0
    fallback_damping: float = 1e-6  # used only when an approximation refuses `damping`
    lr: float = 0.0  # the step case multiplies by η = 0 (see run_width): same work, θ unchanged
    seed: int = 0
    fims: tuple | None = None  # None: everything in REGISTRY at run time, except "layer"
    explicit_jacobian_bytes: int = 4 * GiB
    explicit_metric_bytes: int = 4 * GiB  # the three P×P arrays of the explicit oracle
    tiny: dict | None = field(default_factory=lambda: {"width": 32, "input_dim": 16, "n": 32})
    analytic_n: tuple = (1000, 5000, 10000)  # 10,000: the paper's Fig. 2 size (issue 17, target 3)
    analytic_input_dim: int = 784
    train_case: bool = True
    operator_cases: bool = True
    train_dtypes: tuple = ("float64",)
    peer: str = "auto"  # "auto" | "off"
    peer_python: str | None = None
    peer_widths: tuple = (256, 1024, 2048, 4096)
    peer_repeats: int = 200  # at most; cut to about peer_budget_s of calls (and at least 3)
    peer_budget_s: float = 3.0
    cli_train: bool = True
    cli_timeout_s: float = 180.0
    gemm_sizes: dict = field(default_factory=lambda: {"numpy": (2048,), "cupy": (2048, 8192)})
    max_width: dict = field(default_factory=dict)  # per backend, e.g. {"numpy": 4096}
    target_width: int = 4096

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def _quick() -> SuiteConfig:
    return SuiteConfig(
        name="quick",
        widths=(32, 64),
        n=16,
        repeats=2,
        min_repeats=1,
        case_budget_s=1.0,
        tiny={"width": 8, "input_dim": 8, "n": 8},
        analytic_n=(64,),
        peer="off",
        cli_train=False,
        gemm_sizes={"numpy": (256,), "cupy": (256,)},
    )


def _cpu() -> SuiteConfig:
    return SuiteConfig(name="cpu")


def _gpu() -> SuiteConfig:
    return SuiteConfig(
        name="gpu",
        widths=(256, 1024, 2048, 4096, 8192, 16384),
        backends=("numpy", "cupy"),
        max_width={"numpy": 4096},
        peer="auto",
        peer_widths=(256, 1024),
        cli_train=True,
    )


SUITES: dict[str, Callable[[], SuiteConfig]] = {"quick": _quick, "cpu": _cpu, "gpu": _gpu}


def suite_config(name: str, **overrides) -> SuiteConfig:
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose one of {', '.join(SUITES)}")
    cfg = SUITES[name]()
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return replace(cfg, **overrides)


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def available_backends(requested) -> tuple[list[str], dict]:
    """Resolve "auto"; returns (usable backends, {backend: reason} for the unusable ones)."""
    from ngdref.backend import BackendError, get_backend

    names: list[str] = []
    for b in requested:
        if b == "auto":
            names += ["numpy", "cupy"]
        else:
            names.append(b)
    usable, skipped = [], {}
    for b in dict.fromkeys(names):
        try:
            get_backend(b)
            usable.append(b)
        except BackendError as exc:
            skipped[b] = str(exc)
    return usable, skipped


def fisher_names(cfg: SuiteConfig) -> list[str]:
    from ngdref.fisher import REGISTRY

    if cfg.fims is not None:
        return [n for n in cfg.fims if n in REGISTRY]
    return [n for n, cls in REGISTRY.items() if not any(o.required for o in cls.spec.options)]


def make_fisher(name: str, network, damping: float, fallback: float):
    """The approximation at ``damping`` (0 where G has no damping term, its spec says); if it refuses
    that damping, at ``fallback`` (recorded)."""
    from ngdref.errors import ConfigError
    from ngdref.fisher import fisher_class, get_fisher

    damping = fisher_class(name).spec.applicable_damping(damping)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return get_fisher(name, network, damping), damping, ""
    except ConfigError as exc:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return get_fisher(name, network, fallback), fallback, f"damping {damping} refused ({exc}); used {fallback}"


def _itemsize(dtype: str) -> int:
    return 4 if dtype == "float32" else 8


class _MemoryLimit:
    """Temporarily set ngdref's explicit-allocation limit."""

    def __init__(self, limit: int):
        self.limit = limit

    def __enter__(self):
        from ngdref import memory

        memory.set_max_bytes(self.limit)

    def __exit__(self, *exc):
        from ngdref import memory

        memory.set_max_bytes(None)
        return False


def _keep(store: dict, key: str, fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` that also remembers its latest result in ``store[key]``."""

    def call():
        store[key] = fn()
        return store[key]

    return call


def _rel_diff(a, b) -> float:
    from ngdref.backend import to_host

    a = np.asarray(to_host(a), dtype=np.float64).reshape(-1)
    b = np.asarray(to_host(b), dtype=np.float64).reshape(-1)
    scale = float(np.max(np.abs(b))) or 1.0
    return float(np.max(np.abs(a - b)) / scale)


# --------------------------------------------------------------------------------------
# the runner
# --------------------------------------------------------------------------------------
class Runner:
    def __init__(self, cfg: SuiteConfig, log: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.log = log or (lambda msg: None)
        self.cases: list[dict] = []
        self.gemm: dict[str, dict] = {}
        self.notes: list[str] = []
        self._last: dict = {}  # case key -> (width, warm-up seconds) of its latest run

    # -- bookkeeping ---------------------------------------------------------------------
    def gemm_rate(self, backend: str, dtype: str) -> float | None:
        g = self.gemm.get(f"{backend}/{dtype}")
        return g["best_gflops_per_s"] * 1e9 if g else None

    def _record(self, base: dict, status: str, note: str = "", m=None, flops=None, flop_model="",
                param_bytes=None, extra=None) -> dict:
        rec = dict(base)
        rec.update({"status": status, "note": note, "flop_model": flop_model, "flops": flops})
        rec["param_bytes"] = param_bytes
        if m is not None:
            rec.update(m.to_dict())
            med = m.median_s
            rate = self.gemm_rate(rec["backend"], rec["dtype"])
            if flops:
                rec["gflops_per_s"] = flops / med / 1e9 if med > 0 else None
                if rate:
                    rec["gemm_floor_s"] = flops / rate
                    rec["time_over_floor"] = med / rec["gemm_floor_s"]
            if param_bytes and m.peak_bytes is not None:
                rec["peak_over_params"] = m.peak_bytes / param_bytes
            if param_bytes and m.peak_rss_growth_bytes is not None:
                rec["peak_rss_growth_over_params"] = m.peak_rss_growth_bytes / param_bytes
        if extra:
            rec.update(extra)
        rec["id"] = self._id(rec)
        self.cases.append(rec)
        self._log_case(rec)
        return rec

    @staticmethod
    def _id(rec: dict) -> str:
        parts = [rec["group"], rec["case"]]
        if rec.get("fim"):
            parts[-1] += f"[{rec['fim']}]"
        if rec.get("path"):
            parts.append(rec["path"])
        parts += [rec["backend"], rec["dtype"]]
        if rec.get("width") is not None:
            parts.append(f"M={rec['width']}")
        if rec.get("n") is not None and rec["group"] in ("analytic",):
            parts.append(f"N={rec['n']}")
        return "/".join(parts)

    def _log_case(self, rec: dict) -> None:
        if rec["status"] == "ok":
            extra = ""
            if rec.get("time_over_floor") is not None:
                extra += f"  ×floor {rec['time_over_floor']:.1f}"
            if rec.get("peak_bytes") is not None:
                extra += f"  peak {rec['peak_bytes'] / 2**20:.1f} MiB"
            self.log(f"{rec['id']}: {rec['median_s'] * 1e3:.2f} ms{extra}")
        else:
            self.log(f"{rec['id']}: {rec['status']} {rec['note']}")

    def case(self, base: dict, fn: Callable[[], object], flops=None, flop_model="", param_bytes=None,
             repeats=None, extra=None, memory=True, min_repeats=None) -> dict:
        """Measure ``fn`` and record it; MemoryLimitError -> skipped, any other error -> error."""
        from ngdref.errors import MemoryLimitError

        key = tuple(base.get(k) for k in ("group", "case", "fim", "path", "backend", "dtype"))
        width = base.get("width")
        prev = self._last.get(key)
        if prev is not None and width and prev[0] and width > prev[0]:
            predicted = prev[1] * (width / prev[0]) ** 2
            if predicted > self.cfg.case_limit_s:
                return self._record(
                    base, "skipped",
                    f"too slow: one call predicted ≈ {predicted:.0f} s (∝ M² from {prev[1]:.1f} s at M = {prev[0]}) "
                    f"> case_limit_s = {self.cfg.case_limit_s:g} s",
                    flops=flops, flop_model=flop_model, param_bytes=param_bytes,
                    extra={"predicted_s": predicted})
        try:
            m = measure(
                fn,
                repeats=repeats or self.cfg.repeats,
                backend_name=base["backend"],
                budget_s=self.cfg.case_budget_s,
                min_repeats=self.cfg.min_repeats if min_repeats is None else min_repeats,
                memory=memory,
            )
        except MemoryLimitError as exc:
            return self._record(base, "skipped", f"explicit path refused before allocating: {exc}",
                                flops=flops, flop_model=flop_model, param_bytes=param_bytes)
        except Exception as exc:  # keep the suite going; the error is part of the result
            tb = traceback.format_exc(limit=3)
            return self._record(base, "error", f"{type(exc).__name__}: {exc}"[:400], flops=flops,
                                flop_model=flop_model, param_bytes=param_bytes, extra={"traceback": tb[-1500:]})
        self._last[key] = (width, m.warmup_s)
        return self._record(base, "ok", "", m, flops, flop_model, param_bytes, extra)

    # -- data ----------------------------------------------------------------------------
    def _dataset(self, n: int, input_dim: int, data: str | None = None):
        from ngdref.data import load_dataset

        data = data or self.cfg.data
        if data == "mnist" and input_dim == 784:
            return load_dataset("mnist", classes=self.cfg.classes, n_train=n, n_test=0, seed=self.cfg.seed)
        return load_dataset("gaussian", classes=(0, 1), n_train=n, n_test=0, seed=self.cfg.seed, input_dim=input_dim)

    def _network(self, input_dim: int, width: int):
        from ngdref.network import Network

        return Network.build(
            input_dim, width, self.cfg.depth, 1, self.cfg.activation,
            sigma_w2=self.cfg.sigma_w2, sigma_b2=self.cfg.sigma_b2,
        )

    # -- groups --------------------------------------------------------------------------
    def run_gemm(self, backend: str, dtype: str) -> None:
        from ngdref.backend import get_backend, to_device

        be = get_backend(backend, dtype)
        xp = be.xp
        best = 0.0
        rows = []
        for n in self.cfg.gemm_sizes.get(backend, (2048,)):
            rng = np.random.default_rng(self.cfg.seed)
            a = to_device(rng.standard_normal((n, n)), be)
            b = to_device(rng.standard_normal((n, n)), be)
            m = measure(lambda: a @ b, repeats=3, backend_name=backend, memory=False)
            rate = F.gemm(n) / m.median_s
            best = max(best, rate)
            rows.append({"n": n, **m.to_dict(), "gflops_per_s": rate / 1e9})
            del a, b
            _ = xp  # keep namespace referenced
        self.gemm[f"{backend}/{dtype}"] = {"backend": backend, "dtype": dtype, "sizes": rows,
                                            "best_gflops_per_s": best / 1e9,
                                            "note": "median of 3 after one warm-up, C = A @ B, square"}
        self.log(f"gemm/{backend}/{dtype}: {best / 1e9:.1f} GFLOP/s")

    def run_width(self, backend: str, dtype: str, width: int, ds) -> None:
        from ngdref.backend import get_backend, to_device
        from ngdref.ntk import empirical_ntk

        cfg = self.cfg
        be = get_backend(backend, dtype)
        net = self._network(cfg.input_dim, width)
        params = net.init(cfg.seed, be)
        x, y = to_device(ds.x_train, be), to_device(ds.y_train, be)
        shape = F.Shape.of(net, x.shape[0])
        p = net.n_params
        pbytes = p * _itemsize(dtype)
        common = {"backend": backend, "dtype": dtype, "width": width, "widths": list(net.widths),
                  "n": int(x.shape[0]), "c": 1, "n_params": p}

        self.case({**common, "group": "core", "case": "signals"}, lambda: net.signals(params, x),
                  F.signals(shape), "2N·Σfan·M forward + 2CN·ΣM_l M_{l+1} backward", pbytes)
        self.case({**common, "group": "core", "case": "ntk", "path": "structured"},
                  lambda: empirical_ntk(net, params, x, method="structured"),
                  F.ntk_structured(shape), "signals + Σ_l(2(CN)²M_l + 2N²fan_l)", pbytes)
        jbytes = shape.cn * p * _itemsize(dtype)
        if jbytes <= cfg.explicit_jacobian_bytes:
            with _MemoryLimit(cfg.explicit_jacobian_bytes):
                self.case({**common, "group": "core", "case": "ntk", "path": "explicit"},
                          lambda: empirical_ntk(net, params, x, method="explicit"),
                          F.ntk_explicit(shape), "signals + CN·P (form J) + 2(CN)²P (J Jᵀ)", pbytes,
                          extra={"jacobian_bytes": jbytes}, min_repeats=1)
        else:
            self._record({**common, "group": "core", "case": "ntk", "path": "explicit"}, "skipped",
                         f"J would need {jbytes / GiB:.2f} GiB > budget {cfg.explicit_jacobian_bytes / GiB:.2f} GiB",
                         flops=F.ntk_explicit(shape), param_bytes=pbytes, extra={"jacobian_bytes": jbytes})

        sig = net.signals(params, x)
        for name in fisher_names(cfg):
            base = {**common, "group": "fisher", "fim": name, "path": "structured"}
            try:
                fim, damping, note = make_fisher(name, net, cfg.damping, cfg.fallback_damping)
            except Exception as exc:
                for case in ("coefficient", "direction", "step"):
                    self._record({**base, "case": case}, "error", f"construction failed: {exc}", param_bytes=pbytes)
                continue
            extra = {"damping": damping, "damping_note": note} if note else {"damping": damping}
            fl, model = F.coefficient(name, shape, damping)
            self.case({**base, "case": "coefficient"}, lambda: fim.coefficient(sig), fl, model, pbytes, extra=extra)
            fl, model = F.direction(name, shape, damping)
            self.case({**base, "case": "direction"}, lambda: fim.direction(params, x, y, sig), fl, model, pbytes,
                      extra=extra)
            work = [q.copy() for q in params]
            # η = cfg.lr = 0 by default: the update's arithmetic is done in full (g *= 0; θ -= g) but θ stays at its
            # initial value, so every repeat times the same network. With η > 0 at ρ = 0 the
            # repeats drift (unit-wise at ρ = 0 moves θ by ~1e9 per step) and time a different,
            # blown-up network each call.
            lr = cfg.lr

            def step(work=work, fim=fim):
                s = net.signals(work, x)
                d = fim.direction(work, x, y, s)
                for q, g in zip(work, d):  # in place, no temporary: g is a fresh array of ours
                    g *= lr
                    q -= g
                return None

            fl, model = F.step(name, shape, damping)
            self.case({**base, "case": "step"}, step, fl, model, pbytes, extra=extra)
            del work
        del sig, params

    def run_explicit(self) -> None:
        """Tiny network: the structured path against the explicit P×P oracles of the test suite
        (``tests/oracles.py``, literal transcriptions of the paper; NumPy, float64)."""
        from ngdref.backend import get_backend, to_device
        from ngdref.ntk import empirical_ntk
        from tests.oracles import oracle as explicit_oracle

        cfg, tiny = self.cfg, self.cfg.tiny
        if not tiny:
            return
        be = get_backend("numpy", "float64")
        ds = self._dataset(tiny["n"], tiny["input_dim"], data="gaussian")
        net = self._network(tiny["input_dim"], tiny["width"])
        params = net.init(cfg.seed, be)
        x, y = to_device(ds.x_train, be), to_device(ds.y_train, be)
        shape = F.Shape.of(net, x.shape[0])
        p = net.n_params
        pbytes = p * 8
        common = {"backend": "numpy", "dtype": "float64", "width": tiny["width"], "widths": list(net.widths),
                  "n": int(x.shape[0]), "c": 1, "n_params": p, "group": "explicit"}
        self.notes.append(
            f"explicit-vs-structured rows use a tiny network: M0 = {tiny['input_dim']} (reduced input; with "
            f"M0 = 784 the P×P oracle does not fit), M = {tiny['width']}, N = {tiny['n']} Gaussian unit-norm inputs, "
            f"P = {p}; the explicit oracles compute in host float64 only"
        )
        with _MemoryLimit(cfg.explicit_metric_bytes):
            k_s = empirical_ntk(net, params, x, method="structured")
            k_e = empirical_ntk(net, params, x, method="explicit")
            agree = {"max_rel_diff_vs_explicit": _rel_diff(k_s, k_e)}
            self.case({**common, "case": "ntk", "path": "structured"},
                      lambda: empirical_ntk(net, params, x, method="structured"), F.ntk_structured(shape), "",
                      pbytes, extra=agree)
            self.case({**common, "case": "ntk", "path": "explicit"},
                      lambda: empirical_ntk(net, params, x, method="explicit"), F.ntk_explicit(shape), "", pbytes)
            sig = net.signals(params, x)
            for name in fisher_names(cfg):
                try:
                    fim, damping, note = make_fisher(name, net, cfg.damping, cfg.fallback_damping)
                except Exception as exc:
                    self._record({**common, "case": "coefficient", "fim": name, "path": "structured"}, "error",
                                 f"construction failed: {exc}", param_bytes=pbytes)
                    continue
                extra = {"damping": damping}
                if note:
                    extra["damping_note"] = note
                # time both paths; the warm-up results are kept to check that the two paths agree
                got: dict = {}
                fl, model = F.coefficient(name, shape, damping)
                self.case({**common, "case": "coefficient", "fim": name, "path": "structured"},
                          _keep(got, "cs", lambda: fim.coefficient(sig)), fl, model, pbytes, extra=dict(extra))
                fl, model = F.explicit_coefficient(name, shape)
                self.case({**common, "case": "coefficient", "fim": name, "path": "explicit"},
                          _keep(got, "ce", lambda: explicit_oracle(name, net, params, x, damping).theta_bar()),
                          fl, model, pbytes,
                          extra=dict(extra), min_repeats=1)
                fl, model = F.direction(name, shape, damping)
                self.case({**common, "case": "direction", "fim": name, "path": "structured"},
                          _keep(got, "ds", lambda: fim.direction(params, x, y, sig)), fl, model, pbytes,
                          extra=dict(extra))
                fl, model = F.explicit_direction(name, shape)
                self.case({**common, "case": "direction", "fim": name, "path": "explicit"},
                          _keep(got, "de", lambda: explicit_oracle(name, net, params, x, damping).direction(y)),
                          fl, model, pbytes,
                          extra=dict(extra), min_repeats=1)
                for case, a, b in (("coefficient", "cs", "ce"), ("direction", "ds", "de")):
                    if a in got and b in got:
                        sa = net.flatten(got[a]) if isinstance(got[a], list) else got[a]
                        diff = _rel_diff(sa, got[b])
                        for rec in self.cases[-4:]:
                            if rec["case"] == case and rec.get("fim") == name:
                                rec["max_rel_diff_vs_explicit"] = diff

    def run_train(self, backend: str, dtype: str, width: int, ds) -> None:
        """``ngdref.train.train`` for one step per approximation, if the module exists."""
        base = {"backend": backend, "dtype": dtype, "width": width, "group": "train", "case": "train(steps=1)"}
        from ngdref.backend import get_backend
        from ngdref.train import TrainConfig, train

        cfg = self.cfg
        be = get_backend(backend, dtype)
        net = self._network(cfg.input_dim, width)
        pbytes = net.n_params * _itemsize(dtype)
        for name in fisher_names(cfg):
            _, damping, _note = make_fisher(name, net, cfg.damping, cfg.fallback_damping)
            tc = TrainConfig(fim=name, steps=1, damping=damping)
            out: dict = {}

            def call(tc=tc, out=out):
                res = train(net, ds, tc, be, cfg.seed)
                out["summary"] = res.summary
                out["status"] = res.status
                return res

            rec = self.case({**base, "fim": name, "widths": list(net.widths), "n": ds.n_train, "c": 1,
                             "n_params": net.n_params}, call, None,
                            "not modelled (includes train()'s setup: Θ̄ on the training set, theory lines, Eq. 22 check)",
                            pbytes, extra={"damping": damping})
            if rec["status"] == "ok":
                summ = out.get("summary", {})
                rec["train_status"] = out.get("status")
                rec["train_setup_seconds"] = summ.get("setup_seconds")
                rec["train_seconds"] = summ.get("seconds")

    def run_operators(self, backend: str, dtype: str, width: int, ds) -> None:
        """G v and G⁻¹ v (:mod:`ngdref.fisher.operators`) per approximation beside ``signals`` (issue 15: a G
        matvec costs about one forward + backward, peak memory within 2 × P)."""
        from ngdref.backend import get_backend, to_device
        from ngdref.fisher.operators import FisherOperator

        cfg = self.cfg
        be = get_backend(backend, dtype)
        net = self._network(cfg.input_dim, width)
        params = net.init(cfg.seed, be)
        x = to_device(ds.x_train, be)
        p = net.n_params
        pbytes = p * _itemsize(dtype)
        common = {"backend": backend, "dtype": dtype, "width": width, "widths": list(net.widths),
                  "n": int(x.shape[0]), "c": 1, "n_params": p, "group": "operator"}
        ref = self.case({**common, "case": "signals"}, lambda: net.signals(params, x), param_bytes=pbytes)
        signals_s = ref.get("median_s")
        sig = net.signals(params, x)
        v = to_device(np.random.default_rng(cfg.seed).standard_normal(p), be)
        for name in fisher_names(cfg):
            try:
                fim, damping, note = make_fisher(name, net, cfg.damping, cfg.fallback_damping)
            except Exception as exc:
                self._record({**common, "case": "G-matvec", "fim": name}, "error", f"construction failed: {exc}",
                             param_bytes=pbytes)
                continue
            for of in ("G", "G-inverse"):
                op = FisherOperator(fim, sig, of)
                try:
                    if of == "G-inverse":
                        op.matvec(v)  # the N-sized factors, once (kept by the operator)
                except Exception as exc:
                    self._record({**common, "case": f"{of}-matvec", "fim": name}, "error",
                                 f"{type(exc).__name__}: {exc}"[:400], param_bytes=pbytes)
                    continue
                extra = {"damping": damping}
                if note:
                    extra["damping_note"] = note
                rec = self.case({**common, "case": f"{of}-matvec", "fim": name}, lambda: op.matvec(v),
                                param_bytes=pbytes, extra=extra)
                if rec["status"] == "ok" and signals_s:
                    rec["over_signals"] = rec["median_s"] / signals_s

    def run_analytic(self) -> None:
        from ngdref.kernels import analytic_kernels

        base = {"backend": "numpy", "dtype": "float64", "group": "analytic", "case": "analytic_kernels"}
        m0 = self.cfg.analytic_input_dim
        net = self._network(m0, max(self.cfg.widths))
        for n in self.cfg.analytic_n:
            ds = self._dataset(n, m0, data="gaussian")
            x = np.array(ds.x_train)
            fl, model = F.analytic_kernels(n, m0, net.depth)
            self.case({**base, "n": n, "widths": list(net.widths), "c": 1, "input_dim": m0,
                       "activation": self.cfg.activation},
                      lambda: analytic_kernels(net, x).ntk, fl, model,
                      extra={"inputs": "Gaussian, unit-norm rows"})

    def run_peer(self, ds) -> dict:
        from .peer import run_peer

        return run_peer(self, ds)

    def run_cli(self) -> None:
        base = {"backend": "numpy", "dtype": "float64", "group": "cli", "case": "ngdref train --fim unit"}
        exe = shutil.which("ngdref")
        cmd = [exe, "train", "--fim", "unit"] if exe else [sys.executable, "-c",
                                                           "from ngdref_cli.main import main; main()", "train",
                                                           "--fim", "unit"]
        # the command runs under a small wrapper whose only child it is: the wrapper's RUSAGE_CHILDREN
        # high-water mark is then the command's own peak RSS (this process has other children: the probes)
        wrapper = [sys.executable, "-c", _RSS_WRAPPER, *cmd]
        gemm_before = _gemm4096_s()
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(wrapper, capture_output=True, text=True, timeout=self.cfg.cli_timeout_s,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            self._record(base, "error", f"timed out after {self.cfg.cli_timeout_s:.0f} s",
                         extra={"command": " ".join(cmd), "wall_s": self.cfg.cli_timeout_s})
            return
        wall = time.perf_counter() - t0
        gemm = min(gemm_before, _gemm4096_s())
        stderr, peak_rss = _split_rss_line(proc.stderr)
        extra = {"command": "ngdref train --fim unit" if exe else " ".join(cmd), "wall_s": wall,
                 "returncode": proc.returncode, "stderr_tail": stderr[-800:], "stdout_tail": proc.stdout[-1500:],
                 "median_s": wall, "times_s": [wall], "repeats": 1, "peak_rss_bytes": peak_rss,
                 "gemm4096_s": gemm, "over_gemm4096": wall / gemm,
                 "timing": "one run of the command, wall clock including interpreter start-up and data loading; "
                           "gemm4096_s = the faster of two 4096×4096 float64 products timed just before and after"}
        status = "ok" if proc.returncode == 0 else "error"
        self._record(base, status, "" if status == "ok" else f"exit code {proc.returncode}", extra=extra)

    # -- all -----------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        t_start = time.perf_counter()
        backends, skipped_backends = available_backends(cfg.backends)
        info = machine_info()
        load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
        self.log(f"suite {cfg.name}: backends {backends}, widths {list(cfg.widths)}, dtypes {list(cfg.dtypes)}")
        ds = self._dataset(cfg.n, cfg.input_dim)
        for backend in backends:
            for dtype in cfg.dtypes:
                self.run_gemm(backend, dtype)
            for dtype in cfg.dtypes:
                for width in sorted(cfg.widths):
                    limit = cfg.max_width.get(backend)
                    if limit is not None and width > limit:
                        continue
                    self.run_width(backend, dtype, width, ds)
        if cfg.operator_cases:
            for backend in backends:
                for dtype in cfg.dtypes:
                    for width in sorted(cfg.widths):
                        limit = cfg.max_width.get(backend)
                        if limit is None or width <= limit:
                            self.run_operators(backend, dtype, width, ds)
        peer = {"status": "off"}
        if "numpy" in backends:
            self.run_explicit()
            if cfg.train_case:
                for dtype in cfg.train_dtypes:
                    self.run_train("numpy", dtype, max(cfg.widths), ds)
            self.run_analytic()
            peer = self.run_peer(ds) if cfg.peer != "off" else {"status": "off (--peer off)"}
            if cfg.cli_train:
                self.run_cli()
        # the GEMM rate again at the end (the machine may be shared): the floors use the better of the two
        for backend in backends:
            for dtype in cfg.dtypes:
                first = self.gemm[f"{backend}/{dtype}"]
                self.run_gemm(backend, dtype)
                last = self.gemm[f"{backend}/{dtype}"]
                last["sizes"] = [dict(r, when="start") for r in first["sizes"]] + [dict(r, when="end") for r in last["sizes"]]
                last["best_gflops_per_s"] = max(first["best_gflops_per_s"], last["best_gflops_per_s"])
                last["note"] = "median of 3 after one warm-up, C = A @ B, square; measured at the start and the end " \
                               "of the run, the floor uses the better rate"
        for rec in self.cases:
            rate = self.gemm_rate(rec["backend"], rec["dtype"])
            if rec["status"] == "ok" and rec.get("flops") and rate:
                rec["gemm_floor_s"] = rec["flops"] / rate
                rec["time_over_floor"] = rec["median_s"] / rec["gemm_floor_s"]
        result = {
            "schema": SCHEMA,
            "suite": cfg.name,
            "command": " ".join(["python -m benchmarks"] + sys.argv[1:]) if sys.argv and "benchmarks" in sys.argv[0] else None,
            "machine": info,
            "settings": cfg.to_dict(),
            "backends": backends,
            "skipped_backends": skipped_backends,
            "fims": fisher_names(cfg),
            "timing": TIMING_NOTE,
            "memory": MEMORY_NOTE,
            "flop_model": (F.__doc__ or "").strip(),
            "gemm": self.gemm,
            "cases": self.cases,
            "peer": peer,
            "notes": self.notes,
        }
        result["ratios"] = compute_ratios(result)
        result["targets"] = evaluate_targets(result)
        result["elapsed_s"] = time.perf_counter() - t_start
        result["load_average"] = {
            "start": list(load_start) if load_start else None,
            "end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "note": "1/5/15-minute load averages; above ~0 the machine was shared with other work while timing",
        }
        return result


#: runs ``sys.argv[1:]`` and prints its peak RSS (bytes) as the last stderr line
_RSS_WRAPPER = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
                "print('peak_rss_bytes', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, file=sys.stderr); "
                "sys.exit(r.returncode)")


def _split_rss_line(stderr: str) -> tuple[str, int | None]:
    """(stderr without the wrapper's last line, the peak RSS it reports)."""
    head, _, last = stderr.rstrip("\n").rpartition("\n")
    if last.startswith("peak_rss_bytes "):
        return head, int(last.split()[1])
    return stderr, None


def _gemm4096_s(n: int = 4096) -> float:
    """Wall time of one n×n float64 product (after a small warm-up product), n = 4096: the yardstick
    of issue 17's target for ``ngdref train --fim unit`` (≤ 5× this, measured in the same run)."""
    a = np.random.default_rng(0).standard_normal((n, n))
    b = a.T.copy()
    a[:64] @ b  # warm-up: BLAS threads and buffers
    t0 = time.perf_counter()
    a @ b
    return time.perf_counter() - t0


# --------------------------------------------------------------------------------------
# ratios and targets
# --------------------------------------------------------------------------------------
def _ok(cases, **match) -> list[dict]:
    return [c for c in cases if c["status"] == "ok" and all(c.get(k) == v for k, v in match.items())]


def _one(cases, **match) -> dict | None:
    found = _ok(cases, **match)
    return found[0] if found else None


def _safe_ratio(a, b):
    if a is None or b is None or not b:
        return None
    return a / b


def compute_ratios(result: dict) -> dict:
    cases = result["cases"]
    out: dict = {}
    # structured / explicit, per approximation (tiny network) and for the NTK wherever both ran
    rows = []
    for c in cases:
        if c["status"] != "ok" or c.get("path") != "structured":
            continue
        other = _one(cases, group=c["group"], case=c["case"], fim=c.get("fim"), path="explicit",
                     backend=c["backend"], dtype=c["dtype"], width=c.get("width"))
        if other is None:
            continue
        rows.append({
            "group": c["group"], "case": c["case"], "fim": c.get("fim"), "backend": c["backend"], "dtype": c["dtype"],
            "width": c.get("width"), "n_params": c.get("n_params"),
            "structured_s": c["median_s"], "explicit_s": other["median_s"],
            "time_structured_over_explicit": _safe_ratio(c["median_s"], other["median_s"]),
            "structured_peak_bytes": c.get("peak_bytes"), "explicit_peak_bytes": other.get("peak_bytes"),
            "memory_structured_over_explicit": _safe_ratio(c.get("peak_bytes"), other.get("peak_bytes")),
            "max_rel_diff": c.get("max_rel_diff_vs_explicit"),
        })
    out["structured_over_explicit"] = rows
    # float32 / float64
    rows = []
    for c in cases:
        if c["status"] != "ok" or c["dtype"] != "float32" or c["group"] in ("gemm",):
            continue
        other = _one(cases, group=c["group"], case=c["case"], fim=c.get("fim"), path=c.get("path"),
                     backend=c["backend"], dtype="float64", width=c.get("width"))
        if other is None:
            continue
        rows.append({"id": other["id"], "group": c["group"], "case": c["case"], "fim": c.get("fim"),
                     "path": c.get("path"), "backend": c["backend"], "width": c.get("width"),
                     "float32_s": c["median_s"], "float64_s": other["median_s"],
                     "time_float32_over_float64": _safe_ratio(c["median_s"], other["median_s"])})
    out["float32_over_float64"] = rows
    g = result.get("gemm", {})
    out["gemm_float32_over_float64"] = {
        b: _safe_ratio(g[f"{b}/float64"]["best_gflops_per_s"], g[f"{b}/float32"]["best_gflops_per_s"])
        for b in ("numpy", "cupy") if f"{b}/float64" in g and f"{b}/float32" in g
    }
    # cupy / numpy
    rows = []
    for c in cases:
        if c["status"] != "ok" or c["backend"] != "cupy":
            continue
        other = _one(cases, group=c["group"], case=c["case"], fim=c.get("fim"), path=c.get("path"),
                     backend="numpy", dtype=c["dtype"], width=c.get("width"))
        if other is None:
            continue
        rows.append({"id": c["id"], "cupy_s": c["median_s"], "numpy_s": other["median_s"],
                     "time_cupy_over_numpy": _safe_ratio(c["median_s"], other["median_s"])})
    out["cupy_over_numpy"] = rows if rows else "no GPU backend in this run"
    # memory of the structured step over the parameter memory
    out["step_peak_over_params"] = [
        {"id": c["id"], "fim": c["fim"], "backend": c["backend"], "dtype": c["dtype"], "width": c["width"],
         "peak_bytes": c.get("peak_bytes"), "param_bytes": c.get("param_bytes"),
         "peak_over_params": c.get("peak_over_params")}
        for c in _ok(cases, group="fisher", case="step")
    ]
    peer = result.get("peer") or {}
    out["ntk_peer_over_ngdref"] = peer.get("rows", peer.get("status"))
    return out


def evaluate_targets(result: dict) -> dict:
    cases = result["cases"]
    cfg = result["settings"]
    w = cfg["target_width"]
    targets: dict = {}

    # 1. empirical NTK vs neural-tangents
    peer = result.get("peer") or {}
    prow = [r for r in peer.get("rows", []) if r.get("speedup") is not None]
    if prow:
        # the issue states the target at paper scale (M = target width); other widths are shown
        at_target = [r for r in prow if r["width"] == w]
        judged = at_target or prow
        targets["ntk_vs_neural_tangents_3x"] = {
            "target": f"ngdref's empirical NTK ≥ 3× faster than neural-tangents (same network, weights, float64), "
                      f"judged at M = {w}" + ("" if at_target else " (not in this run: judged at every width)"),
            "met": all(r["speedup"] >= 3 for r in judged),
            "rows": [{"width": r["width"], "speedup": r["speedup"]} for r in prow],
        }
    else:
        targets["ntk_vs_neural_tangents_3x"] = {"target": "≥ 3× faster than neural-tangents", "met": None,
                                                "status": peer.get("status", "skipped")}

    # 2. Θ̄ and one NGD step within 3× of the GEMM floor and ≤ 2 s at M = target, float64
    rows = []
    for name in result.get("fims", []):
        for case in ("coefficient", "direction", "step"):
            c = _one(cases, group="fisher", case=case, fim=name, backend="numpy", dtype="float64", width=w)
            if c is None:
                continue
            rows.append({"fim": name, "case": case, "median_s": c["median_s"], "gemm_floor_s": c.get("gemm_floor_s"),
                         "time_over_floor": c.get("time_over_floor"),
                         "within_2s": c["median_s"] <= 2.0,
                         "within_3x_floor": (c.get("time_over_floor") or math.inf) <= 3.0})
    judged = [r for r in rows if r["case"] in ("coefficient", "step")]
    targets["fisher_step_speed"] = {
        "target": f"Θ̄ and one NGD step of every approximation ≤ 2 s and within 3× of the GEMM floor at M = {w}, "
                  "float64 (judged on `coefficient` and `step`; `direction` shown for reference)",
        "met": (all(r["within_2s"] and r["within_3x_floor"] for r in judged) if judged else None),
        "met_2s": (all(r["within_2s"] for r in judged) if judged else None),
        "met_3x_floor": (all(r["within_3x_floor"] for r in judged) if judged else None),
        "rows": rows,
        **({} if rows else {"status": f"not evaluated: M = {w} float64 NumPy not in this run"}),
    }

    # 3. structured step peak memory ≤ 3 × parameter memory
    rows = [{"fim": c["fim"], "peak_over_params": c.get("peak_over_params"), "peak_bytes": c.get("peak_bytes"),
             "param_bytes": c.get("param_bytes")}
            for c in _ok(cases, group="fisher", case="step", backend="numpy", dtype="float64", width=w)]
    targets["step_memory"] = {
        "target": f"structured step peak memory ≤ 3 × parameter memory (P × itemsize) at M = {w}, float64",
        "met": (all((r["peak_over_params"] or math.inf) <= 3 for r in rows) if rows else None),
        "rows": rows,
        **({} if rows else {"status": f"not evaluated: M = {w} float64 NumPy not in this run"}),
    }

    # 4. `ngdref train --fim unit` < 30 s
    c = next((c for c in cases if c["group"] == "cli"), None)
    if c is None:
        targets["cli_train_unit_30s"] = {"target": "`ngdref train --fim unit` (defaults, 10 steps) < 30 s",
                                         "met": None, "status": "not run in this suite"}
    elif c["status"] != "ok":
        targets["cli_train_unit_30s"] = {"target": "`ngdref train --fim unit` < 30 s", "met": None if c["status"] == "not available" else False,
                                         "status": f"{c['status']}: {c['note']}", "wall_s": c.get("wall_s")}
    else:
        targets["cli_train_unit_30s"] = {"target": "`ngdref train --fim unit` (defaults, 10 steps) < 30 s",
                                         "met": c["wall_s"] < 30.0, "wall_s": c["wall_s"]}
    return targets


def run_suite(cfg: SuiteConfig, log: Callable[[str], None] | None = None) -> dict:
    """Run a suite and return the result (a JSON-serialisable dict)."""
    return Runner(cfg, log).run()
