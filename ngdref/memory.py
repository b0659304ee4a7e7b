"""Refuse explicit matrices that would not fit, before allocating them.

The limit defaults to 4 GiB and can be changed with ``NGDREF_MAX_BYTES`` (bytes,
``K``/``M``/``G`` suffixes allowed) or :func:`set_max_bytes`.
"""

from __future__ import annotations

import math
import os

from .errors import MemoryLimitError

_DEFAULT = 4 * 1024**3
_override: int | None = None


def _parse(text: str) -> int:
    text = text.strip().upper().rstrip("B")
    scale = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}.get(text[-1:], 1)
    number = text[:-1] if scale != 1 else text
    return int(float(number) * scale)


def max_bytes() -> int:
    """The current limit in bytes for one explicit allocation."""
    if _override is not None:
        return _override
    env = os.environ.get("NGDREF_MAX_BYTES")
    return _parse(env) if env else _DEFAULT


def set_max_bytes(limit: int | None) -> None:
    """Set (or with ``None`` reset) the limit for explicit allocations."""
    global _override
    _override = None if limit is None else int(limit)


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
