"""What an approximation *is*, declared once: :class:`FisherSpec`, and the registry of them.

Every approximation class under :mod:`ngdref.fisher` carries a ``spec`` and is added to
:data:`REGISTRY` by :func:`register`; everything outside this package (training, isotropy,
predictions, the CLI, the figures, the benchmarks) reads the spec instead of testing names.
A new approximation is one class with a spec and ``@register``: it then appears in
``ngdref train --fim …``, ``isotropy``, ``predict --kernel empirical``, ``--help`` and the
benchmark suite without another edit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from ..errors import ConfigError

__all__ = ["DAMPING_POLICIES", "FisherOption", "FisherSpec", "REGISTRY", "fisher_class", "fisher_names",
           "get_fisher", "register", "unregister"]

#: "none": G has no damping term (gd, G = I); "optional": ρ >= 0, ρ = 0 the pseudo-inverse
#: (zero-damping limit); "required": ρ > 0.
DAMPING_POLICIES = ("none", "optional", "required")


@dataclass(frozen=True)
class FisherOption:
    """An extra constructor option of an approximation (Σ of the layer-wise FIM, K-FAC's bias mode)."""

    name: str
    help: str
    #: host-side parser from the command-line string (``None``: the string itself)
    parse: Callable[[str], object] | None = None
    choices: tuple[str, ...] = ()
    required: bool = False


@dataclass(frozen=True)
class FisherSpec:
    """The declarative description of one approximation G."""

    name: str
    #: in words, for figures and tables ("block-diagonal", "K-FAC")
    title: str
    summary: str
    #: the paper's equations defining G and its Θ̄
    equations: str
    aliases: tuple[str, ...] = ()
    damping: str = "optional"
    default_damping: float = 0.0
    #: why the default damping is what it is (recorded with every run)
    default_damping_reason: str = "default: ρ = 0, the pseudo-inverse (zero-damping limit)"
    #: the cross-entropy FIM Jᵀ Λ̃ J/N + ρI (Appendix D, S.159) is implemented
    cross_entropy: bool = False
    #: the paper proves Θ̄ = αI for this approximation (under its conditions, C = 1 at least)
    isotropic: bool = True
    #: the paper's isotropy (its α) also covers C > 1 outputs; False: C > 1 runs (the natural
    #: generalisation) but no α is claimed (K-FAC and unit-wise are derived for C = 1)
    multi_output_alpha: bool = True
    options: tuple[FisherOption, ...] = ()
    #: FLOP model ``flops(shape, damping) -> {"direction": (flops, formula), "coefficient": (…)}``
    #: for the benchmarks (:mod:`ngdref.fisher.cost`)
    flops: Callable | None = field(default=None, compare=False)

    def __post_init__(self):
        if self.damping not in DAMPING_POLICIES:
            raise ValueError(f"damping policy must be one of {DAMPING_POLICIES}, got {self.damping!r}")

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.options)

    def applicable_damping(self, damping: float) -> float:
        """``damping`` where G has a damping term, 0 where it has none (a sweep's ρ applied to every G)."""
        return 0.0 if self.damping == "none" else float(damping)

    def resolve_damping(self, damping: float | None) -> tuple[float, str]:
        """The damping to use and where it came from; ConfigError if the policy refuses it."""
        if damping is None:
            return (0.0, "does not apply (no damping term)") if self.damping == "none" else (
                float(self.default_damping), self.default_damping_reason)
        damping = float(damping)
        if not math.isfinite(damping) or damping < 0:
            raise ConfigError(f"damping must be a finite number >= 0, got {damping}")
        if self.damping == "none" and damping != 0:
            raise ConfigError(f"{self.name}: {self.summary}; damping does not apply (use --damping 0)")
        if self.damping == "required" and damping == 0:
            raise ConfigError(f"{self.name} needs a damping ρ > 0")
        return damping, "given"

    def parse_options(self, given: dict) -> dict:
        """Constructor options from command-line strings ``{option name: text or None}``: parsed
        with each option's parser; ConfigError for a missing required option, a value outside an
        option's choices, or an option this approximation does not take."""
        given = {k: v for k, v in given.items() if v is not None}
        unknown = sorted(set(given) - set(self.option_names))
        if unknown:
            takes = f"takes {', '.join(self.option_names)}" if self.options else "takes no options"
            raise ConfigError(f"option {', '.join(unknown)} does not apply to --fim {self.name} (it {takes})")
        out = {}
        for opt in self.options:
            if opt.name not in given:
                if opt.required:
                    raise ConfigError(f"--fim {self.name} needs its option {opt.name}: {opt.help}")
                continue
            value = given[opt.name]
            if opt.choices and value not in opt.choices:
                raise ConfigError(f"{opt.name} must be one of {', '.join(opt.choices)}, got {value!r}")
            out[opt.name] = opt.parse(value) if opt.parse is not None else value
        return out



#: name → approximation class (a subclass of :class:`ngdref.fisher.base.FisherApproximation`)
REGISTRY: dict[str, type] = {}
_ALIASES: dict[str, str] = {}


def register(cls):
    """Class decorator: add an approximation (with its ``spec``) to :data:`REGISTRY`."""
    spec = getattr(cls, "spec", None)
    if not isinstance(spec, FisherSpec):
        raise TypeError(f"{cls.__name__} needs a class attribute spec = FisherSpec(...)")
    for key in (spec.name, *spec.aliases):
        owner = _ALIASES.get(key)
        if owner is not None and owner != spec.name:
            raise ValueError(f"Fisher name {key!r} is already taken by {owner!r}")
    REGISTRY[spec.name] = cls
    for key in (spec.name, *spec.aliases):
        _ALIASES[key] = spec.name
    return cls


def unregister(name: str) -> None:
    """Remove an approximation (and its aliases) from the registry (plug-ins, tests)."""
    cls = REGISTRY.pop(name)
    for key in (cls.spec.name, *cls.spec.aliases):
        _ALIASES.pop(key, None)


def fisher_names() -> tuple[str, ...]:
    """The registered names, in registration order."""
    return tuple(REGISTRY)


def fisher_class(name: str) -> type:
    """The class registered under ``name`` or one of its aliases (case and '_' / '-' insensitive)."""
    key = str(name).strip().lower().replace("_", "-")
    canonical = _ALIASES.get(key)
    if canonical is None:
        raise ConfigError(f"unknown Fisher approximation {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[canonical]


def get_fisher(name: str, network, damping: float | None = None, **options):
    """Instantiate the approximation ``name`` for ``network``; ``damping=None`` takes the spec's default."""
    return fisher_class(name)(network, damping, **options)

