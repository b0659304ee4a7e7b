"""ngdref — a reference implementation of Karakida & Osawa (NeurIPS 2020),
"Understanding Approximate Fisher Information for Fast Convergence of Natural
Gradient Descent in Wide Neural Networks".

Layout mirrors the paper: :mod:`ngdref.network` (Eq. 1–2, S.64–S.65),
:mod:`ngdref.jacobian` and :mod:`ngdref.ntk` (Eq. 6, S.66–S.68), the Fisher
family in :mod:`ngdref.fisher` (Sections 3–5), analytic kernels in
:mod:`ngdref.kernels` (Section E), dynamics in :mod:`ngdref.dynamics`
(Eq. 5, 10, 22, 24), data in :mod:`ngdref.data`.
"""

from .activations import ACTIVATIONS, Activation, get_activation
from .backend import Backend, get_backend, namespace_of, to_device, to_host
from .errors import ConfigError, MemoryLimitError, NgdrefError
from .jacobian import jacobian, jvp, layer_jacobian, mse_gradient, unit_jacobian, vjp
from .network import Network, Signals, function_vector
from .ntk import empirical_ntk, layer_ntk, layer_ntks

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "Backend",
    "ConfigError",
    "MemoryLimitError",
    "Network",
    "NgdrefError",
    "Signals",
    "empirical_ntk",
    "function_vector",
    "get_activation",
    "get_backend",
    "jacobian",
    "jvp",
    "layer_jacobian",
    "layer_ntk",
    "layer_ntks",
    "mse_gradient",
    "namespace_of",
    "to_device",
    "to_host",
    "unit_jacobian",
    "vjp",
]
