"""Activation functions φ and their derivatives φ′ (Eq. 1, S.65).

Each activation is one small :class:`Activation` definition: ``phi`` and ``dphi``
take an array of any backend and use only array-API operations, so the same
definition drives the finite network (on NumPy, CuPy or the strict backend) and
the analytic kernels (on the host). ``dead_below`` records where φ′ vanishes
(φ′(u) = 0 for u < dead_below, and φ′ ≠ 0 almost everywhere above), which gives
γ = P(φ′(u) ≠ 0) of S.140–S.141 in closed form; ``None`` means φ′ ≠ 0 almost
everywhere (γ = 1).

Adding an activation: write its φ and φ′ and add a line to :data:`_FACTORIES`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from .backend import erf, namespace_of
from .errors import ConfigError


@dataclass(frozen=True)
class Activation:
    """φ, φ′ and the threshold below which φ′ = 0 (``None``: nowhere on a set of positive measure)."""

    name: str
    phi: Callable = field(repr=False, compare=False)
    dphi: Callable = field(repr=False, compare=False)
    dead_below: float | None = None
    shift: float = 0.0

    def __call__(self, x):
        return self.phi(x)

    def gamma(self, q: float) -> float:
        """γ = P(φ′(u) ≠ 0) for u ~ N(0, q) (S.140–S.141)."""
        if self.dead_below is None:
            return 1.0
        # P(u > t) = 1/2 + 1/2 erf(-t / sqrt(2 q)); for the shifted ReLU t = -s gives S.157.
        return 0.5 + 0.5 * math.erf(-self.dead_below / math.sqrt(2.0 * q))

    def to_dict(self) -> dict:
        out = {"name": self.name}
        if self.name == "shifted-relu":
            out["shift"] = self.shift
        return out


def _step(x, threshold: float):
    xp = namespace_of(x)
    return xp.astype(x > threshold, x.dtype)


def relu() -> Activation:
    """φ(x) = max(x, 0), φ′(x) = 1[x > 0]."""
    return Activation("relu", lambda x: namespace_of(x).maximum(x, 0.0), lambda x: _step(x, 0.0), dead_below=0.0)


def shifted_relu(shift: float = 1.0) -> Activation:
    """φ_s(x) = max(x, −s) (Section C.3.3, S.157), φ′_s(x) = 1[x > −s]."""
    s = float(shift)
    if not math.isfinite(s) or s < 0:
        raise ConfigError(f"shifted-relu needs a finite shift s >= 0, got {shift}")

    def phi(x):
        m = _step(x, -s)
        return m * x - (1.0 - m) * s

    return Activation("shifted-relu", phi, lambda x: _step(x, -s), dead_below=-s, shift=s)


def tanh() -> Activation:
    """φ(x) = tanh x, φ′(x) = 1 − tanh² x."""

    def phi(x):
        return namespace_of(x).tanh(x)

    def dphi(x):
        t = namespace_of(x).tanh(x)
        return 1.0 - t * t

    return Activation("tanh", phi, dphi)


_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


def erf_activation() -> Activation:
    """φ(x) = erf x, φ′(x) = (2/√π) exp(−x²)."""

    def dphi(x):
        return _TWO_OVER_SQRT_PI * namespace_of(x).exp(-(x * x))

    return Activation("erf", erf, dphi)


def linear() -> Activation:
    """φ(x) = x, φ′(x) = 1 (not covered by Assumption 1; useful as a check)."""

    def dphi(x):
        return namespace_of(x).ones_like(x)

    return Activation("linear", lambda x: x, dphi)


_FACTORIES: dict[str, Callable[..., Activation]] = {
    "relu": relu,
    "tanh": tanh,
    "erf": erf_activation,
    "shifted-relu": shifted_relu,
    "linear": linear,
}

ACTIVATIONS = tuple(_FACTORIES)


def get_activation(name: str | Activation, shift: float = 1.0) -> Activation:
    """Look an activation up by name (``shift`` is used by ``shifted-relu`` only)."""
    if isinstance(name, Activation):
        return name
    key = str(name).lower().replace("_", "-")
    if key not in _FACTORIES:
        raise ConfigError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return _FACTORIES[key](shift) if key == "shifted-relu" else _FACTORIES[key]()
