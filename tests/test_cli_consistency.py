"""One CLI, consistent (issue 14): every command takes the global settings after its name too, shows
its whole summary in ``ngdref --help``, writes one JSON layout (command, config, software, rows), and
every option it shows does something — it changes the JSON ``config`` and (but for the listed
exceptions, each with its reason) the results."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from ngdref_cli.common import OUTPUT_ONLY, SETTINGS, command_summary, option_key
from ngdref_cli.main import cli

ROOT = Path(__file__).resolve().parent.parent

#: every command but reproduce, whose options are tested with the figures (tests/test_reproduce.py)
COMMANDS = tuple(sorted(set(cli.commands) - {"reproduce"}))

#: the smallest run of each command (bundled MNIST, widths of 16)
BASE = {
    "train": ["--width", "16", "--n-train", "8", "--n-test", "4", "--steps", "1"],
    "isotropy": ["--widths", "16", "--fim", "bd,unit", "--n-train", "8"],
    "ntk": ["--width", "16", "--n-train", "8"],
    "alpha": ["--width", "16", "--fim", "bd,kfac,unit"],
    "predict": ["--n-train", "8", "--n-test", "4", "--seeds", "1"],  # --width: --kernel empirical only
    "spectrum": ["--width", "16", "--n-train", "8"],
}
GAUSS = ["--data", "gaussian"]
EMPIRICAL = ["--kernel", "empirical", "--width", "16"]

#: the activation and variance options of every command that builds a network (as VARIANTS' entries)
ACTIVATION_VARIANTS = {
    "activation": ([], ["--activation", "tanh"]),
    "shift": (["--activation", "shifted-relu"], ["--shift", "0.5"]),
    "sigma_w2": ([], ["--sigma-w2", "1.5"]),
    "sigma_b2": ([], ["--sigma-b2", "0.1"]),
}
#: the training-set options of every command that reads data
DATA_VARIANTS = {
    "data": ([], GAUSS),
    "classes": ([], ["--classes", "1,2"]),
    "n_train": ([], ["--n-train", "6"]),
    "input_dim": (GAUSS, ["--input-dim", "12"]),
}

#: per command and option (its JSON config key): (arguments the comparison needs, the option's other value)
VARIANTS = {
    "train": {
        "fim": ([], ["--fim", "bd"]),
        "steps": ([], ["--steps", "2"]),
        "lr": ([], ["--lr", "0.01"]),
        "lr_scale": ([], ["--lr-scale", "0.5"]),
        "damping": ([], ["--damping", "1e-3"]),
        "loss": (["--fim", "exact"], ["--loss", "ce"]),
        "ce_damping": (["--fim", "exact", "--loss", "ce"], ["--ce-damping", "0.5"]),
        "linearized": ([], ["--linearized"]),
        "option": (["--fim", "kfac"], ["--option", "bias=folded"]),
        "sigma": (["--fim", "layer", "--sigma", "1,0,0;0,1,0;0,0,1"], ["--sigma", "2,0,0;0,1,0;0,0,1"]),
        "kfac_bias": (["--fim", "kfac"], ["--kfac-bias", "folded"]),
        "forster": (["--fim", "kfac", "--sigma-b2", "0", *GAUSS, "--input-dim", "4", "--lr", "0.1"], ["--forster"]),
        "depth": ([], ["--depth", "2"]),
        "width": ([], ["--width", "24"]),
        **ACTIVATION_VARIANTS,
        **DATA_VARIANTS,
        "n_test": ([], ["--n-test", "6"]),
    },
    "isotropy": {
        "fim": ([], ["--fim", "bd,exact"]),
        "widths": ([], ["--widths", "16,24"]),
        "width": ([], ["--width", "24"], ["--widths"]),  # instead of --widths
        "damping": ([], ["--damping", "1e-3"]),
        "option": (["--fim", "kfac"], ["--option", "bias=folded"]),
        "depth": ([], ["--depth", "2"]),
        **ACTIVATION_VARIANTS,
        **DATA_VARIANTS,
    },
    "ntk": {
        "depth": ([], ["--depth", "2"]),
        "width": ([], ["--width", "24"]),
        **ACTIVATION_VARIANTS,
        **DATA_VARIANTS,
        "explicit": ([], ["--explicit", "yes"]),
    },
    "alpha": {
        "fim": ([], ["--fim", "bd"]),
        "n_train": (["--fim", "kfac", "--sigma-b2", "0"], ["--n-train", "1000"]),  # K-FAC's α: M0 vs N
        "input_dim": ([], ["--input-dim", "50"]),
        "outputs": ([], ["--outputs", "2"]),
        "option": ([], ["--option", "bias=folded"]),
        "depth": ([], ["--depth", "4"]),
        "width": ([], ["--width", "24"]),
        **ACTIVATION_VARIANTS,
    },
    "predict": {
        "fim": ([], ["--fim", "exact"]),
        "kernel": ([], EMPIRICAL),
        "seeds": ([], ["--seeds", "2"]),
        "damping": (EMPIRICAL, ["--damping", "1e-3"]),
        "option": (["--fim", "kfac", "--sigma-b2", "0.5"], ["--option", "bias=folded"]),  # biases needed
        "depth": ([], ["--depth", "4"]),
        "width": (EMPIRICAL, ["--width", "24"]),
        **ACTIVATION_VARIANTS,
        **DATA_VARIANTS,
        "n_test": ([], ["--n-test", "6"]),
    },
}
VARIANTS["spectrum"] = {
    "fim": ([], ["--fim", "exact"]),
    "of": ([], ["--of", "G"]),
    "top": ([], ["--top", "3"]),
    "damping": ([], ["--damping", "1e-3"]),
    "option": (["--fim", "kfac"], ["--option", "bias=folded"]),
    "depth": ([], ["--depth", "2"]),
    "width": ([], ["--width", "24"]),
    **ACTIVATION_VARIANTS,
    **DATA_VARIANTS,
}
for _name in ("train", "isotropy", "ntk", "predict", "spectrum"):  # the global settings, after the command
    _ctx = EMPIRICAL if _name == "predict" else []
    VARIANTS[_name].update(seed=([], ["--seed", "1"]), dtype=(_ctx, ["--dtype", "float32"]),
                           backend=(_ctx, ["--backend", "strict"]))

#: options that change the config but, by design, not the numbers ((command, key) or key)
SAME_NUMBERS = {
    "backend": "every backend gives the same numbers to rounding (backend-agnostic code, tested in "
               "test_train_backends; NumPy's θ update is one BLAS GEMM with β = 1, whose last bit may differ)",
    ("predict", "dtype"): "the record holds accuracies: float32 moves Θ̄ by ~1e-7, not the predicted classes",
}

#: options (parameter names) left out of the comparison, with the reason
NOT_COMPARED = {name: "only where the record goes, not what is computed" for name in OUTPUT_ONLY}


def visible_params(command: click.Command) -> list[click.Parameter]:
    return [p for p in command.params if not getattr(p, "hidden", False)]


def invoke(args):
    r = CliRunner().invoke(cli, [*args, "--json", "-"], catch_exceptions=False)
    assert r.exit_code == 0, (args, r.output)
    return json.loads(r.stdout)


def without_seconds(obj):
    if isinstance(obj, dict):
        return {k: without_seconds(v) for k, v in obj.items() if not k.endswith("seconds")}
    if isinstance(obj, list):
        return [without_seconds(v) for v in obj]
    return obj


def results(rec: dict) -> dict:
    return without_seconds({k: v for k, v in rec.items() if k not in ("config", "software")})


_CACHE: dict = {}


def cached(args: tuple):
    if args not in _CACHE:
        _CACHE[args] = invoke(list(args))
    return _CACHE[args]


def test_every_visible_option_has_a_variant():
    """A new option must come with its variant here (or a listed reason not to)."""
    for name in COMMANDS:
        keys = {option_key(p) for p in visible_params(cli.commands[name]) if p.name not in NOT_COMPARED}
        assert keys == set(VARIANTS[name]), (name, keys ^ set(VARIANTS[name]))


CASES = [(name, key) for name in COMMANDS for key in VARIANTS[name]]


@pytest.mark.parametrize("name,key", CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_every_option_changes_the_config_and_the_results(name, key):
    context, variant, *drop = VARIANTS[name][key]
    # --fim is refused when given twice: a context or variant that names approximations replaces the base's
    base = without(BASE[name], "--fim") if "--fim" in (*context, *variant) else BASE[name]
    ref = cached((name, *(without(BASE[name], "--fim") if "--fim" in context else BASE[name]), *context))
    new = invoke([name, *without(base, *(drop[0] if drop else ())), *context, *variant])
    assert new["config"] != ref["config"], f"{name} {variant} is not recorded in the JSON config"
    same = SAME_NUMBERS.get((name, key), SAME_NUMBERS.get(key))
    if same is None:
        assert results(new) != results(ref), f"{name} {variant} changes nothing computed"
    elif key in TO_ROUNDING:
        assert_close(results(new), results(ref), same)
    else:
        assert results(new) == results(ref), same


#: SAME_NUMBERS keys compared to rounding (1e-10 relative, 1e-12 absolute), not bit for bit
TO_ROUNDING = {"backend"}


def assert_close(got, want, why, path=""):
    """The same structure and strings; numbers within 1e-10 relative or 1e-12 absolute."""
    if isinstance(want, dict):
        assert list(got) == list(want), (why, path)
        for k in want:
            assert_close(got[k], want[k], why, f"{path}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), (why, path)
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, why, f"{path}[{i}]")
    elif isinstance(want, float) and isinstance(got, float) and not (math.isnan(want) and math.isnan(got)):
        assert abs(got - want) <= 1e-10 * max(abs(got), abs(want)) + 1e-12, (why, path, got, want)
    else:
        assert got == want, (why, path, got, want)


def without(args, *options):
    """``args`` less each of ``options`` and its value (a variant that replaces a base option)."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in options:
            skip = True
        else:
            out.append(a)
    return out


