"""The figures as a reader sees them (issue 14), checked from the figure objects, not pixels: Θ̄ as
mathtext, no legend over a data point, no empty series, no measured loss clipped off the axis,
coinciding runs told apart, Fig. 2's axis and band honest; and what `reproduce` writes beside
them: every --format, a caption per figure, the contact sheet of `all`, the common JSON layout
with one type per column, and overrides of the sweep (--set, --config) checked before any work."""

from __future__ import annotations

import html
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from ngdref.experiments.figures import REGISTRY, build_cells, figure_config, get_figure
from ngdref.experiments.figures.run import RUN_KEYS, uniform_rows
from ngdref.experiments.sweep import run_cells
from ngdref_cli.main import cli

PAPER = ("fig1a", "fig1b", "fig2", "fig3", "figS1", "figS2")  # the paper's figures (`all`)
EXTENSIONS = ("finite-width", "kfac-multi-output", "sub-unit")  # issue 16's figures beyond the paper
LOSS_FIGURES = ("fig1a", "fig1b", "figS1")
THETA_BAR_TEX = ("\\bar{\\Theta}", "\\bar\\Theta")


def invoke(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


@pytest.fixture(scope="module")
def run_all(tmp_path_factory):
    """`ngdref reproduce all --quick --format png,pdf,svg` once: the folder and each figure's record.

    `all` is the paper's figures (the extensions are `reproduce extensions`, tested on their own)."""
    root = tmp_path_factory.mktemp("figs")
    r = invoke(["reproduce", "all", "--quick", "--format", "png,pdf,svg", "--out", str(root),
                "--json", str(root / "all.json")])
    assert r.exit_code == 0, r.output
    names = [n for n in REGISTRY if (root / n / f"{n}.json").is_file()]
    assert tuple(names) == PAPER  # exactly the paper's figures
    return root, {n: json.loads((root / n / f"{n}.json").read_text()) for n in names}


@pytest.fixture(scope="module")
def drawn(run_all):
    """Each figure drawn again from its stored cells (the same rows as the written figure)."""
    from ngdref.experiments.figures.plotting import pyplot

    pytest.importorskip("matplotlib")
    plt = pyplot()
    root, records = run_all
    figs = {}
    for name in PAPER:
        figs[name] = _redrawn(plt, name, root / name)
        assert figs[name][1] == records[name]["rows"]
    yield figs
    for fig, _, _ in figs.values():
        plt.close(fig)


def _redrawn(plt, name: str, folder):
    """Figure ``name`` at --quick drawn again from the cells stored under ``folder`` (no cell re-run):
    (matplotlib figure, rows as run_figure writes them, config)."""
    figure = get_figure(name)
    config = figure_config(name, quick=True)
    outcomes = run_cells(figure.cells(config, "numpy", "float64"), None, folder / "cells")
    rows, _, extra = figure.analyse(config, outcomes)
    rows = uniform_rows(rows)  # as run_figure writes them
    fig = figure.draw(plt, config, rows, extra)
    fig.tight_layout()
    fig.canvas.draw()
    return fig, rows, config


@pytest.fixture(scope="module")
def drawn_extensions(reproduced):
    """The extension figures at --quick (conftest's session-wide ``reproduced``: each sweep run once per
    session) drawn again from their stored cells, lazily: ``get(name)`` → (figure, rows, config)."""
    from ngdref.experiments.figures.plotting import pyplot

    pytest.importorskip("matplotlib")
    plt = pyplot()
    figs: dict = {}

    def get(name):
        if name not in figs:
            out, rec, _ = reproduced(name)
            figs[name] = _redrawn(plt, name, out)
            assert figs[name][1] == rec["rows"]
        return figs[name]

    yield get
    for fig, _, _ in figs.values():
        plt.close(fig)


def _drawn(request, name):
    """(figure, rows, config) of a paper figure (``drawn``) or an extension (``drawn_extensions``)."""
    if name in PAPER:
        return request.getfixturevalue("drawn")[name]
    return request.getfixturevalue("drawn_extensions")(name)


def _texts(fig) -> list[str]:
    out = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()] + [t.get_text() for t in ax.texts]
        out += [t.get_text() for t in ax.get_xticklabels()]
        if ax.get_legend() is not None:
            out += [t.get_text() for t in ax.get_legend().get_texts()]
    for leg in fig.legends:
        out += [t.get_text() for t in leg.get_texts()]
    return [t for t in out if t]


