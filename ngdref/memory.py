"""Refuse explicit matrices that would not fit, before allocating them.

The limit defaults to 4 GiB and can be changed with ``NGDREF_MAX_BYTES`` (a positive number
of bytes, optionally with a ``K``/``M``/``G``/``T`` suffix in powers of 1024: ``4G``, ``512M``,
``1.5GiB``, ``4294967296``) or :func:`set_max_bytes`. Anything else is refused with a
:class:`~ngdref.errors.ConfigError` that says what is allowed.
"""

from __future__ import annotations

import math
import os
import re

from .errors import ConfigError, MemoryLimitError

_DEFAULT = 4 * 1024**3
_override: int | None = None


ENV = "NGDREF_MAX_BYTES"
_SCALE = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
#: a decimal number (no sign, no exponent), then optionally K/M/G/T (+ "B" or "iB") or a lone "B"
_SYNTAX = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(?:([KMGT])(?:I?B)?|B)?", re.IGNORECASE)
ALLOWED = "a positive number of bytes with an optional K, M, G or T suffix (powers of 1024), e.g. 4G, 512M or 1.5GiB"


def _shown(text) -> str:
    text = str(text)
    return repr(text) if len(text) <= 40 else repr(text[:40]) + "…"


def parse_bytes(text: str, what: str = ENV) -> int:
    """Bytes from ``text`` such as ``4G``, ``512M``, ``1.5GiB`` or ``4294967296``; ConfigError otherwise
    (a sign, an exponent, NaN, an unknown suffix, or a value below one byte)."""
    match = _SYNTAX.fullmatch(str(text).strip())
    if match is None:
        raise ConfigError(f"{what} must be {ALLOWED}; got {_shown(text)}")
    value = float(match.group(1)) * _SCALE[(match.group(2) or "").upper()]
    if not math.isfinite(value):
        raise ConfigError(f"{what} must be {ALLOWED}; got {_shown(text)} (too large)")
    value = math.floor(value)
    if value < 1:
        raise ConfigError(f"{what} must be at least one byte ({ALLOWED}); got {_shown(text)}")
    return value


def max_bytes() -> int:
    """The current limit in bytes for one explicit allocation (ConfigError for a malformed
    ``NGDREF_MAX_BYTES``: see :func:`parse_bytes`)."""
    if _override is not None:
        return _override
    env = os.environ.get(ENV, "")
    return parse_bytes(env) if env != "" else _DEFAULT  # set but empty: the default, like unset


def set_max_bytes(limit: int | None) -> None:
    """Set (or with ``None`` reset) the limit for explicit allocations: a positive number of bytes."""
    global _override
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not math.isfinite(limit) or limit < 1:
            raise ConfigError(f"the memory limit must be a positive, finite number of bytes, got {limit!r}")
        limit = int(limit)
    _override = limit


def human(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    return f"{nbytes:.1f} TiB"  # pragma: no cover


def check_alloc(shape, itemsize: int, what: str, count: int = 1) -> int:
    """Raise :class:`MemoryLimitError` if ``count`` arrays of ``shape`` would exceed the limit."""
    nbytes = count * itemsize * math.prod(int(s) for s in shape)
    limit = max_bytes()
    if nbytes > limit:
        dims = "x".join(str(int(s)) for s in shape)
        raise MemoryLimitError(
            f"{what} ({dims}) would need {human(nbytes)}, above the limit of {human(limit)}; "
            "use the structured path, a smaller network, or raise NGDREF_MAX_BYTES"
        )
    return nbytes
