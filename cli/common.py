"""Shared CLI plumbing: global options, error handling, option types, output. No math here.

The contract: every error a user can cause — a bad option, environment variable, output path or
input — ends as one line on stderr (``Error: …``, saying what to do) with exit code 2, checked
before the work starts; exit code 1 is reserved for a run that diverged.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import sys
import tempfile
import warnings

import click
from numpy.linalg import LinAlgError
from rich.console import Console

from ngdref.errors import NgdrefError, one_line
from ngdref.io import dumps, write_json

#: exit code of a run stopped by Ctrl-C (128 + SIGINT, as shells report it)
EXIT_INTERRUPTED = 130
#: Click >= 8.2 raises this usage error for a bare group invocation (its message is the help text)
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


class UserError(click.ClickException):
    """A user-caused error: one line on stderr, exit code 2."""

    exit_code = 2

    def show(self, file=None):
        click.echo(f"Error: {one_line(self.format_message(), None)}", err=True)


class OneLineGroup(click.Group):
    """The command group: Click's usage errors (unknown option, bad value, missing argument), raised
    while the group or a command parses its arguments, become a :class:`UserError` — one line that
    names the command's help — instead of Click's usage block; Ctrl-C ends with one line and exit
    code 130 (exit code 1 stays reserved for a diverged run)."""

    @staticmethod
    def _usage(err: click.UsageError) -> click.ClickException:
        if isinstance(err, _NO_ARGS_IS_HELP):  # bare `ngdref`: Click shows the help, as it should
            return err
        path = err.ctx.command_path if err.ctx is not None else "ngdref"
        return UserError(f"{one_line(err.format_message(), None)} (see '{path} --help')")

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        """Register ``cmd``, giving it the group's ``--backend``, ``--dtype`` and ``--seed`` to be
        written after its name too (:func:`command_settings_options`); every command added, by
        ``@cli.command()`` or ``cli.add_command``, gets them."""
        cmd.params.extend(command_settings_options(cmd))
        super().add_command(cmd, name)

    def format_commands(self, ctx, formatter):
        """The commands, each with its whole summary (:func:`command_summary`), wrapped, never cut."""
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, command_summary(cmd)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as err:
            raise self._usage(err) from None

    def invoke(self, ctx):
        """Run the command, showing each Python warning it raises (a singular Σ, a singular layer
        kernel) as one line ``Warning: …`` when it happens, once per message. NumPy's floating-point
        warnings ("overflow encountered in …") are held back: a command that then fails with a user
        error says them inside its one ``Error:`` line; otherwise they are shown when it ends."""
        shown: set[str] = set()
        held: list[str] = []

        def show(message, category, filename, lineno, file=None, line=None):
            text = one_line(message, None)
            if text in shown:
                return
            shown.add(text)
            if issubclass(category, RuntimeWarning) and " encountered in " in text:
                held.append(text)
            else:
                click.echo(f"Warning: {text}", err=True)

        failed = False
        with warnings.catch_warnings():
            warnings.showwarning = show
            try:
                return super().invoke(ctx)
            except click.UsageError as err:
                failed = True
                raise self._usage(err) from None
            except click.ClickException as err:  # a user error: one line, the held warnings folded in
                failed = True
                if held:
                    err.message = f"{err.message} (NumPy warned before: {'; '.join(held)})"
                raise
            except KeyboardInterrupt:
                click.echo("Error: interrupted", err=True)
                sys.exit(EXIT_INTERRUPTED)
            finally:
                if not failed:
                    for text in held:
                        click.echo(f"Warning: {text}", err=True)


def handle_errors(fn):
    """Check the global settings (:meth:`Settings.validate`), then run the command, turning library
    errors a user can cause into one-line messages with exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            if args and isinstance(args[0], Settings):
                ctx = click.get_current_context(silent=True)
                args[0].validate(None if ctx is None else ctx.command)
            return fn(*args, **kwargs)
        except NgdrefError as err:
            raise UserError(str(err)) from None
        except MemoryError:
            raise UserError("out of memory; reduce the width, the number of samples or use float32") from None
        except LinAlgError as err:  # extreme σ_w², σ_b² or depth: the signals overflow or degenerate
            raise UserError(f"the linear algebra failed ({one_line(err, None)}): the network's signals overflow or are "
                            "degenerate at these settings; try a smaller --sigma-w2, --sigma-b2 or --depth, "
                            "or a damping ρ > 0") from None

    return wrapper