def _data_points(ax) -> np.ndarray:
    """Display coordinates of every drawn data point of ``ax`` (line vertices, scatter offsets)."""
    pts = []
    for line in ax.get_lines():
        xy = np.column_stack([np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)])
        xy = xy[np.isfinite(xy).all(axis=1)]
        if line.get_transform() != ax.transData:  # axhline: spans the axes; its data are its y only
            continue
        if len(xy):
            pts.append(ax.transData.transform(xy))
    for coll in ax.collections:
        offs = np.asarray(coll.get_offsets(), float)
        if offs.size and coll.get_offset_transform() == ax.transData:
            pts.append(ax.transData.transform(offs))
    return np.vstack(pts) if pts else np.zeros((0, 2))


@pytest.mark.parametrize("name", PAPER + EXTENSIONS)
def test_theta_bar_as_mathtext_where_meant(request, name):
    fig, _, _ = _drawn(request, name)
    texts = _texts(fig)
    assert not any("\u0304" in t for t in texts), texts  # a combining macron: matplotlib drops it
    assert not any("Θ" in t for t in texts), texts  # a plain Θ glyph would read as the NTK
    if name in ("fig1b", "fig2", "fig3", "figS2") + EXTENSIONS:
        assert any(any(m in t for m in THETA_BAR_TEX) for t in texts), texts
    if name == "fig3":
        assert any(m in fig.axes[0].get_ylabel() for m in THETA_BAR_TEX)


@pytest.mark.parametrize("name", PAPER + EXTENSIONS)
def test_no_legend_covers_a_data_point(request, name):
    fig, _, _ = _drawn(request, name)
    renderer = fig.canvas.get_renderer()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + list(fig.legends)
    assert legends, name
    for leg in legends:
        box = leg.get_window_extent(renderer)
        for ax in fig.axes:
            pts = _data_points(ax)
            inside = (pts[:, 0] > box.x0) & (pts[:, 0] < box.x1) & (pts[:, 1] > box.y0) & (pts[:, 1] < box.y1)
            assert not inside.any(), (name, ax.get_title(), pts[inside][:3], box)


@pytest.mark.parametrize("name", PAPER + EXTENSIONS)
def test_no_plotted_series_is_empty(request, name):
    fig, _, _ = _drawn(request, name)
    for ax in fig.axes:
        if not ax.axison and not ax.get_lines() and not ax.collections:  # a panel that only holds a legend
            assert ax.get_legend() is not None and ax.get_legend().get_texts(), (name, "an empty panel")
            continue
        lines = ax.get_lines()
        assert lines, (name, ax.get_title())
        for line in lines:
            y = np.asarray(line.get_ydata(), float)
            assert len(y) and np.isfinite(y).any(), (name, line.get_label())


@pytest.mark.parametrize("name", LOSS_FIGURES)
def test_every_measured_loss_is_drawn_inside_the_axes(drawn, name):
    """No silent dropping: every positive measured loss is a marker inside the y-limits (the old
    1e-15 floor hid fig1a's last c = 1 points); the y-range is fitted to the data, not to the floor."""
    fig, rows, _ = drawn[name]
    measured = [r["train_loss"] for r in rows if r.get("step") is not None and r["train_loss"]]
    shown = []
    for ax in fig.axes:
        lo, hi = ax.get_ylim()
        for line in ax.get_lines():
            if line.get_marker() in ("None", "", None, " ") or line.get_marker() == "x":
                continue
            y = np.asarray(line.get_ydata(), float)
            y = y[np.isfinite(y)]
            assert ((y >= lo) & (y <= hi)).all(), (name, line.get_label(), y, (lo, hi))
            shown += list(y)
        assert lo > 1e-15 or min(measured) < 1e-13, (name, lo)  # fitted, not the old fixed floor
    assert sorted(shown) == pytest.approx(sorted(measured), rel=1e-12)


