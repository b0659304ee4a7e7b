"""Shared CLI plumbing: global options, error handling, output. No math here."""

from __future__ import annotations

import functools
import sys

import click
from rich.console import Console

from ngdref.errors import NgdrefError
from ngdref.io import dumps, write_json


class UserError(click.ClickException):
    """A user-caused error: one line on stderr, exit code 2."""

    exit_code = 2

    def show(self, file=None):
        click.echo(f"Error: {self.format_message()}", err=True)


def handle_errors(fn):
    """Turn library errors a user can cause into one-line messages with exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NgdrefError as err:
            raise UserError(str(err)) from None
        except MemoryError:
            raise UserError("out of memory; reduce the width, the number of samples or use float32") from None

    return wrapper


class Settings:
    """Global options shared by every command."""

    def __init__(self, backend: str | None, dtype: str, seed: int):
        self.backend_name = backend
        self.dtype = dtype
        self.seed = seed

    def backend(self):
        from ngdref.backend import get_backend

        return get_backend(self.backend_name, self.dtype)


def consoles(json_path: str | None) -> Console:
    """Human output goes to stdout, or to stderr when the JSON record is written to stdout."""
    console = Console(stderr=(json_path == "-"), highlight=False)
    if not console.is_terminal:  # files and pipes: wide enough for the tables
        console = Console(stderr=(json_path == "-"), highlight=False, width=160)
    return console


def emit_json(json_path: str | None, record: dict) -> None:
    if not json_path:
        return
    if json_path == "-":
        sys.stdout.write(dumps(record))
        sys.stdout.flush()
    else:
        write_json(json_path, record)


def json_option(fn):
    return click.option(
        "--json", "json_path", metavar="FILE", default=None, help="Write the full record as JSON to FILE ('-' = stdout)."
    )(fn)


def parse_int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in str(text).replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise UserError(f"{what} must be a comma-separated list of integers, got {text!r}") from None
    if not values:
        raise UserError(f"{what} must not be empty")
    return values


def check_fim_names(names) -> list[str]:
    """The registered names of ``names`` (aliases resolved); UserError for an unknown one or none."""
    from ngdref.fisher import fisher_class, fisher_names

    names = list(names)
    if not names:
        raise UserError(f"--fim needs at least one approximation; choose from {', '.join(fisher_names())}")
    bad = []
    out = []
    for n in names:
        try:
            out.append(fisher_class(n).spec.name)
        except NgdrefError:
            bad.append(n)
    if bad:
        raise UserError(f"unknown --fim {', '.join(bad)}; choose from {', '.join(fisher_names())}")
    return out


def fim_options(name: str, given: dict) -> dict:
    """The approximation's constructor options from the command line (its spec parses them)."""
    from ngdref.fisher import fisher_class

    try:
        return fisher_class(name).spec.parse_options(given)
    except NgdrefError as err:
        raise UserError(str(err)) from None


def fim_help(prefix: str) -> str:
    """``--fim`` help: the registered approximations, each with its title (read from the specs)."""
    from ngdref.fisher import REGISTRY

    return prefix + " " + "; ".join(f"{name} ({cls.spec.title})" for name, cls in REGISTRY.items()) + "."


class FimOption(click.Option):
    """``--fim``: its help lists the registry as it is when help is shown (an approximation
    registered after the CLI was imported appears too); the option's ``help`` is the prefix."""

    def get_help_record(self, ctx):
        prefix = self.help
        try:
            self.help = fim_help(prefix)
            return super().get_help_record(ctx)
        finally:
            self.help = prefix


def parse_str_list(text: str) -> list[str]:
    return [v for v in str(text).replace(" ", "").split(",") if v]


def network_options(default_width: int = 4096, default_depth: int = 3, default_sigma_b2: float = 0.5):
    """--width/--depth/--activation/--shift/--sigma-w2/--sigma-b2."""

    def deco(fn):
        opts = [
            click.option("--depth", "-L", default=default_depth, show_default=True, type=int, help="Number of layers L."),
            click.option("--width", "-M", default=default_width, show_default=True, type=int, help="Hidden width M."),
            click.option("--activation", default="relu", show_default=True, help="relu, tanh, erf, shifted-relu, linear."),
            click.option("--shift", default=1.0, show_default=True, type=float, help="s of the shifted ReLU (S.157)."),
            click.option("--sigma-w2", default=2.0, show_default=True, type=float, help="Weight variance σ_w²."),
            click.option("--sigma-b2", default=default_sigma_b2, show_default=True, type=float, help="Bias variance σ_b² (0: no biases)."),
        ]
        for o in reversed(opts):
            fn = o(fn)
        return fn

    return deco


def data_options(default_n_train: int = 100, default_n_test: int = 100, default_classes: str = "0,7"):
    """--data/--classes/--n-train/--n-test/--input-dim."""

    def deco(fn):
        opts = [
            click.option("--data", default="mnist", show_default=True, help="mnist (bundled), gaussian, or a folder with MNIST IDX / CIFAR-10 files."),
            click.option("--classes", default=default_classes, show_default=True, help="Comma-separated class labels."),
            click.option("--n-train", default=default_n_train, show_default=True, type=int, help="Training samples N."),
            click.option("--n-test", default=default_n_test, show_default=True, type=int, help="Test samples N'."),
            click.option("--input-dim", default=100, show_default=True, type=int, help="M0 for --data gaussian."),
        ]
        for o in reversed(opts):
            fn = o(fn)
        return fn

    return deco


def load_data(data, classes, n_train, n_test, input_dim, seed):
    from ngdref.data import load_dataset

    if n_train < 1 or n_test < 0:
        raise UserError("--n-train must be >= 1 and --n-test >= 0")
    return load_dataset(
        data, classes=tuple(parse_int_list(classes, "--classes")), n_train=n_train, n_test=n_test, seed=seed, input_dim=input_dim
    )


def build_network(dataset_or_dim, width, depth, activation, shift, sigma_w2, sigma_b2, n_outputs=None):
    from ngdref.network import Network

    if hasattr(dataset_or_dim, "input_dim"):
        m0, c = dataset_or_dim.input_dim, dataset_or_dim.n_outputs
    else:
        m0, c = int(dataset_or_dim), int(n_outputs or 1)
    return Network.build(m0, width, depth, c, activation, shift, sigma_w2, sigma_b2)