class Settings:
    """Global options shared by every command: given before the command (``ngdref --seed 1 train``)
    or after it (``ngdref train --seed 1``), the later winning; ``given`` names those given either way."""

    def __init__(self, backend: str | None, dtype: str, seed: int, given=()):
        self.backend_name = backend
        self.dtype = dtype
        self.seed = seed
        self.given = set(given)

    def set(self, name: str, value) -> None:
        """``--name value`` given after the command (:data:`SETTINGS`): it replaces the group's value."""
        setattr(self, SETTINGS[name]["attr"], value)
        self.given.add(name)

    def validate(self, command: click.Command | None = None) -> None:
        """Refuse a malformed environment before any work, whether or not the command uses it:
        ``NGDREF_BACKEND`` must name a backend and ``NGDREF_MAX_BYTES`` be a size (:mod:`ngdref.memory`).
        (Whether the chosen backend is *available* — CuPy, a GPU — is checked where it is used.)
        A setting given before ``command`` that the command does not use (:func:`unused_settings`)
        is refused: every option a command accepts does something."""
        from ngdref.backend import BACKENDS, ENV_BACKEND
        from ngdref.memory import max_bytes

        unused = getattr(command, "unused_settings", {})
        for name in SETTINGS:
            if name in self.given and name in unused:
                raise UserError(f"--{name} does not apply to '{command.name}' ({unused[name]}); drop it")
        if self.backend_name is None:
            env = os.environ.get(ENV_BACKEND, "")
            if env != "" and env.lower() not in BACKENDS:
                raise UserError(f"{ENV_BACKEND}={env!r} is not a backend; set it to one of {', '.join(BACKENDS)} "
                                "or unset it")
        max_bytes()  # ConfigError for a malformed NGDREF_MAX_BYTES

    def backend(self):
        from ngdref.backend import get_backend

        return get_backend(self.backend_name, self.dtype)

    def to_dict(self, backend=None, command: click.Command | None = None) -> dict:
        """``seed``, ``backend``, ``dtype`` for a run's configuration: the backend as resolved when
        one was made (``$NGDREF_BACKEND`` included), None for a setting ``command`` does not use."""
        unused = getattr(command, "unused_settings", {})
        values = {"seed": self.seed,
                  "backend": backend.name if backend is not None else self.backend_name,
                  "dtype": backend.dtype_name if backend is not None else self.dtype}
        return {k: (None if k in unused else v) for k, v in values.items()}


def _settings_types():
    from ngdref.backend import BACKENDS, DTYPES

    return {"backend": click.Choice(BACKENDS), "dtype": click.Choice(DTYPES), "seed": click.IntRange(min=0)}


#: the settings every command shares: option name → its attribute of :class:`Settings`, default, help
SETTINGS = {
    "backend": {"attr": "backend_name", "default": None,
                "help": "Array backend (default: $NGDREF_BACKEND or numpy)."},
    "dtype": {"attr": "dtype", "default": "float64", "help": "Floating dtype."},
    "seed": {"attr": "seed", "default": 0, "help": "Seed (>= 0) of the initialisation and the data split."},
}


def settings_options(fn):
    """The group's ``--backend``, ``--dtype``, ``--seed`` (before the command)."""
    types = _settings_types()
    for name in reversed(list(SETTINGS)):
        spec = SETTINGS[name]
        fn = click.option(f"--{name}", type=types[name], default=spec["default"],
                          show_default=spec["default"] is not None, help=spec["help"])(fn)
    return fn


def _set_after_command(ctx, param, value):
    if value is not None:
        settings = ctx.find_object(Settings)
        if settings is not None:
            settings.given.add(param.name)
            if not param.hidden:  # hidden: a setting the command does not use, recorded to be refused
                settings.set(param.name, value)
    return value


