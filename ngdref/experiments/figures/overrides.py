"""Overrides of a figure's sweep: ``ngdref reproduce --set KEY=VALUE`` and ``--config FILE.toml``.

A KEY is a path into the figure's configuration (:func:`~.registry.figure_config`), dots between
the levels and list indices as numbers: ``steps``, ``widths``, ``network.width``, ``data.n_train``,
``tasks.0.data.n_train``. A VALUE is written as in TOML: ``5``, ``1e-3``, ``[64, 128, 256]``,
``true``, ``"relu"`` (a bare word is a string). A key prefixed with a figure's name
(``fig3.widths=[64, 128]``) applies to that figure only; without it, to every figure being run
whose configuration has the key and whose sweep reads it, and to at least one of them (else it is refused).

A TOML file holds the same: top-level keys and tables (``[network]``, dotted keys) for every figure,
a table named after a figure (``[fig1b]``) for that figure::

    steps = 10                 # every figure with a "steps" key
    [fig3]
    widths = [64, 256, 1024]
    seeds = [0, 1, 2]
    [fig1a.network]
    width = 2048

A value must have the kind of the value it replaces (an integer for an integer, a list of numbers
for a list of numbers …), sizes (widths, depths, steps, N) are ≥ 1, every number is finite and ≥ 0;
keys the analysis relies on (``figure``, ``quick``, a figure's :attr:`~.base.Figure.fixed` keys) are
not settable, nor a key the sweep does not read (:attr:`~.base.Figure.unread`: fig3's ``network.width``,
as it sweeps ``widths``), refused with what to set instead. Everything is checked before any work
(:class:`~ngdref.errors.ConfigError`, one line). The overridden values change the cells'
parameters, hence their keys: a stored cell of other settings is never reused.
"""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from .base import Figure
from .cells import network

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10: the tomli backport (a dependency there)
    import tomli as tomllib

#: keys no override may change: which figure it is, and the quick switch (use --quick)
NOT_SETTABLE = ("figure", "quick")
#: the last part of a key whose integers are sizes or counts (≥ 1)
SIZES = {"width", "widths", "depth", "depths", "steps", "n_train", "input_dim"}
#: the last part of a key whose numbers must be > 0 (a step size, a scale)
POSITIVE = {"lr", "lr_scale", "lr_scales", "sigma_w2"}
#: the last part of a key that names approximations of the Fisher registry
FIM_KEYS = {"fim", "fims", "methods"}