def test_fig1a_exact_and_bd_at_c1_told_apart_and_theory_zero_marked(drawn):
    fig, rows, _ = drawn["fig1a"]
    ax = fig.axes[0]
    by = {line.get_label(): line for line in ax.get_lines()}
    bd = next(v for k, v in by.items() if k.startswith("block-diagonal") and "c = 1" in k)
    ex = next(v for k, v in by.items() if k.startswith("exact NGD"))
    assert (bd.get_marker(), bd.get_markersize()) != (ex.get_marker(), ex.get_markersize())
    assert bd.theory_line.get_linestyle() != ex.theory_line.get_linestyle()
    zero = [ln for ln in ax.get_lines() if ln.get_label().startswith("loss 0")]
    assert len(zero) == 1
    level = zero[0].get_ydata()[0]
    # the c = 1 prediction (exactly 0 after one step) is drawn on the marked zero level, below every measurement
    assert np.nanmin(bd.theory_line.get_ydata()) == level
    assert level < min(r["train_loss"] for r in rows if r.get("step") is not None)
    assert any(t.get_text() == "theory: 0" for t in ax.texts)


def test_fig1b_small_rho_markers_differ_and_l5_explained(drawn):
    fig, _, config = drawn["fig1b"]
    for ax in fig.axes:
        styles = {(ln.get_marker(), ln.get_markersize()) for ln in ax.get_lines()
                  if ln.get_label().startswith("$\\rho") and ln.get_marker() not in ("None", "")}
        n_runs = sum(1 for ln in ax.get_lines() if ln.get_label().startswith("$\\rho")
                     and ln.get_marker() not in ("None", ""))
        assert len(styles) == n_runs >= 4
    l5 = next(ax for ax in fig.axes if "L = 5" in ax.get_title())
    note = " ".join(t.get_text() for t in l5.texts)
    assert "refused" in note and "window" in note and "Lemma 4.3" in note
    assert get_figure("fig1b").caption_text(config, [], {"runs": []}).count("window") >= 1


def test_fig2_axis_spans_ten_points_and_band_stays_within_100(drawn):
    fig, rows, _ = drawn["fig2"]
    for ax in fig.axes:
        lo, hi = ax.get_ylim()
        assert hi - lo >= 10 and hi <= 101, (lo, hi)
        segs = [s for coll in ax.collections for s in coll.get_segments()]
        assert segs
        ys = np.concatenate([np.asarray(s)[:, 1] for s in segs])
        assert ys.max() <= 100 + 1e-9 and ys.min() >= 0


def test_formats_captions_and_contact_sheet(run_all):
    root, records = run_all
    magic = {"png": b"\x89PNG", "pdf": b"%PDF", "svg": b"<?xml"}
    sheet = (root / "index.html").read_text()
    for name in PAPER:
        rec = records[name]
        for fmt, head in magic.items():
            path = root / name / f"{name}.{fmt}"
            assert path.read_bytes()[:len(head)] == head, path
            assert rec["files"][fmt] == str(path)
        cap = (root / name / f"{name}.caption.md").read_text()
        cfg = rec["config"]
        assert "seed" in cap and "backend = numpy" in cap and cfg["dtype"] in cap
        assert get_figure(name).claim in cap
        width = cfg["network"]["width"] if name not in ("fig3",) else cfg["widths"][-1]
        assert str(width) in cap
        assert cap.count("\n| ") == len(rec["claims"]) + 2  # header, rule, one row per claim
        # the contact sheet: every figure, by a relative link, with its claims
        assert f'src="{name}/{name}.png"' in sheet and f'href="{name}/{name}.caption.md"' in sheet
        assert html.escape(rec["title"]) in sheet
    assert str(root) not in sheet  # relative links only
    n_claims = sum(len(rec["claims"]) for rec in records.values())
    assert sheet.count("<tr><td>") == n_claims