@pytest.mark.parametrize("name", COMMANDS)
def test_json_layout_is_the_same_for_every_command(name):
    rec = cached((name, *BASE[name]))
    assert list(rec)[:4] == ["command", "config", "software", "rows"] and rec["command"] == name
    assert isinstance(rec["rows"], list) and rec["rows"] and all(isinstance(r, dict) for r in rec["rows"])
    cfg = rec["config"]
    assert {"seed", "backend", "dtype", "activation", "sigma_w2", "sigma_b2", "depth"} <= set(cfg)
    if name == "alpha":  # analytic: no draw, no arrays — recorded as not applying
        assert (cfg["seed"], cfg["backend"], cfg["dtype"]) == (None, None, None)
    elif name == "predict":  # analytic kernels by default: float64 NumPy, no backend chosen
        assert (cfg["seed"], cfg["backend"], cfg["dtype"], cfg["kernel"]) == (0, None, "float64", "analytic")
    else:
        assert (cfg["seed"], cfg["backend"], cfg["dtype"]) == (0, "numpy", "float64")
        assert cfg["dataset"]["name"] == "mnist"
    sw = rec["software"]
    assert {"ngdref", "python", "numpy", "scipy", "platform", "git_commit", "blas", "blas_build"} <= set(sw)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # run from a checkout
        assert sw["git_commit"] == head.stdout.strip()
    assert sw["blas"] and all("internal_api" in lib and "version" in lib for lib in sw["blas"])