def parse_value(text: str) -> Any:
    """``text`` as a TOML value (``5``, ``1e-3``, ``[1, 2]``, ``true``, ``"relu"``); a bare word is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        if text.strip() and all(ch.isalnum() or ch in "-_." for ch in text.strip()):
            return text.strip()
        raise ConfigError(f"cannot read the value {text!r}: write it as in TOML (5, 1e-3, [64, 128], true, "
                          f"\"relu\")") from None


def _flatten(table: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def parse_set(pairs) -> dict[str, Any]:
    """``["KEY=VALUE", …]`` → ``{KEY: value}`` (an inline table value is flattened to dotted keys)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: write KEY=VALUE, e.g. --set steps=5 or --set widths=[64,128]")
        value = parse_value(text)
        new = _flatten({key: value}) if isinstance(value, dict) else {key: value}
        twice = [k for k in new if k in out]
        if twice:
            raise ConfigError(f"--set {twice[0]} is given twice; give each key once")
        out.update(new)
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A TOML file of overrides as dotted keys (``fig3.widths``, ``network.width``, ``steps``)."""
    if not str(path).strip():  # Path("") is ".", a folder: say what is wrong instead
        raise ConfigError("--config is empty: give a TOML file (e.g. --config sweep.toml)")
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            table = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"--config {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"--config {str(path)!r} is a folder; give a TOML file") from None
    except OSError as exc:
        raise ConfigError(f"--config {str(path)!r}: cannot read it ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {str(path)!r} is not valid TOML: {exc}") from None
    return _flatten(table)


def split_by_figure(overrides: dict[str, Any], names: list[str], registry: dict[str, Figure],
                    configs: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """Which figure each override applies to: ``fig3.widths`` → fig3; ``steps`` → every figure in ``names``
    whose configuration has it (ConfigError when none has, or when the named figure is not being run)."""
    out: dict[str, dict[str, Any]] = {n: {} for n in names}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if head in registry:
            if head not in names:
                raise ConfigError(f"{key!r} sets {head}, which this command does not reproduce "
                                  f"({', '.join(names)})")
            if not rest:
                raise ConfigError(f"{key!r}: name a key of {head}'s configuration after '{head}.'")
            _put(out[head], head, rest, value)
            continue
        takers = [n for n in names if _has(configs[n], key) and unread_remedy(registry[n], key) is None]
        readers_not = [n for n in names if _has(configs[n], key) and n not in takers]
        if not takers and readers_not:
            n = readers_not[0]
            raise ConfigError(f"{n}: {key} is not read: {unread_remedy(registry[n], key)}")
        if not takers:
            keys = sorted({k for n in names for k in _settable(configs[n], registry[n])})
            raise ConfigError(f"unknown key {key!r} for {', '.join(names)}; settable: {', '.join(keys)}")
        for n in takers:
            _put(out[n], n, key, value)
    return out


def _put(into: dict[str, Any], figure: str, key: str, value: Any) -> None:
    """One override of ``figure``; the same key given twice in one source (as ``KEY`` and
    ``FIGURE.KEY``) is refused rather than resolved by the order of the keys."""
    if key in into:
        raise ConfigError(f"{figure}: {key} is given twice (as {key!r} and {figure + '.' + key!r}); give it once")
    into[key] = value


def unread_remedy(figure: Figure, key: str) -> str | None:
    """What to set instead when ``key`` (or a key above or below it) is one the figure does not read
    (:attr:`~.base.Figure.unread`); None when the figure reads it."""
    for k, remedy in figure.unread:
        if key == k or key.startswith(k + ".") or k.startswith(key + "."):
            return remedy
    return None


def _settable(config: dict, figure: Figure) -> list[str]:
    return [k for k in config if k not in NOT_SETTABLE and k not in figure.fixed]


def _parts(key: str) -> list:
    return [int(p) if p.isdigit() else p for p in key.split(".")]


def _has(config, key: str) -> bool:
    node = config
    for part in _parts(key):
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return False
    return True


#: a configuration value's kind in words, by type (bool before int: a bool is an int)
KINDS = ((bool, "true/false"), (int, "an integer"), (float, "a number"), (str, "a string"), (list, "a list"),
         (dict, "a table"))


def _kind(v) -> str:
    return next((word for t, word in KINDS if isinstance(v, t)), type(v).__name__)


def _coerce(old, new, key: str):
    """``new`` in the kind of ``old`` (an int is a float where a float stood), or ConfigError."""
    bad = ConfigError(f"{key} = {new!r}: expected {_kind(old)}, like its default {old!r}")
    if isinstance(old, dict):
        raise ConfigError(f"{key} is a table; set its keys one by one ({key}.<name>=…)")
    if isinstance(old, bool) or isinstance(new, bool):
        if not (isinstance(old, bool) and isinstance(new, bool)):
            raise bad
        return new
    if isinstance(old, int):
        if not isinstance(new, int):
            raise bad
        return new
    if isinstance(old, float):
        if not isinstance(new, (int, float)):
            raise bad
        return float(new)
    if isinstance(old, str):
        if not isinstance(new, str):
            raise bad
        return new
    if isinstance(old, list):
        if not isinstance(new, list):
            raise bad
        if not new:
            raise ConfigError(f"{key} = []: give at least one value")
        if old and isinstance(old[0], (dict, list)):
            raise ConfigError(f"{key} is a list of tables; set its entries one by one ({key}.0.<name>=…)")
        return [_coerce(old[0], v, f"{key}[{i}]") if old else v for i, v in enumerate(new)]
    if old is None:
        if not isinstance(new, (int, float, str)) or isinstance(new, bool):
            raise bad
        return new
    raise bad


#: the only activation that reads ``network.shift`` (φ_s(u) = max(u, −s), S.157)
SHIFTED = "shifted-relu"


def toml_value(v) -> str:
    """A value as TOML writes it (the recorded ``--set`` command line, error messages)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return repr(v)