def test_json_layout_and_one_type_per_column(run_all):
    _, records = run_all
    for name in PAPER:
        rec = records[name]
        assert list(rec)[:4] == ["command", "config", "software", "rows"] and rec["command"] == "reproduce"
        cfg = rec["config"]
        assert {"backend", "dtype", "seed", "threads", "format", "executor", "overrides"} <= set(cfg)
        assert cfg["format"] == ["png", "pdf", "svg"] and cfg["figure"] == name
        assert {"claims", "cells", "wall_seconds", "summary"} <= set(rec)
        columns: dict = {}
        for row in rec["rows"]:
            for k, v in row.items():
                if v is not None:
                    columns.setdefault(k, set()).add("number" if isinstance(v, (int, float))
                                                     and not isinstance(v, bool) else type(v).__name__)
        mixed = {k: t for k, t in columns.items() if len(t) > 1}
        assert not mixed, (name, mixed)
        assert all(list(row) == list(rec["rows"][0]) for row in rec["rows"]), name  # C2: one key set, one order
    fig2 = records["fig2"]["rows"]
    assert {r["initial_output"] for r in fig2} == {"sampled", "zero"}
    assert all((r["seed"] is None) == (r["initial_output"] == "zero") for r in fig2)


def test_uniform_rows_fill_missing_columns_with_none_in_first_seen_order():
    rows = uniform_rows([{"a": 1, "b": 2}, {"a": 3, "message": "refused"}, {"c": 0.5, "a": 4}])
    assert rows == [{"a": 1, "b": 2, "message": None, "c": None}, {"a": 3, "b": None, "message": "refused", "c": None},
                    {"a": 4, "b": None, "message": None, "c": 0.5}]
    assert all(list(r) == ["a", "b", "message", "c"] for r in rows) and uniform_rows([]) == []


def test_all_json_has_the_common_layout(run_all):
    root, records = run_all
    doc = json.loads((root / "all.json").read_text())
    assert list(doc)[:4] == ["command", "config", "software", "rows"] and doc["command"] == "reproduce"
    assert doc["config"]["figures"] == list(PAPER) and doc["config"]["format"] == ["png", "pdf", "svg"]
    assert {"backend", "dtype", "seed", "threads", "overrides"} <= set(doc["config"])
    assert [f["figure"] for f in doc["figures"]] == list(PAPER)
    assert len(doc["rows"]) == sum(len(r["claims"]) for r in records.values())
    assert {type(r["holds"]) for r in doc["rows"]} <= {bool, type(None)}
    assert doc["contact_sheet"] == str(root / "index.html")


def test_no_figure_configuration_shadows_a_run_setting():
    for name, figure in REGISTRY.items():
        clash = set(figure.config(True, None, 0)) & set(RUN_KEYS)
        assert not clash, (name, clash)


# ---------------------------------------------------------------------------------------
# overrides: --set and --config
# ---------------------------------------------------------------------------------------
def test_toml_value_round_trips_through_a_toml_parser():
    """The recorded ``--set KEY=VALUE`` command line must parse back to the values that ran."""
    from ngdref.experiments.figures.overrides import toml_value, tomllib

    for v in ['plain', 'a"quoted\\path', True, False, 3, 1e-12, 0.25, [1, 2.5, "x"], [[1, 2], []]]:
        assert tomllib.loads(f"k = {toml_value(v)}")["k"] == v


