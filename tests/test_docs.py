"""The documents say what the code does: REPRODUCTION.md's damping conventions name every figure's ρ
as its configuration has it (issue 13), and the README's first lines are the contract with a user."""

from __future__ import annotations

import re
from pathlib import Path

from ngdref.experiments.figures import REGISTRY

ROOT = Path(__file__).resolve().parent.parent


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start:] if end < 0 else text[start:end]


def _figure_rows(section: str) -> dict[str, str]:
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells and cells[0] in REGISTRY:
            rows[cells[0]] = cells[1]
    return rows


def test_damping_conventions_name_each_figures_rho():
    section = _section((ROOT / "REPRODUCTION.md").read_text(), "## Damping conventions")
    assert "2ρ_a/N" in section  # the conversion from the published code's units
    rows = _figure_rows(section)
    assert set(rows) == set(REGISTRY), "one row per figure of the registry"
    for name, fig in REGISTRY.items():
        config = fig.config(quick=False)
        values = list(config.get("dampings", [])) + ([config["damping"]] if "damping" in config else [])
        stated = {float(v) for v in re.findall(r"\d+(?:\.\d+)?(?:e-?\d+)?", rows[name])}
        for rho in values:
            assert float(rho) in stated, (name, rho, rows[name])
        if not values:  # no ρ in the configuration: the row must say so (pseudo-inverse or none)
            assert "0" in rows[name] or "none" in rows[name], (name, rows[name])


def test_readme_first_lines_are_install_and_test():
    lines = (ROOT / "README.md").read_text().splitlines()
    block = lines[lines.index("```bash") + 1: lines.index("```bash") + 3]
    assert block[0].startswith("pip install -e .") and "ngdref train" in block[0]
    assert block[1].startswith('pip install -e ".[test]"') and "pytest" in block[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pytest -q" in ci and ".[test]" in ci