def command_settings_options(command: click.Command) -> list[click.Option]:
    """``--backend``, ``--dtype``, ``--seed`` given after ``command``'s name: the same options as the
    group's, without a default of their own (the group's value stands unless given here, and given
    here it wins). A setting the command does not use (:func:`unused_settings`) is not shown, and
    refused with its reason when given (:meth:`Settings.validate`)."""
    types = _settings_types()
    unused = getattr(command, "unused_settings", {})
    taken = {opt for p in command.params for opt in getattr(p, "opts", ())}
    out = []
    for name, spec in SETTINGS.items():
        if f"--{name}" in taken:
            continue
        if name in unused:
            out.append(click.Option([f"--{name}", name], default=None, expose_value=False, hidden=True,
                                    callback=_set_after_command))
            continue
        default = "as before the command" + ("" if spec["default"] is None else f", else {spec['default']}")
        out.append(click.Option([f"--{name}", name], type=types[name], default=None, expose_value=False,
                                callback=_set_after_command, show_default=default,
                                help=spec["help"] + " Also accepted before the command."))
    return out


def unused_settings(**reasons: str):
    """Mark the global settings a command does not use (``seed="…why…"``): it does not offer them,
    and refuses them given before it (one line with the reason)."""

    def deco(command: click.Command) -> click.Command:
        command.unused_settings = dict(reasons)
        return command

    return deco


def command_summary(command: click.Command) -> str:
    """The command's summary in ``ngdref --help``: its ``short_help``, else the whole first paragraph
    of its help (Click's own cut stops at the first '. ', so "Train with NGD (Eq. 7) …" read
    "Train with NGD (Eq.")."""
    if command.short_help:
        return command.short_help
    text = inspect.cleandoc(command.help or "").split("\f")[0]
    first = text.split("\n\n")[0].replace("\b", "")
    return " ".join(first.split())