def test_overrides_change_config_and_cell_keys(tmp_path):
    default_keys = {c.key for c in build_cells(figure_config("figS2", quick=True))}
    # the file sets shifts for every figure, --set for figS2 by name: --set wins whatever the spelling
    (tmp_path / "sweep.toml").write_text('seeds = [5]\nshifts = [0.5, 1.5]\n[figS2.network]\nwidth = 64\n')
    out = tmp_path / "o"
    r = invoke(["reproduce", "figS2", "--quick", "--out", str(out), "--config", str(tmp_path / "sweep.toml"),
                "--set", "figS2.shifts=[0.5]", "--json", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    rec = json.loads((out / "figS2.json").read_text())
    cfg = rec["config"]
    assert cfg["shifts"] == [0.5] and cfg["seeds"] == [5] and cfg["network"]["width"] == 64  # --set wins
    assert cfg["overrides"] == {"seeds": [5], "shifts": [0.5], "network.width": 64}
    assert cfg["config_file"] == str(tmp_path / "sweep.toml") and cfg["set"] == ["figS2.shifts=[0.5]"]
    assert "--set=shifts=[0.5]" in rec["command_line"] and "--config" in rec["command_line"]
    stored = {p.stem for p in (out / "cells").glob("*.json")}
    assert len(stored) == 1 and not stored & default_keys
    assert {r["shift"] for r in rec["rows"]} == {0.5} and {r["seed"] for r in rec["rows"]} == {5}
    assert json.loads((tmp_path / "r.json").read_text())["config"] == cfg


def test_shift_override_needs_the_shifted_relu(tmp_path):
    """``network.shift`` is read only by φ_s(u) = max(u, −s) (S.157): refused for a ReLU sweep, as the CLI's
    --shift is; accepted with the activation that reads it."""
    from ngdref.errors import ConfigError
    from ngdref.experiments.figures.overrides import apply_overrides

    fig, cfg = get_figure("fig1a"), figure_config("fig1a", True)
    with pytest.raises(ConfigError, match="read only by the shifted-relu activation"):
        apply_overrides(fig, cfg, {"network.shift": 3.0})
    ok = apply_overrides(fig, cfg, {"network.shift": 3.0, "network.activation": "shifted-relu"})
    assert ok["network"]["shift"] == 3.0 and ok["network"]["activation"] == "shifted-relu"
    r = CliRunner().invoke(cli, ["reproduce", "fig1a", "--quick", "--out", str(tmp_path / "o"),
                                 "--set", "network.shift=3"])
    assert r.exit_code == 2 and 'network.activation="shifted-relu"' in r.output and not (tmp_path / "o").exists()


@pytest.mark.parametrize("args,toml,needle", [
    (["--set", "nokey=1"], None, "unknown key"),
    (["--set", "shifts=1"], None, "expected a list"),
    (["--set", "seeds=[-1]"], None, "≥ 0"),
    (["--set", "network.width=0"], None, "≥ 1"),
    (["--set", "damping=[1"], None, "cannot read the value"),
    (["--set", "noequals"], None, "KEY=VALUE"),
    (["--set", "quick=true"], None, "cannot be set"),
    (["--set", "fig3.widths=[64]"], None, "does not reproduce"),
    (["--set", "network.activation=nope"], None, "activation"),
    (["--set", "fim=diag"], None, "unknown key"),
    ([], "shifts = [0.5", "not valid TOML"),
    ([], "[figS2]\nwidths = [64]\n", "no setting 'widths'"),
    (["--config", "/nonexistent/sweep.toml"], None, "does not exist"),
    (["--format", "png,jpg"], None, "--format"),
    (["--format", ""], None, "--format"),
    (["--set", "shifts=[0.5]", "--set", "figS2.shifts=[1.0]"], None, "given twice"),
    ([], "shifts = [0.5]\n[figS2]\nshifts = [1.0]\n", "given twice"),
])
def test_bad_overrides_are_one_line_exit_2_before_any_work(tmp_path, args, toml, needle):
    out = tmp_path / "o"
    if toml is not None:
        (tmp_path / "bad.toml").write_text(toml)
        args = args + ["--config", str(tmp_path / "bad.toml")]
    r = CliRunner().invoke(cli, ["reproduce", "figS2", "--quick", "--out", str(out), *args])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0], r.stderr
    assert not out.exists() or not any(out.rglob("*"))


def test_fixed_and_checked_keys_of_each_figure():
    from ngdref.errors import ConfigError
    from ngdref.experiments.figures.overrides import apply_overrides, parse_set

    cases = [("fig1a", "runs=[1]", "cannot be set"), ("figS1", "lr_scales=[0.5]", "include 1"),
             ("fig1b", "dampings=[0.0]", "> 0"), ("fig3", "fims=[\"gd\", \"bd\"]", "must include"),
             ("fig2", "tasks.0.methods=[\"unit\"]", "analytic"), ("fig3", "fims=[\"nope\"]", "unknown Fisher")]
    for name, pair, needle in cases:
        with pytest.raises(ConfigError, match=needle.replace("(", "\\(")):
            apply_overrides(get_figure(name), figure_config(name, True), parse_set([pair]))
    cfg = apply_overrides(get_figure("fig1a"), figure_config("fig1a", True), parse_set(["steps=2", "network.width=64"]))
    assert cfg["steps"] == 2 and cfg["network"]["width"] == 64
    assert figure_config("fig1a", True)["steps"] != 2  # the default is left unchanged
    assert not math.isnan(cfg["runs"][0]["lr_scale"])


def _effective_cells(cells) -> list[str]:
    """Each cell's parameters as the cell uses them: a per-cell ``width`` replaces the network's width."""
    out = []
    for c in cells:
        q = json.loads(json.dumps(c.params))
        if "width" in q and isinstance(q.get("network"), dict):
            q["network"]["width"] = q["width"]
        out.append(json.dumps(q, sort_keys=True))
    return out


def _perturbed(v):
    if isinstance(v, bool):
        return not v
    if isinstance(v, (int, float)):
        return v * 1.5 + 3 if isinstance(v, float) else v + 3
    if isinstance(v, str):
        return v + "x"
    if isinstance(v, list) and v and not isinstance(v[0], (dict, list)):
        return [_perturbed(x) for x in v]
    return None  # tables and lists of tables: not probed


@pytest.mark.parametrize("name", list(REGISTRY))
def test_unread_keys_are_exactly_those_no_cell_reads_and_are_refused(name):
    """B4: a key is declared unread (Figure.unread) iff changing it leaves every cell as the cell uses it
    unchanged (probed on every settable scalar/list leaf of the quick configuration); overriding one is
    refused in one line that says what to set instead, with the figure's name or without."""
    import copy

    from ngdref.errors import ConfigError
    from ngdref.experiments.figures.overrides import _flatten, apply_overrides, split_by_figure, unread_remedy

    figure = get_figure(name)
    config = figure_config(name, True)
    base = _effective_cells(figure.cells(config, "numpy", "float64"))
    found = set()
    for key, value in _flatten(config).items():
        if key in ("figure", "quick") or key.split(".")[0] in figure.fixed or _perturbed(value) is None:
            continue
        changed = copy.deepcopy(config)
        node, parts = changed, [int(p) if p.isdigit() else p for p in key.split(".")]
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = _perturbed(value)
        try:
            same = _effective_cells(figure.cells(changed, "numpy", "float64")) == base
        except Exception:  # noqa: BLE001 - a value the cells cannot take is read
            same = False
        if same:
            found.add(key)
    assert found == {k for k, _ in figure.unread}, name
    for key, remedy in figure.unread:
        old = config
        for p in key.split("."):
            old = old[p]
        with pytest.raises(ConfigError, match=f"{name}: {key} is not read: .*use|{name}: {key} is not read: "):
            apply_overrides(figure, config, {key: _perturbed(old)})
        with pytest.raises(ConfigError, match="is not read"):
            split_by_figure({key: _perturbed(old)}, [name], REGISTRY, {name: config})
        assert unread_remedy(figure, key) == remedy and "\n" not in remedy
