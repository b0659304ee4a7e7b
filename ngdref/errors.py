"""Exceptions a user can cause. The CLI turns every :class:`NgdrefError` into one line and exit code 2."""

from __future__ import annotations


def one_line(text, limit: int | None = 300) -> str:
    """``text`` on one line (whitespace runs, newlines included, become one space), cut to
    ``limit`` characters (``None``: not cut) — the form of every message shown to a user."""
    if limit is None:
        return " ".join(str(text).split())
    line = " ".join(str(text)[: 4 * limit].split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


class NgdrefError(ValueError):
    """Base class of user-facing errors (bad input, impossible requests)."""


class MemoryLimitError(NgdrefError):
    """An explicit matrix would exceed the configured memory limit; refused before allocating."""


class ConfigError(NgdrefError):
    """Inconsistent or invalid configuration (shapes, widths, hyper-parameters)."""