def test_git_commit_is_none_without_git(monkeypatch):
    import ngdref.io as io

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    io._git_state_cached.cache_clear()
    monkeypatch.setattr(io.subprocess, "run", no_git)
    try:
        sw = io.software_versions()
        assert sw["git_commit"] is None and sw["git_dirty"] is None
    finally:
        io._git_state_cached.cache_clear()


@pytest.mark.parametrize("name", ["train", "isotropy", "ntk", "predict"])
def test_settings_after_the_command_equal_before_it_and_win(name):
    context = EMPIRICAL if name == "predict" else []
    settings = ["--seed", "1", "--dtype", "float32"]
    before = invoke([*settings, name, *BASE[name], *context])
    after = invoke([name, *BASE[name], *context, *settings])
    overridden = invoke(["--seed", "2", "--dtype", "float64", name, *BASE[name], *context, *settings])
    assert before["config"]["seed"] == 1 and before["config"]["dtype"] == "float32"
    for rec in (after, overridden):
        assert rec["config"] == before["config"] and results(rec) == results(before)


def test_every_command_takes_the_settings_after_its_name():
    """Whatever the command (reproduce, or one added later), the group gives it --seed, --backend and
    --dtype; one that does not use a setting refuses it, before or after its name, saying why."""
    for name, command in cli.commands.items():
        unused = getattr(command, "unused_settings", {})
        for setting in SETTINGS:
            opts = [p for p in command.params if f"--{setting}" in getattr(p, "opts", ())]
            assert len(opts) == 1, (name, setting)
            assert opts[0].hidden == (setting in unused), (name, setting)
    for args in (["alpha", "--seed", "1"], ["--seed", "1", "alpha"], ["--dtype", "float32", "alpha"]):
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 2 and r.output.startswith("Error: --") and "does not apply to 'alpha'" in r.output
    for args in (["--dtype", "float32"], ["--width", "64"]):  # the analytic kernels: float64, infinite width
        r = CliRunner().invoke(cli, ["predict", *args, "--seeds", "1"])
        assert r.exit_code == 2 and "--kernel empirical" in r.output


