"""Peer timing: neural-tangents' empirical NTK of the *same* network and weights.

Run as a standalone script by :mod:`benchmarks.peer` — possibly under another
interpreter (a throwaway virtual environment that has ``jax`` and
``neural_tangents``), so it imports nothing from ngdref::

    python benchmarks/peer_nt.py IN.npz OUT.json [repeats] [max_jacobian_bytes] [budget_s]

``IN.npz`` holds ``x`` (N, M0), ``widths``, ``sigma_w2``, ``sigma_b2`` and
``theta_1 … theta_L`` (ngdref's augmented [W | b] blocks). The stax network is
``Dense(M_l, W_std=σ_w, b_std=σ_b, parameterization="ntk")`` with ReLU between
layers, which is ngdref's Eq. 1 exactly; NT's kernel is J Jᵀ, ngdref's J Jᵀ/N, so
the kernel is divided by N before it is written (for the agreement check).
Float64 (``jax_enable_x64``). Each NtkImplementation is jit-compiled, warmed up
once (compilation), then timed ``repeats`` times, cut so that one implementation takes
about ``budget_s`` seconds but at least 3 (median); implementations that
would materialise the full Jacobian above ``max_jacobian_bytes`` are skipped.
"""

from __future__ import annotations

import json
import statistics
import sys
import time


def main(argv: list[str]) -> int:
    src, dst = argv[1], argv[2]
    repeats = int(argv[3]) if len(argv) > 3 else 3
    max_jac = float(argv[4]) if len(argv) > 4 else 4 * 1024**3
    budget_s = float(argv[5]) if len(argv) > 5 else float("inf")
    import numpy as np

    data = np.load(src)
    widths = [int(w) for w in data["widths"]]
    sw, sb = float(data["sigma_w2"]) ** 0.5, float(data["sigma_b2"]) ** 0.5
    depth = len(widths) - 1
    x_host = data["x"]
    thetas = [data[f"theta_{l}"] for l in range(1, depth + 1)]
    result: dict = {"library": "neural_tangents", "dtype": "float64"}
    try:
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
        import neural_tangents as nt
        from neural_tangents import stax
    except Exception as exc:  # pragma: no cover - depends on the peer environment
        result["status"] = f"skipped: not importable ({type(exc).__name__}: {exc})"
        _write(dst, result)
        return 0
    result["versions"] = {"jax": jax.__version__, "neural_tangents": getattr(nt, "__version__", "?")}
    result["jax_devices"] = [str(d) for d in jax.devices()]

    layers = []
    for l in range(1, depth + 1):
        layers.append(stax.Dense(widths[l], W_std=sw, b_std=sb if sb > 0 else None, parameterization="ntk"))
        if l < depth:
            layers.append(stax.Relu())
    _, apply_fn, _ = stax.serial(*layers)
    params = []
    for l, th in enumerate(thetas, start=1):
        m_in = widths[l - 1]
        w = jnp.asarray(th[:, :m_in].T)
        b = jnp.asarray(th[:, m_in]) if sb > 0 else None
        params.append((w, b) if sb > 0 else (w, jnp.zeros((widths[l],))))
        if l < depth:
            params.append(())
    x = jnp.asarray(x_host)
    n = x.shape[0]
    n_params = sum(int(np.prod(t.shape)) for t in thetas)
    jac_bytes = n * widths[-1] * n_params * 8

    rows = []
    kernel_out = None
    for impl in (1, 2, 3):
        name = {1: "JACOBIAN_CONTRACTION", 2: "NTK_VECTOR_PRODUCTS", 3: "STRUCTURED_DERIVATIVES"}[impl]
        if impl == 1 and jac_bytes > max_jac:
            rows.append({"implementation": name, "status": f"skipped: J would need {jac_bytes / 2**30:.1f} GiB"})
            continue
        try:
            fn = jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(), vmap_axes=0, implementation=impl))
            t0 = time.perf_counter()
            k = fn(x, None, params)
            k.block_until_ready()
            warm = time.perf_counter() - t0
            t0 = time.perf_counter()
            fn(x, None, params).block_until_ready()  # one compiled call sizes the repeats
            one = time.perf_counter() - t0
            times = []
            for _ in range(max(3, min(repeats, int(budget_s / max(one, 1e-9))))):
                t0 = time.perf_counter()
                fn(x, None, params).block_until_ready()
                times.append(time.perf_counter() - t0)
            rows.append({"implementation": name, "status": "ok", "times_s": times, "median_s": statistics.median(times),
                         "warmup_incl_compile_s": warm})
            if kernel_out is None:
                # (N, N, C, C) -> (C N, C N) output-major, divided by N as in ngdref
                kk = np.asarray(k)
                c = widths[-1]
                kernel_out = np.transpose(kk, (2, 0, 3, 1)).reshape(c * n, c * n) / n
        except Exception as exc:  # pragma: no cover - depends on the peer environment
            rows.append({"implementation": name, "status": f"error: {type(exc).__name__}: {exc}"[:500]})
    result["implementations"] = rows
    ok = [r for r in rows if r["status"] == "ok"]
    if ok:
        best = min(ok, key=lambda r: r["median_s"])
        result["status"] = "ok"
        result["best_implementation"] = best["implementation"]
        result["best_median_s"] = best["median_s"]
        np.save(dst + ".kernel.npy", kernel_out)
        result["kernel_file"] = dst + ".kernel.npy"
    else:
        result["status"] = "error: no implementation ran"
    _write(dst, result)
    return 0


def _write(path: str, obj: dict) -> None:
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=1)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
