"""NumPy-vs-device parity on the same seeds (used by ``benchmarks/gpu_check.sh``).

For each seed, the same network (drawn on the host, :meth:`Network.init`) and the
same inputs are evaluated on NumPy and on ``other`` (default ``cupy``; ``strict``
exercises the script on a CPU-only machine). Compared, in float64, with the
relative error ``max|a − b| / max|b|`` (b = NumPy):

* the empirical NTK (structured path),
* Θ̄(x, x) of every approximation in the registry (except ``layer``),
* one NGD direction of every approximation (flattened).

Every comparison must be ≤ ``tol`` (default 1e-10). The network is wide against
N (M = 512, N = 50 by default) so that the kernels are well conditioned and the
zero-damping pseudo-inverse cut-off does not decide borderline eigenvalues
differently on the two backends.
"""

from __future__ import annotations

import math

import numpy as np


def parity(other: str = "cupy", seeds=(0, 1), width: int = 512, n: int = 50, depth: int = 3,
           tol: float = 1e-10, damping: float = 0.0, log=print) -> dict:
    from ngdref.backend import get_backend, to_device, to_host
    from ngdref.data import load_dataset
    from ngdref.network import Network
    from ngdref.ntk import empirical_ntk

    from .suite import SuiteConfig, fisher_names, make_fisher

    cfg = SuiteConfig()
    rows = []
    backends = {"numpy": get_backend("numpy", "float64"), other: get_backend(other, "float64")}
    for seed in seeds:
        ds = load_dataset("mnist", classes=(0, 7), n_train=n, n_test=0, seed=seed)
        net = Network.build(784, width, depth, 1, "relu", sigma_w2=2.0, sigma_b2=0.5)
        res: dict = {}
        for name, be in backends.items():
            params = net.init(seed, be)
            x, y = to_device(ds.x_train, be), to_device(ds.y_train, be)
            s = net.signals(params, x)
            out = {"ntk": np.asarray(to_host(empirical_ntk(net, params, x, method="structured")))}
            for fim_name in fisher_names(cfg):
                fim, _, _ = make_fisher(fim_name, net, damping, cfg.fallback_damping)
                out[f"coefficient[{fim_name}]"] = np.asarray(to_host(fim.coefficient(s)))
                out[f"direction[{fim_name}]"] = np.asarray(to_host(net.flatten(fim.direction(params, x, y, s))))
            res[name] = out
        for key, ref in res["numpy"].items():
            got = res[other][key]
            scale = float(np.max(np.abs(ref))) or 1.0
            err = float(np.max(np.abs(got - ref)) / scale)
            ok = bool(math.isfinite(err) and err <= tol)
            rows.append({"seed": seed, "quantity": key, "rel_err": err, "ok": ok})
            log(f"seed {seed} {key:28s} rel err {err:.2e} {'ok' if ok else 'FAIL'}")
    return {"other": other, "tol": tol, "width": width, "n": n, "depth": depth, "damping": damping,
            "seeds": list(seeds), "rows": rows, "ok": all(r["ok"] for r in rows)}
