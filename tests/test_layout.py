"""Code layout: ngdref's modules import each other without cycles and only downwards (the layers
of the paper: network → kernels → fisher → training → experiments); one module per figure and
one module per approximation family."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import ngdref.experiments

ROOT = Path(ngdref.experiments.__file__).parent


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted name → file for every module under ``root`` (a package's name for its ``__init__.py``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join([package, *parts])] = path
    return out


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module → the modules under ``package`` it imports, anywhere in the file (function-level imports too)."""
    modules = module_names(root, package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        here = name.split(".") if is_package else name.split(".")[:-1]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = here[: len(here) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in modules and "." in t:  # import a.b.c where only a.b is ours
                    t = t.rsplit(".", 1)[0]
                if t in modules and t != name:
                    edges.add(t)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, …, a], or None when the graph is acyclic."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_experiments_import_graph_is_acyclic():
    graph = import_graph(ROOT, "ngdref.experiments")
    assert "ngdref.experiments.figures.fig1a" in graph
    assert "ngdref.experiments.sweep" in graph["ngdref.experiments.figures.run"]
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph))


#: the layers, lowest first: a module may import only from its own layer or lower ones
LAYERS = [
    ("ngdref.errors",),
    ("ngdref.backend", "ngdref.memory"),
    ("ngdref.activations", "ngdref.linalg", "ngdref.data", "ngdref.diagnostics", "ngdref.dynamics", "ngdref.losses",
     "ngdref.threads"),
    ("ngdref.network",),
    ("ngdref.jacobian",),
    ("ngdref.ntk", "ngdref.kernels"),
    ("ngdref",),  # the package's re-exports
    ("ngdref.io",),
    ("ngdref.fisher",),
    ("ngdref.train",),
    ("ngdref.experiments",),
]


def _layer(module: str) -> int:
    best = None
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + ".") and prefix != "ngdref":
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    assert best is not None, f"{module} is in no layer of LAYERS"
    return best[0]


def test_whole_package_is_acyclic_and_layered():
    import ngdref

    graph = import_graph(Path(ngdref.__file__).parent, "ngdref")
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph))
    upward = [f"{a} → {b}" for a, edges in graph.items() for b in edges if _layer(b) > _layer(a)]
    assert not upward, "imports from a higher layer: " + ", ".join(sorted(upward))


def test_one_module_per_approximation_family():
    from ngdref.fisher import REGISTRY

    families = {cls.__module__ for cls in REGISTRY.values()}
    # every approximation lives in a module directly under ngdref.fisher, and every module there
    # that is not shared infrastructure holds (and registers) at least one approximation
    infrastructure = {"__init__", "base", "spec", "cost", "operators"}
    modules = {f"ngdref.fisher.{p.stem}" for p in (Path(ngdref.__file__).parent / "fisher").glob("*.py")
               if p.stem not in infrastructure}
    assert families == modules
    assert {"ngdref.fisher.exact", "ngdref.fisher.layerwise", "ngdref.fisher.kfac", "ngdref.fisher.unitwise",
            "ngdref.fisher.diagonal"} <= families
    for cls in REGISTRY.values():
        module = importlib.import_module(cls.__module__)
        assert module.__doc__ and ("Eq." in module.__doc__ or "Fig." in module.__doc__), cls.__module__


def test_cycle_finder_sees_a_function_level_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .a import f\n")
    (pkg / "sub" / "a.py").write_text("def f():\n    from ..b import g\n    return g\n")
    (pkg / "b.py").write_text("from .sub import a\n")
    graph = import_graph(pkg, "pkg")
    assert graph["pkg.b"] == {"pkg.sub.a"} and graph["pkg.sub.a"] == {"pkg.b"}
    assert find_cycle(graph) in (["pkg.b", "pkg.sub.a", "pkg.b"], ["pkg.sub.a", "pkg.b", "pkg.sub.a"])
    (pkg / "b.py").write_text("import os\n")
    assert find_cycle(import_graph(pkg, "pkg")) is None


def test_one_module_per_figure():
    from ngdref.experiments.figures import FIGURES, REGISTRY, TITLES

    for name in FIGURES:
        module = importlib.import_module(f"ngdref.experiments.figures.{name.replace('-', '_')}")  # finite-width
        fig = module.FIGURE
        assert REGISTRY[name] is fig and fig.name == name and TITLES[name] == fig.title
        assert module.__doc__ and "Fig." in module.__doc__.splitlines()[0]
        cfg = fig.config(quick=True)
        assert cfg["figure"] == name and cfg["quick"] is True
        assert fig.cells(cfg, "numpy", "float64")


def test_cli_choices_and_help_come_from_the_registry():
    from click.testing import CliRunner

    from ngdref.experiments.figures import REGISTRY
    from ngdref_cli.main import cli

    r = CliRunner().invoke(cli, ["reproduce", "--help"], terminal_width=1000)  # unwrapped: no "finite- width"
    assert r.exit_code == 0
    text = " ".join(r.output.split())
    for name, fig in REGISTRY.items():
        assert f"{name} {' '.join(fig.summary.split())}" in text
    from ngdref.experiments.figures.registry import GROUPS, PAPER_FIGURES

    figure_arg = next(p for p in cli.commands["reproduce"].params if p.name == "figure")
    assert list(figure_arg.type.choices) == [*REGISTRY, *GROUPS]  # the accepted names: the registry's, in order
    bad = CliRunner().invoke(cli, ["reproduce", "fig9"])
    assert bad.exit_code == 2 and all(repr(n) in bad.output for n in [*REGISTRY, *GROUPS])  # and said on a typo
    # `all` is the paper's figures, `extensions` the rest, `everything` both, each once
    assert GROUPS["all"] == PAPER_FIGURES == ("fig1a", "fig1b", "fig2", "fig3", "figS1", "figS2")
    assert set(GROUPS["extensions"]) == set(REGISTRY) - set(PAPER_FIGURES) and GROUPS["extensions"]
    assert GROUPS["everything"] == tuple(REGISTRY)
    assert all(REGISTRY[n].title.startswith("Extension") for n in GROUPS["extensions"])
    assert not any(REGISTRY[n].title.startswith("Extension") for n in GROUPS["all"])
