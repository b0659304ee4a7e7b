"""Optional peer comparison: neural-tangents' empirical NTK against ngdref's, same weights.

Neither jax nor neural-tangents is a dependency. The peer runs in a subprocess
(:mod:`benchmarks.peer_nt`) under

1. ``--peer-python PATH`` / ``$NGDREF_BENCH_PEER_PYTHON``, e.g. a throwaway virtual
   environment ``python -m venv /tmp/peer && /tmp/peer/bin/pip install "jax[cpu]" neural-tangents``;
2. otherwise the current interpreter, if it can import both;
3. otherwise the comparison is recorded as "skipped: not installed".

For each width the weights and inputs are written to a temporary ``.npz``; ngdref's
structured NTK is timed in this process right before the peer (same weights,
float64, NumPy), and the peer's kernel is checked against ngdref's.
torch is not compared (only its presence is recorded).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from .timing import measure

PEER_SCRIPT = Path(__file__).with_name("peer_nt.py")
ENV_PEER = "NGDREF_BENCH_PEER_PYTHON"


def _has_here(*mods: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in mods)


def peer_interpreter(explicit: str | None) -> tuple[str | None, str]:
    path = explicit or os.environ.get(ENV_PEER)
    if path:
        return (path, f"given ({'--peer-python' if explicit else '$' + ENV_PEER})") if Path(path).exists() else (
            None, f"skipped: peer interpreter {path} does not exist")
    if _has_here("jax", "neural_tangents"):
        return sys.executable, "current interpreter"
    return None, "skipped: not installed (jax + neural_tangents not importable; see --peer-python)"


def peer_environment(gpu: bool) -> dict:
    """The peer's environment: this one, quiet TensorFlow logs, JAX on the CPU (unless the GPU
    suite), and XLA single-threaded when ``OPENBLAS_NUM_THREADS=1`` (so both sides use one core)."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if not gpu:
        env.setdefault("JAX_PLATFORMS", "cpu")
    if env.get("OPENBLAS_NUM_THREADS") == "1" and "XLA_FLAGS" not in env:
        env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    return env


def run_peer(runner, ds) -> dict:
    from ngdref.backend import get_backend, to_device, to_host
    from ngdref.ntk import empirical_ntk

    cfg = runner.cfg
    torch_status = "installed, not compared" if _has_here("torch") else "skipped: not installed"
    python, how = peer_interpreter(cfg.peer_python)
    out: dict = {"library": "neural_tangents", "torch": torch_status, "interpreter": python, "how": how, "rows": [],
                 "xla_flags": peer_environment(cfg.name == "gpu").get("XLA_FLAGS")}
    if python is None:
        out["status"] = how
        return out
    be = get_backend("numpy", "float64")
    x = to_device(ds.x_train, be)
    for width in cfg.peer_widths:
        net = runner._network(cfg.input_dim, width)
        params = net.init(cfg.seed, be)
        def mine_now():
            return measure(lambda: empirical_ntk(net, params, x, method="structured"), repeats=cfg.peer_repeats,
                           backend_name="numpy", budget_s=cfg.peer_budget_s, min_repeats=3, memory=False)

        before = mine_now()
        k_mine = np.asarray(to_host(empirical_ntk(net, params, x, method="structured")))
        row: dict = {"width": width, "n_params": net.n_params, "ngdref_times_s": before.times_s,
                     "ngdref_median_before_s": before.median_s, "ngdref_median_s": before.median_s}
        with tempfile.TemporaryDirectory(prefix="ngdref-peer-") as tmp:
            src = os.path.join(tmp, "in.npz")
            dst = os.path.join(tmp, "out.json")
            arrays = {f"theta_{l}": np.asarray(to_host(p)) for l, p in enumerate(params, start=1)}
            np.savez(src, x=np.asarray(ds.x_train), widths=np.asarray(net.widths), sigma_w2=net.sigma_w2,
                     sigma_b2=net.sigma_b2, **arrays)
            env = peer_environment(runner.cfg.name == "gpu")
            try:
                proc = subprocess.run(
                    [python, str(PEER_SCRIPT), src, dst, str(cfg.peer_repeats), str(cfg.explicit_jacobian_bytes),
                     str(cfg.peer_budget_s)],
                    capture_output=True, text=True, timeout=600, env=env, stdin=subprocess.DEVNULL,
                )
            except subprocess.TimeoutExpired:
                row["status"] = "error: peer timed out after 600 s"
                out["rows"].append(row)
                runner.log(f"peer M={width}: timed out")
                continue
            if proc.returncode != 0 or not os.path.exists(dst):
                row["status"] = f"error: exit {proc.returncode}: {proc.stderr[-600:]}"
                out["rows"].append(row)
                runner.log(f"peer M={width}: {row['status'][:200]}")
                continue
            # ngdref is timed before and after the peer; the two medians bracket the peer's
            # window on a shared machine, and the ratio uses their mean.
            after = mine_now()
            row["ngdref_times_s"] = before.times_s + after.times_s
            row["ngdref_median_before_s"], row["ngdref_median_after_s"] = before.median_s, after.median_s
            row["ngdref_median_s"] = mine_s = 0.5 * (before.median_s + after.median_s)
            res = json.loads(Path(dst).read_text())
            row["peer"] = {k: v for k, v in res.items() if k != "kernel_file"}
            row["status"] = res.get("status", "?")
            if res.get("status") == "ok":
                k_peer = np.load(res["kernel_file"])
                scale = float(np.max(np.abs(k_mine))) or 1.0
                row["kernel_max_rel_diff"] = float(np.max(np.abs(k_peer - k_mine)) / scale)
                row["peer_best_median_s"] = res["best_median_s"]
                row["peer_best_implementation"] = res["best_implementation"]
                row["speedup"] = res["best_median_s"] / mine_s
                runner.log(f"peer M={width}: ngdref {mine_s * 1e3:.1f} ms, neural-tangents "
                           f"{res['best_median_s'] * 1e3:.1f} ms ({res['best_implementation']}), "
                           f"speed-up {row['speedup']:.1f}×, kernel rel. diff {row['kernel_max_rel_diff']:.1e}")
            out.setdefault("versions", res.get("versions"))
        out["rows"].append(row)
    out["status"] = "ok" if any(r.get("speedup") for r in out["rows"]) else "error: no width compared"
    out["note"] = ("speedup = neural-tangents' best implementation (median) / ngdref structured empirical_ntk "
                   "(mean of its medians just before and just after the peer ran), both float64 on the CPU, same "
                   "weights; includes ngdref's signals pass; repeats cut to about peer_budget_s per implementation")
    return out