def consoles(json_path: str | None) -> Console:
    """Human output goes to stdout, or to stderr when the JSON record is written to stdout."""
    console = Console(stderr=(json_path == "-"), highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:  # files and pipes: wide enough for the tables
        console = Console(stderr=(json_path == "-"), highlight=False, width=160)
    return console


def print_table(console: Console, title: str, headers, rows, keep: int = 1, justify=None) -> None:
    """Print ``rows`` (strings, Rich markup allowed) under ``headers`` without ever cutting a cell:
    the columns are split into groups that fit the console's width, each group a table that repeats
    the first ``keep`` columns (the step, the approximation); a cell wider than the whole console
    folds onto several lines instead of being cut."""
    from rich.table import Table
    from rich.text import Text

    def width(i):
        cells = [Text.from_markup(str(r[i])).cell_len for r in rows]
        words = [len(w) for w in str(headers[i]).split()] or [0]
        return max(cells + [max(words)])

    widths = [width(i) for i in range(len(headers))]
    cost = [w + 3 for w in widths]  # one space each side and a border
    avail = max(console.width - 1, 1)
    key_cost = sum(cost[:keep])
    groups, current, used = [], [], key_cost
    for i in range(keep, len(headers)):
        if current and used + cost[i] > avail:
            groups.append(current)
            current, used = [], key_cost
        current.append(i)
        used += cost[i]
    groups.append(current)
    justify = justify or ["right"] * len(headers)
    for n, group in enumerate(groups):
        columns = list(range(keep)) + group
        label = title if len(groups) == 1 else f"{title} ({n + 1}/{len(groups)})"
        console.print(Text(label, style="italic"), soft_wrap=False)  # the console's width, not the table's
        table = Table(title_justify="left")
        for i in columns:
            room = avail - (key_cost if i >= keep else 0) - 3  # what a single wide cell may take
            table.add_column(headers[i], justify=justify[i], overflow="fold", width=max(1, min(widths[i], room)))
        for r in rows:
            table.add_row(*[str(r[i]) for i in columns])
        console.print(table)


def progress_bar(*columns, console: Console):
    """A transient progress bar on ``console`` (stderr), shown only on a terminal: to a file or a pipe
    it writes nothing at all (Rich would end it with an empty line), so stderr holds only what matters.
    Every bar ends with the elapsed time and an estimate of the time remaining."""
    from rich.progress import Progress, TimeRemainingColumn

    return Progress(*columns, TimeRemainingColumn(compact=True, elapsed_when_finished=True), console=console,
                    transient=True, disable=not console.is_terminal)


def emit_json(json_path: str | None, record: dict) -> None:
    """Write ``record`` to ``json_path`` (atomically: a complete file or none) or to stdout for '-'."""
    if json_path is None:
        return
    if json_path == "-":
        sys.stdout.write(dumps(record))
        sys.stdout.flush()
        return
    try:
        write_json(json_path, record)
    except OSError as err:  # checked at start (check_output_file); this is the disk changing under us
        raise UserError(f"cannot write the JSON record to {json_path}: {err.strerror or err}") from None


#: options that only say where the output goes: not part of a run's configuration
OUTPUT_ONLY = frozenset({"json_path"})


def option_key(param: click.Parameter) -> str:
    """A parameter's key in the JSON ``config``: its first long name (``--sigma-w2`` → ``sigma_w2``)."""
    longs = [o for o in getattr(param, "opts", ()) if o.startswith("--")]
    return (longs[0][2:] if longs else param.name).replace("-", "_")


def run_config(settings: Settings, backend=None, **resolved) -> dict:
    """Every setting of this run, for the JSON ``config``: each option of the running command as given
    or defaulted (keyed by :func:`option_key`; output-only ones, :data:`OUTPUT_ONLY`, left out), the
    global ``seed``, ``backend``, ``dtype`` (:meth:`Settings.to_dict`), then what the command resolved
    from them (``resolved``: parsed lists, the ``network`` and ``dataset`` built)."""
    ctx = click.get_current_context()
    config = {option_key(p): ctx.params[p.name] for p in ctx.command.params
              if p.expose_value and p.name in ctx.params and p.name not in OUTPUT_ONLY}
    config.update(settings.to_dict(backend, ctx.command))
    config.update(resolved)
    return config


def json_document(command: str, config: dict, rows: list, software: dict | None = None, **results) -> dict:
    """The one layout of every command's JSON record: ``command``, ``config`` (:func:`run_config`),
    ``software`` (versions, git commit, BLAS: :func:`ngdref.io.software_versions`, or the one given,
    e.g. a figure group's, already read once), ``rows`` (one per table row), then the command's other
    results (``results``, e.g. ``train``'s summary)."""
    from ngdref.io import software_versions

    return {"command": command, "config": config, "software": software if software is not None else software_versions(),
            "rows": rows, **results}


def check_output_file(path: str, option: str = "--json") -> str:
    """Refuse, before any work, an output file that could not be written at the end: empty, a
    folder, not a regular file, read-only, under a file, in a missing or unwritable folder. The
    folder is tried by creating (and removing) a temporary file, as the atomic write will."""
    if path == "":
        raise UserError(f"{option} needs a file name ('-' for stdout)")
    try:
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise UserError(f"{option} {path} is a folder; give a file name inside it")
        if os.path.lexists(path):
            if not os.path.isfile(path):
                raise UserError(f"{option} {path} exists and is not a regular file; choose another name")
            mode = os.stat(path).st_mode
            if not os.access(path, os.W_OK) or not mode & 0o222:
                raise UserError(f"{option} {path} is read-only; choose another name")
        if not os.path.isdir(folder):
            bad = _nearest_non_folder(folder)
            what = "is a file, not a folder" if os.path.lexists(bad) else "does not exist"
            raise UserError(f"{option} {path}: {bad} {what}; create the folder first or choose another path")
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except UserError:
        raise
    except (OSError, ValueError) as err:  # no permission, read-only file system, NUL in the name, …
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise UserError(f"{option} {path} cannot be written ({one_line(reason, None)}); choose another path") from None
    return path


def _nearest_non_folder(folder: str) -> str:
    """The outermost prefix of the absolute path ``folder`` that is not a folder (missing or a file)."""
    head = folder
    while not os.path.isdir(os.path.dirname(head)) and os.path.dirname(head) != head:
        head = os.path.dirname(head)
    return head


def _json_callback(ctx, param, value):
    return value if value is None or value == "-" else check_output_file(value)


def json_option(fn):
    return click.option(
        "--json", "json_path", metavar="FILE", default=None, callback=_json_callback,
        help="Write the full record as JSON to FILE ('-' = stdout); checked before the work starts.",
    )(fn)


class FiniteFloat(click.FloatRange):
    """A finite float (NaN and ±inf refused) in an optional range."""

    name = "finite float"

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv


def given(name: str) -> bool:
    """Whether the option ``name`` (its parameter name) was given on the command line (or by an
    environment variable), not left at its default."""
    ctx = click.get_current_context(silent=True)
    source = None if ctx is None else ctx.get_parameter_source(name)
    return source is not None and source not in (click.core.ParameterSource.DEFAULT,
                                                 click.core.ParameterSource.DEFAULT_MAP)


def parse_int_list(text: str, what: str, minimum: int | None = None) -> list[int]:
    try:
        values = [int(v) for v in str(text).replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise UserError(f"{what} must be a comma-separated list of integers, got {text!r}") from None
    if not values:
        raise UserError(f"{what} must not be empty")
    if minimum is not None and min(values) < minimum:
        raise UserError(f"{what} must be integers >= {minimum}, got {min(values)}")
    return values


def check_fim_names(names, one: bool = False) -> list[str]:
    """The registered names of ``names`` (aliases resolved); UserError for an unknown one, none, one given twice
    (also as an alias), or — ``one=True``, a command that runs one approximation — several."""
    from ngdref.fisher import fisher_class, fisher_names

    names = list(names)
    if not names:
        raise UserError(f"--fim needs at least one approximation; choose from {', '.join(fisher_names())}")
    if one and (len(names) > 1 or "," in names[0]):
        raise UserError(f"this command runs one approximation: give one --fim (got {','.join(names)!r}); "
                        "isotropy and predict take a comma-separated list")
    bad = []
    out = []
    for n in names:
        try:
            out.append(fisher_class(n).spec.name)
        except NgdrefError:
            bad.append(n)
    if bad:
        raise UserError(f"unknown --fim {', '.join(bad)}; choose from {', '.join(fisher_names())}")
    twice = sorted({n for n in out if out.count(n) > 1})
    if twice:
        raise UserError(f"--fim names {', '.join(twice)} more than once; give each approximation once")
    return out


def fim_options(name: str, given: dict) -> dict:
    """The approximation's constructor options from the command line (its spec parses them)."""
    from ngdref.fisher import fisher_class

    try:
        return fisher_class(name).spec.parse_options(given)
    except NgdrefError as err:
        raise UserError(str(err)) from None


def parse_option_pairs(pairs) -> dict:
    """``--option NAME=VALUE`` (repeatable) as ``{NAME: VALUE}``; UserError for a malformed or repeated one."""
    out: dict = {}
    for pair in pairs:
        name, sep, value = str(pair).partition("=")
        name = name.strip()
        if not sep or not name or not value:
            raise UserError(f"--option must look like NAME=VALUE (e.g. sigma='1,0,0;0,1,0;0,0,1'), got {pair!r}")
        if name in out:
            raise UserError(f"--option {name} is given twice")
        out[name] = value
    return out


def options_by_fim(names, given: dict) -> dict:
    """Each approximation's options from ``given`` (the options its spec declares), parsed and checked
    before any work; UserError for an option none of ``names`` takes or a missing required one."""
    from ngdref.fisher import fisher_class

    takers = {key: [n for n in names if key in fisher_class(n).spec.option_names] for key in given}
    unused = [key for key, fims in takers.items() if not fims]
    if unused:
        takes = sorted({o for n in names for o in fisher_class(n).spec.option_names})
        raise UserError(f"option {', '.join(unused)} does not apply to --fim {','.join(names)}"
                        + (f" (they take {', '.join(takes)})" if takes else " (they take no options)"))
    out = {}
    for name in names:
        own = {k: v for k, v in given.items() if k in fisher_class(name).spec.option_names}
        out[name] = fim_options(name, own)
    return out


def _options_help(prefix: str) -> str:
    """``--option`` help: every registered approximation's options (read from the specs)."""
    from ngdref.fisher import REGISTRY

    items = [f"{o.name} ({name}: {o.help})" for name, cls in REGISTRY.items() for o in cls.spec.options]
    return prefix + " " + "; ".join(items) + "."


def fim_help(prefix: str) -> str:
    """``--fim`` help: the registered approximations, each with its title (read from the specs)."""
    from ngdref.fisher import REGISTRY

    return prefix + " " + "; ".join(f"{name} ({cls.spec.title})" for name, cls in REGISTRY.items()) + "."


class RegistryHelpOption(click.Option):
    """An option whose help is completed from the Fisher registry as it is when help is shown (an
    approximation registered after the CLI was imported appears too); ``help`` is the prefix and
    ``complete_help(prefix)`` the completion."""

    complete_help = staticmethod(fim_help)

    def get_help_record(self, ctx):
        prefix = self.help
        try:
            self.help = self.complete_help(prefix)
            return super().get_help_record(ctx)
        finally:
            self.help = prefix


class FimOption(RegistryHelpOption):
    """``--fim``: the registered approximations with their titles. Given twice it is refused (a plain click option
    would keep the last one silently); a list of approximations is one comma-separated value."""

    def __init__(self, *args, **kwargs):
        kwargs["multiple"] = True
        if isinstance(kwargs.get("default"), str):
            kwargs["default"] = (kwargs["default"],)
        super().__init__(*args, **kwargs)

    def process_value(self, ctx, value):
        value = super().process_value(ctx, value)
        if len(value) > 1:
            raise click.BadParameter(f"given {len(value)} times ({', '.join(value)}); give it once "
                                     "(several approximations, where a command takes them, as one comma-separated list)",
                                     ctx=ctx, param=self)
        return value[0] if value else None


class FisherOptionsOption(RegistryHelpOption):
    """``--option``: every registered approximation's options."""

    complete_help = staticmethod(_options_help)


def option_flag(fn):
    """``--option NAME=VALUE``: an approximation's own option, declared by its spec (repeatable)."""
    return click.option("--option", "raw_options", cls=FisherOptionsOption, multiple=True, metavar="NAME=VALUE",
                        help="An approximation's own option, repeatable:")(fn)


DAMPING_HELP = "ρ >= 0 (0 = pseudo-inverse). Default: each approximation's own (0; 1e-12 for unit, the paper's C.3 value)."


def single_fim_options(default: str):
    """``--fim`` (one approximation, ``default``), ``--damping`` and ``--option NAME=VALUE``: the options
    every single-approximation command (train, spectrum) shares."""

    def deco(fn):
        fn = option_flag(fn)
        fn = click.option("--damping", default=None, type=FiniteFloat(min=0), help=DAMPING_HELP)(fn)
        return click.option("--fim", cls=FimOption, default=default, show_default=True,
                            help="Fisher approximation:")(fn)

    return deco


def parse_str_list(text: str) -> list[str]:
    return [v for v in str(text).replace(" ", "").split(",") if v]


#: defaults that differ between commands follow the paper's figures; every --help says so, with the reason
SIGMA_B2_NOTE = ("Defaults follow the paper: 0.5 (Figs. 3, S.1, S.2) in every command but predict, 0 there as "
                 "in Fig. 2 (K-FAC's separate bias blocks, S.123, break Θ̄ = αI).")
N_TRAIN_NOTE = ("Defaults follow the paper: 100 in train, ntk and alpha (Fig. S.1), 80 in isotropy (Fig. 3), "
                "800 in predict (Fig. 2).")
N_TEST_NOTE = "Defaults follow the paper: 100 in train (Fig. S.1), 200 in predict (Fig. 2)."


def network_options(default_width: int = 4096, default_depth: int = 3, default_sigma_b2: float = 0.5,
                    width: bool = True, width_note: str = ""):
    """--width/--depth/--activation/--shift/--sigma-w2/--sigma-b2 (``width=False``: no --width;
    ``width_note`` completes its help)."""

    def deco(fn):
        opts = [
            click.option("--depth", "-L", default=default_depth, show_default=True, type=click.IntRange(min=2),
                         help="Number of layers L (>= 2)."),
            *([click.option("--width", "-M", default=default_width, show_default=True, type=click.IntRange(min=1),
                            help=f"Hidden width M.{width_note}")] if width else []),
            click.option("--activation", default="relu", show_default=True, help="relu, tanh, erf, shifted-relu, linear."),
            click.option("--shift", default=1.0, show_default=True, type=FiniteFloat(min=0),
                         help="s >= 0 of --activation shifted-relu (S.157)."),
            click.option("--sigma-w2", default=2.0, show_default=True, type=FiniteFloat(min=0, min_open=True),
                         help="Weight variance σ_w² > 0."),
            click.option("--sigma-b2", default=default_sigma_b2, show_default=True, type=FiniteFloat(min=0),
                         help=f"Bias variance σ_b² (0: no biases). {SIGMA_B2_NOTE}"),
        ]
        for o in reversed(opts):
            fn = o(fn)
        return fn

    return deco


def data_options(default_n_train: int = 100, default_n_test: int = 100, default_classes: str = "0,7",
                 test: bool = True):
    """--data/--classes/--n-train/--n-test/--input-dim (``test=False``: no --n-test, for commands
    that use the training inputs only)."""

    def deco(fn):
        opts = [
            click.option("--data", default="mnist", show_default=True, help="mnist (bundled), gaussian, or a folder with MNIST IDX / CIFAR-10 files."),
            click.option("--classes", default=default_classes, show_default=True, help="Comma-separated class labels."),
            click.option("--n-train", default=default_n_train, show_default=True, type=click.IntRange(min=1),
                         help=f"Training samples N. {N_TRAIN_NOTE}"),
            *([click.option("--n-test", default=default_n_test, show_default=True, type=click.IntRange(min=0),
                            help=f"Test samples N'. {N_TEST_NOTE}")] if test else []),
            click.option("--input-dim", default=100, show_default=True, type=click.IntRange(min=1),
                         help="M0 for --data gaussian."),
        ]
        for o in reversed(opts):
            fn = o(fn)
        return fn

    return deco


def load_data(data, classes, n_train, n_test, input_dim, seed):
    from ngdref.data import load_dataset

    if n_train < 1 or n_test < 0:
        raise UserError("--n-train must be >= 1 and --n-test >= 0")
    if not str(data).strip():
        raise UserError("--data needs mnist, gaussian, or a folder with MNIST IDX / CIFAR-10 files")
    if data != "gaussian" and given("input_dim"):
        raise UserError(f"--input-dim applies to --data gaussian only (--data {data} fixes M0); drop it")
    return load_dataset(
        data, classes=tuple(parse_int_list(classes, "--classes")), n_train=n_train, n_test=n_test, seed=seed, input_dim=input_dim
    )


def build_network(dataset_or_dim, width, depth, activation, shift, sigma_w2, sigma_b2, n_outputs=None):
    from ngdref.activations import get_activation
    from ngdref.network import Network

    if given("shift") and get_activation(activation, shift).name != "shifted-relu":
        raise UserError(f"--shift is the s of --activation shifted-relu (S.157), not of {activation}; drop it")

    if hasattr(dataset_or_dim, "input_dim"):
        m0, c = dataset_or_dim.input_dim, dataset_or_dim.n_outputs
    else:
        m0, c = int(dataset_or_dim), (1 if n_outputs is None else int(n_outputs))
    return Network.build(m0, width, depth, c, activation, shift, sigma_w2, sigma_b2)


def check_params_fit(network, dtype: str) -> None:
    """Refuse, before initialising, a network one of whose weight matrices θ_l would exceed the
    memory limit of :mod:`ngdref.memory` (MemoryLimitError, one line)."""
    from ngdref.memory import check_alloc

    itemsize = 4 if dtype == "float32" else 8
    for l in range(1, network.depth + 1):
        check_alloc(network.layer_shape(l), itemsize, f"the weights θ_{l}")