def test_help_shows_every_summary_whole():
    r = CliRunner().invoke(cli, ["--help"], terminal_width=80)
    assert r.exit_code == 0
    section = r.output[r.output.index("Commands:"):]
    lines = section.splitlines()[1:]
    for name, command in cli.commands.items():
        start = next(i for i, line in enumerate(lines) if line.split()[:1] == [name])
        text = lines[start][len(name) + 2:].strip()
        for line in lines[start + 1:]:
            if line[:3].strip():  # the next command
                break
            text += " " + line.strip()
        assert " ".join(text.split()) == command_summary(command), name
        assert "..." not in text and text.count("(") == text.count(")"), name
    assert "Train with NGD (Eq. 7)" in section
    for name in COMMANDS:  # ngdref's own commands: one line each at 80 columns
        assert len(cli.commands[name].short_help) <= 80 - 2 - len("reproduce") - 2, name


def test_summary_without_short_help_is_the_whole_first_paragraph():
    command = click.Command("x", help="Do a thing (Eq. 3) and another (Fig. 2).\n\nDetails. More.")
    assert command_summary(command) == "Do a thing (Eq. 3) and another (Fig. 2)."


def test_shared_defaults_agree_or_each_help_says_why():
    """An option several commands share has one default, or each command's help explains its own."""
    own_choice = {"fim": "each command's default set is the figure it mirrors, listed in its --help",
                  "input_dim": "alpha's is the network's M0, the data commands' the M0 of --data gaussian",
                  "width": "isotropy's --width is unset by default: its widths are --widths (Fig. 3's)"}
    by_key: dict = {}
    for name in COMMANDS:
        for p in visible_params(cli.commands[name]):
            by_key.setdefault(option_key(p), {})[name] = p
    for key, params in by_key.items():
        defaults = {repr(p.default) for p in params.values()}
        if len(defaults) > 1 and key not in own_choice:
            for name, p in params.items():
                assert "Defaults follow the paper" in (p.help or ""), (key, name, defaults)


def test_unit_wise_damping_is_the_same_in_train_isotropy_and_predict():
    from ngdref.fisher import fisher_class

    rho = fisher_class("unit").spec.default_damping
    train = cached(("train", *BASE["train"]))
    iso = cached(("isotropy", *BASE["isotropy"]))
    assert train["summary"]["damping"] == rho
    assert next(r for r in iso["rows"] if r["fim"] == "unit")["damping"] == rho
    assert next(r for r in iso["rows"] if r["fim"] == "bd")["damping"] == fisher_class("bd").spec.default_damping
    for name in ("train", "isotropy", "predict"):
        damping = next(p for p in cli.commands[name].params if p.name == "damping")
        assert damping.default is None, name  # None: the approximation's own default