def _last(key: str) -> str:
    """The last named part of a dotted key (``tasks.0.methods.1`` → ``methods``)."""
    return next(p for p in reversed(key.replace(": ", ".").split(".")) if not p.isdigit())


def _check_names(value, key: str) -> None:
    """Approximation names (``fim``, ``fims``, ``methods``) must be in the Fisher registry."""
    if _last(key) not in FIM_KEYS:
        return
    from ...fisher import fisher_class

    for v in value if isinstance(value, list) else [value]:
        try:
            fisher_class(v)
        except ConfigError as exc:
            raise ConfigError(f"{key}: {exc}") from None


def _check_numbers(value, key: str) -> None:
    last = _last(key)
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if last in SIZES and not (math.isfinite(v) and v >= 1):  # checked first: -8 and 0 get the same message
            raise ConfigError(f"{key} = {value!r}: a size or count must be ≥ 1")
        if not math.isfinite(v) or v < 0:
            raise ConfigError(f"{key} = {value!r}: every number must be finite and ≥ 0")
        if last in POSITIVE and v <= 0:
            raise ConfigError(f"{key} = {value!r}: must be > 0")


def apply_overrides(figure: Figure, config: dict, overrides: dict[str, Any]) -> dict:
    """``config`` with ``overrides`` (dotted key → value) applied, checked; the input is left unchanged.

    ConfigError (one line) for a key the configuration lacks or may not change, a value of the wrong
    kind or range, or a configuration the figure refuses (:attr:`~.base.Figure.check`), or whose
    cells cannot be built.
    """
    if not overrides:
        return config
    out = copy.deepcopy(config)
    name = figure.name
    for key, value in overrides.items():
        parts = _parts(key)
        if parts[0] in NOT_SETTABLE or parts[0] in figure.fixed:
            what = "use --quick" if parts[0] == "quick" else "the analysis relies on it"
            raise ConfigError(f"{name}: {parts[0]!r} cannot be set ({what}); settable: "
                              f"{', '.join(_settable(config, figure))}")
        remedy = unread_remedy(figure, key)
        if remedy is not None:
            raise ConfigError(f"{name}: {key} is not read: {remedy}")
        if not _has(out, key):
            raise ConfigError(f"{name} has no setting {key!r}; settable: {', '.join(_settable(config, figure))}")
        node = out
        for part in parts[:-1]:
            node = node[part]
        new = _coerce(node[parts[-1]], value, f"{name}: {key}")
        if isinstance(new, list):  # a value twice would make two cells of one key (or count a class twice)
            seen = [v for v in new if not isinstance(v, (dict, list))]
            twice = next((v for i, v in enumerate(seen) if v in seen[:i]), None)
            if twice is not None:
                raise ConfigError(f"{name}: {key} has {toml_value(twice)} twice; give each value once")
        _check_numbers(new, f"{name}: {key}")
        _check_names(new, f"{name}: {key}")
        node[parts[-1]] = new
    problem = figure.check(out) if figure.check is not None else None
    if problem:
        raise ConfigError(f"{name}: {problem}")
    try:
        keys: set = set()
        activations: set = set()
        for cell in figure.cells(out, "numpy", "float64"):  # every network the sweep builds must be valid
            if cell.key in keys:
                raise ConfigError(f"these settings make the cell {cell.key} twice; give each value of a list once")
            keys.add(cell.key)
            q = cell.params
            if isinstance(q.get("network"), dict) and isinstance(q.get("data"), dict):
                network(q["network"], q["data"]["input_dim"], 1, width=q.get("width"))
                activations.add(q["network"].get("activation"))
        if "network.shift" in overrides and activations and SHIFTED not in activations:
            # the shift s of φ(u) = max(u, −s) (S.157) means nothing to another activation: refuse, as the CLI's --shift
            raise ConfigError(f"network.shift is read only by the {SHIFTED} activation and this sweep runs "
                              f"{', '.join(sorted(map(str, activations)))}; add --set network.activation=\"{SHIFTED}\"")
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ConfigError(f"{name}: these settings do not make a sweep ({type(exc).__name__}: {exc})") from None
    return out
