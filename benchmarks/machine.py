"""What the benchmark ran on: CPU, BLAS, library versions, environment, GEMM rate."""

from __future__ import annotations

import datetime as _dt
import io
import os
import platform
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np

#: environment variables recorded as they are (never changed by the benchmark)
ENV_VARS = (
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NGDREF_MAX_BYTES",
    "NGDREF_BACKEND",
    "CUPY_TF32",
    "CUDA_VISIBLE_DEVICES",
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The SIMD flags that matter for BLAS speed."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f.startswith(("avx", "fma", "sse4")))
    except OSError:
        pass
    return []


def memory_total_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def blas_info() -> dict:
    """BLAS/LAPACK as reported by ``numpy.show_config`` (and threadpoolctl when installed)."""
    info: dict = {}
    try:
        cfg = np.show_config(mode="dicts")
        deps = cfg.get("Build Dependencies", {})
        for key in ("blas", "lapack"):
            d = deps.get(key, {})
            info[key] = {k: d.get(k) for k in ("name", "version", "openblas configuration") if d.get(k)}
        info["simd"] = cfg.get("SIMD Extensions", {})
    except Exception as exc:  # older NumPy: parse the printed text
        buf = io.StringIO()
        with redirect_stdout(buf):
            np.show_config()
        info["show_config"] = buf.getvalue()[:4000]
        info["error"] = repr(exc)
    try:
        from threadpoolctl import threadpool_info

        info["threadpoolctl"] = [
            {k: v for k, v in d.items() if k in ("internal_api", "version", "num_threads", "threading_layer", "architecture")}
            for d in threadpool_info()
        ]
    except ImportError:
        info["threadpoolctl"] = "not installed (the kernel OpenBLAS picked at run time is not recorded)"
    return info


def git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=False
        )
        commit = out.stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True,
            timeout=10, check=False,
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "") if commit else None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict:
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("scipy", "ngdref", "cupy", "jax", "neural_tangents", "torch"):
        m = sys.modules.get(mod)
        if m is None:
            continue
        out[mod] = getattr(m, "__version__", "?")
    try:
        import scipy

        out["scipy"] = scipy.__version__
    except ImportError:
        pass
    try:
        import ngdref

        out["ngdref"] = ngdref.__version__
    except ImportError:
        pass
    return out


def gpu_info() -> dict | None:
    """Device name and memory when CuPy and a GPU are usable, otherwise ``None``."""
    try:
        import cupy  # type: ignore[import-not-found]

        dev = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(dev.id)
        name = props.get("name", b"")
        return {
            "name": name.decode() if isinstance(name, bytes) else str(name),
            "total_memory_bytes": int(props.get("totalGlobalMem", 0)),
            "cupy": cupy.__version__,
            "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
        }
    except Exception:
        return None


def machine_info() -> dict:
    root = Path(__file__).resolve().parent.parent
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_total_bytes": memory_total_bytes(),
        "platform": platform.platform(),
        "versions": versions(),
        "blas": blas_info(),
        "env": {k: os.environ.get(k) for k in ENV_VARS},
        "git_commit": git_commit(root),
        "gpu": gpu_info(),
    }
