"""Isotropy of Θ̄(x, x) across approximations and widths (Eq. 12, Fig. 3)."""

from __future__ import annotations

import time

import numpy as np

from ..backend import Backend, to_device
from ..diagnostics import isotropy
from ..fisher import fisher_class
from ..network import Network


def isotropy_row(network: Network, fim_name: str, x_host: np.ndarray, seed: int, backend: Backend,
                 damping: float | None = 0.0, fim_options: dict | None = None) -> dict:
    """cond(Θ̄), measured α (mean diagonal) and analytic α for one network and approximation.

    ``damping`` ρ applies where G has a damping term (0 elsewhere: a sweep's one ρ for every G);
    None takes the approximation's own default (its spec: 0, or 1e-12 for unit-wise), as ``train`` does."""
    params = network.init(seed, backend)
    x = to_device(x_host, backend)
    t0 = time.perf_counter()
    cls = fisher_class(fim_name)
    if damping is not None:
        damping = cls.spec.applicable_damping(damping)  # Fig. 3's ρ applies where G has a damping term
    fim = cls(network, damping, **(fim_options or {}))
    signals = network.signals(params, x)
    stats = isotropy(fim.coefficient(signals))
    seconds = time.perf_counter() - t0
    alpha = fim.analytic_alpha(x_host.shape[0])
    return {
        "fim": fim_name,
        "width": network.widths[1],
        "depth": network.depth,
        "seed": seed,
        "damping": fim.damping,
        "condition_number": stats["condition_number"],
        "lambda_min": stats["lambda_min"],
        "lambda_max": stats["lambda_max"],
        "alpha_measured": stats["mean_diagonal"],
        "alpha_analytic": alpha,
        "measured_over_analytic": (stats["mean_diagonal"] / alpha) if alpha else None,
        "alpha_note": fim.alpha_note(),
        "seconds": seconds,
    }


def isotropy_sweep(fim_names, widths, depth, activation, x_host, seed, backend, sigma_w2=2.0, sigma_b2=0.5,
                   shift=1.0, damping=0.0, n_outputs=1, progress=None, fim_options: dict | None = None) -> list[dict]:
    """:func:`isotropy_row` for every width and approximation; ``fim_options`` maps a name to its
    constructor options (Σ of ``layer``, K-FAC's bias mode)."""
    rows = []
    fim_options = fim_options or {}
    for width in widths:
        net = Network.build(x_host.shape[1], width, depth, n_outputs, activation, shift, sigma_w2, sigma_b2)
        for name in fim_names:
            rows.append(isotropy_row(net, name, x_host, seed, backend, damping, fim_options.get(name)))
            if progress is not None:
                progress(rows[-1])
    return rows
