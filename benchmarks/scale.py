"""One NGD step of every approximation at large width, each in a fresh process (issue 17, target 2).

    python -m benchmarks.scale --widths 16384 --out scale.json                 # NumPy, this machine
    python -m benchmarks.scale --backend cupy --widths 16384,32768 --out ...   # GPU (gpu_check.sh)

Per width and approximation: build the network (L = 3, M0 = 784, N = 100 MNIST 0/7 as in the
suite), draw θ, and time one step — signals, direction Δθ = G⁻¹∇L (each approximation's default
damping, as ``ngdref train``), in-place update θ ← θ − ηΔθ — as wall clock. Memory:

* NumPy: the step runs in a forked child (a fresh process per case); ``peak_rss_bytes`` is its
  ``getrusage`` high-water mark over initialisation and step (everything resident: interpreter,
  data, θ, signals, BLAS workspaces), reported as a multiple of P × 8 bytes; ``step_rss_growth``
  is the high-water mark minus the resident set after θ and the inputs were made.
* CuPy: the same in-process (CUDA does not survive a fork); the memory pool's size after the step
  (the pool keeps its blocks, so it is the peak of the step's allocations plus θ), as a multiple of P.

Cases that would not finish within ``--budget-s`` overall are skipped (recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .timing import run_in_child


def _step_case(name: str, width: int, backend_name: str, n: int, depth: int, seed: int = 0) -> dict:
    """Initialise and take one step; the record (time and memory of this process)."""
    import numpy as np

    from ngdref.backend import get_backend, to_device
    from ngdref.data import load_dataset
    from ngdref.fisher import get_fisher
    from ngdref.network import Network
    from ngdref.train import ngd_step

    from .timing import _resident_bytes, synchronizer

    be = get_backend(backend_name, "float64")
    sync = synchronizer(backend_name)
    if backend_name == "cupy":  # in-process: start each case from an empty pool
        import gc

        import cupy  # type: ignore[import-not-found]

        gc.collect()
        cupy.get_default_memory_pool().free_all_blocks()
    ds = load_dataset("mnist", classes=(0, 7), n_train=n, n_test=0, seed=seed)
    net = Network.build(ds.input_dim, width, depth, 1, "relu", sigma_w2=2.0, sigma_b2=0.5)
    fim = get_fisher(name, net, None)
    params = net.init(seed, be)
    x, y = to_device(ds.x_train, be), to_device(ds.y_train, be)
    sync()
    start_rss = _resident_bytes()
    t0 = time.perf_counter()
    s = net.signals(params, x)
    ngd_step(fim, params, s, (s.f - y).T, 1e-3, in_place=True)
    sync()
    wall = time.perf_counter() - t0
    del s
    rec = {"fim": name, "width": width, "n": n, "depth": depth, "backend": backend_name, "n_params": net.n_params,
           "param_bytes": 8 * net.n_params, "damping": fim.damping, "step_s": wall, "status": "ok"}
    if backend_name == "cupy":
        import cupy  # type: ignore[import-not-found]

        rec["pool_bytes"] = int(cupy.get_default_memory_pool().total_bytes())
        rec["pool_over_params"] = rec["pool_bytes"] / rec["param_bytes"]
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        rec.update(peak_rss_bytes=peak, peak_rss_over_params=peak / rec["param_bytes"],
                   step_rss_growth_bytes=peak - (start_rss or 0),
                   step_rss_growth_over_params=(peak - (start_rss or 0)) / rec["param_bytes"])
    del params
    np.zeros(1)
    return rec


def run(widths, fims=None, backend: str = "numpy", n: int = 100, depth: int = 3, budget_s: float = 600.0,
        log=print) -> dict:
    from ngdref.fisher import REGISTRY

    names = list(fims) if fims else [k for k, cls in REGISTRY.items() if not any(o.required for o in cls.spec.options)]
    t_start = time.perf_counter()
    rows = []
    for width in widths:
        for name in names:
            if time.perf_counter() - t_start > budget_s:
                rows.append({"fim": name, "width": width, "status": "skipped", "note": f"budget {budget_s:g} s spent"})
                log(f"M={width:6d} {name:11s} skipped (budget)")
                continue
            t0 = time.perf_counter()
            rec = (_step_case(name, width, backend, n, depth) if backend == "cupy"
                   else run_in_child(_step_case, name, width, backend, n, depth))
            rec.setdefault("fim", name)
            rec.setdefault("width", width)
            rec["case_wall_s"] = time.perf_counter() - t0
            rows.append(rec)
            if rec["status"] == "ok":
                mem = (f"peak RSS {rec['peak_rss_bytes'] / 2**30:.2f} GiB = {rec['peak_rss_over_params']:.2f} P"
                       if "peak_rss_bytes" in rec else f"pool {rec['pool_bytes'] / 2**30:.2f} GiB = {rec['pool_over_params']:.2f} P")
                log(f"M={width:6d} {name:11s} step {rec['step_s']:8.2f} s  {mem}")
            else:
                log(f"M={width:6d} {name:11s} {rec['status']}: {rec.get('note', '')}")
    return {"backend": backend, "widths": list(widths), "n": n, "depth": depth, "rows": rows,
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "elapsed_s": time.perf_counter() - t_start}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.splitlines()[0])
    p.add_argument("--widths", default="16384")
    p.add_argument("--fims", default="gd,exact,bd,tridiag,kfac,unit,diag,quasi-diag",
                   help="comma-separated approximations (empty: every registered one without required options)")
    p.add_argument("--backend", default="numpy", choices=("numpy", "cupy"))
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=600.0)
    p.add_argument("--out", default="")
    a = p.parse_args(argv)
    try:
        widths = tuple(int(w) for w in a.widths.split(",") if w)
    except ValueError:
        p.error(f"--widths {a.widths!r}: comma-separated positive integers, e.g. 16384,32768")
    if not widths or min(widths) < 1:
        p.error(f"--widths {a.widths!r}: comma-separated positive integers, e.g. 16384,32768")
    folder = os.path.dirname(os.path.abspath(a.out)) if a.out else ""
    if a.out and (os.path.isdir(a.out) or not os.path.isdir(folder) or not os.access(folder, os.W_OK)):
        p.error(f"--out {a.out!r}: give a file in an existing, writable folder (checked before the runs)")
    fims = tuple(f for f in a.fims.split(",") if f) or None
    result = run(widths, fims, a.backend, a.n, a.depth, a.budget_s, log=lambda s: print(s, file=sys.stderr, flush=True))
    if a.out:
        from .io import dumps, write_atomic

        write_atomic(a.out, dumps(result))  # temp file + os.replace: no half-written JSON
    else:
        print(json.dumps(result, indent=1))
    return 0 if all(r["status"] in ("ok", "skipped") for r in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
