"""TRANSITIONAL: the α functions moved to their approximations' modules (ngdref.fisher.*)."""

from __future__ import annotations

_HOMES = {
    "kfac_alpha": "ngdref.fisher.kfac",
    "layerwise_alpha": "ngdref.fisher.layerwise",
    "layerwise_weights": "ngdref.fisher.layerwise",
    "tridiagonal_alpha": "ngdref.fisher.layerwise",
    "tridiagonal_alpha_closed_form": "ngdref.fisher.layerwise",
    "tridiagonal_sigma": "ngdref.fisher.layerwise",
    "unit_alpha": "ngdref.fisher.unitwise",
    "shifted_relu_unit_alpha": "ngdref.fisher.unitwise",
    "layer_gammas": "ngdref.kernels",
}


def __getattr__(name):
    import importlib

    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    if name == "exact_alpha":
        return lambda: 1.0
    if name == "block_diagonal_alpha":
        return lambda L: float(L)
    if name == "analytic_alpha":
        from .fisher import get_fisher

        names = {"exact": "exact", "block-diagonal": "bd", "tri-diagonal": "tridiag", "layer-wise": "layer",
                 "kfac": "kfac", "unit-wise": "unit"}

        def analytic_alpha(method, net, n_train=None, sigma=None, forster=False):
            from .errors import ConfigError
            from .fisher.kfac import kfac_alpha
            from .fisher.unitwise import unit_alpha
            if method not in names:
                raise ConfigError(f"unknown method {method!r}")
            if method == "kfac":
                if n_train is None:
                    raise ConfigError("method 'kfac' needs n_train (α = N L)")
                return kfac_alpha(n_train, net.depth, net.input_dim, net.has_bias, forster)
            if method == "unit-wise":
                return unit_alpha(net)
            if method == "layer-wise":
                if sigma is None:
                    raise ConfigError("method 'layer-wise' needs sigma")
                from .fisher.layerwise import layerwise_alpha
                return layerwise_alpha(sigma)
            return get_fisher(names[method], net).analytic_alpha(n_train or 1)

        return analytic_alpha
    raise AttributeError(name)
