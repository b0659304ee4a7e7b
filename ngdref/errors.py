"""Exceptions a user can cause. The CLI turns every :class:`NgdrefError` into one line and exit code 2."""


class NgdrefError(ValueError):
    """Base class of user-facing errors (bad input, impossible requests)."""


class MemoryLimitError(NgdrefError):
    """An explicit matrix would exceed the configured memory limit; refused before allocating."""


class ConfigError(NgdrefError):
    """Inconsistent or invalid configuration (shapes, widths, hyper-parameters)."""
