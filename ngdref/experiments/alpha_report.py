"""`ngdref alpha`: analytic α of each approximation (Theorem 4.1, Lemma 4.3, S.107/S.111, S.128/S.157)."""

from __future__ import annotations

from ..fisher import fisher_class
from ..kernels import layer_gammas, order_parameters
from ..network import Network


def alpha_report(network: Network, fim_names, n_train: int, damping: float = 0.0,
                 fim_options: dict | None = None) -> dict:
    """α per approximation for ``network`` and N = ``n_train``, plus q_l and γ_l per layer (S.138–S.141);
    ``fim_options`` maps a name to its constructor options."""
    q = order_parameters(network)
    gammas = layer_gammas(network)
    layers = [
        {"layer": l, "width": network.widths[l], "q": q[l - 1], "gamma": gammas[l - 1],
         "gamma_times_width": gammas[l - 1] * network.widths[l]}
        for l in range(1, network.depth)
    ]
    rows = []
    for name in fim_names:
        cls = fisher_class(name)
        fim = cls(network, cls.spec.applicable_damping(damping), **(fim_options or {}).get(name, {}))
        alpha = fim.analytic_alpha(n_train)
        rows.append({
            "fim": name,
            "alpha": alpha,
            "alpha_over_width": None if alpha is None else alpha / network.widths[1],
            "note": fim.alpha_note(),
        })
    return {"network": network.to_dict(), "n_train": n_train, "layers": layers, "rows": rows}
