"""`ngdref ntk`: spectrum of the empirical NTK (Eq. 6), structured and explicit side by side."""

from __future__ import annotations

import time

import numpy as np

from ..backend import Backend, to_device, to_host
from ..diagnostics import isotropy
from ..errors import MemoryLimitError
from ..memory import check_alloc
from ..network import Network
from ..ntk import empirical_ntk


def ntk_report(network: Network, x_host: np.ndarray, seed: int, backend: Backend, explicit: str = "auto") -> dict:
    """Build θ_0 from ``seed``, compute Θ(x, x) both ways and summarise its spectrum.

    ``explicit``: ``"auto"`` (when J fits in memory), ``"yes"`` (error if not), ``"no"``.
    """
    params = network.init(seed, backend)
    x = to_device(x_host, backend)
    t0 = time.perf_counter()
    k_struct = empirical_ntk(network, params, x, method="structured")
    t_struct = time.perf_counter() - t0
    out = {
        "network": network.to_dict(),
        "n_samples": int(x_host.shape[0]),
        "structured": {"seconds": t_struct, **_summary(k_struct)},
        "explicit": None,
    }
    if explicit == "no":
        return out
    itemsize = 4 if backend.dtype_name == "float32" else 8
    try:
        check_alloc((network.n_outputs * x_host.shape[0], network.n_params), itemsize, "explicit Jacobian J")
    except MemoryLimitError as err:
        if explicit == "yes":
            raise
        out["explicit_skipped"] = str(err)
        return out
    t0 = time.perf_counter()
    k_expl = empirical_ntk(network, params, x, method="explicit")
    t_expl = time.perf_counter() - t0
    ks, ke = to_host(k_struct), to_host(k_expl)
    out["explicit"] = {"seconds": t_expl, **_summary(k_expl)}
    out["max_relative_difference"] = float(np.max(np.abs(ks - ke)) / np.max(np.abs(ke)))
    return out


def _summary(k) -> dict:
    d = isotropy(k)
    ev = d.pop("eigenvalues")
    d.pop("alpha_reference")
    d.pop("deviation_from_alpha_I")
    d["trace"] = float(np.sum(ev))
    d["eigenvalues"] = ev.tolist()
    return d
