"""Rich tables of a benchmark result (the JSON written by ``python -m benchmarks run``)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def _ms(s) -> str:
    if s is None:
        return "—"
    return f"{s * 1e3:.1f}" if s < 10 else f"{s:.1f} s"


def _f(v, spec=".2f") -> str:
    return "—" if v is None else format(v, spec)


def _mib(b) -> str:
    return "—" if b is None else f"{b / 2**20:.1f}"


def _label(c: dict) -> str:
    name = c["case"]
    if c.get("fim"):
        name += f" [{c['fim']}]"
    if c.get("path") and c["group"] in ("core", "explicit"):
        name += f" ({c['path']})"
    return escape(name)


def print_report(result: dict, console: Console | None = None) -> None:
    con = console or Console()
    m = result["machine"]
    con.print(f"[bold]ngdref benchmarks[/bold] suite={result['suite']}  {m['date_utc']}  {m['cpu_model']} "
              f"({m['logical_cpus']} CPUs)  numpy {m['versions'].get('numpy')}  "
              f"BLAS {m['blas'].get('blas', {}).get('name', '?')} {m['blas'].get('blas', {}).get('version', '')}")
    env = {k: v for k, v in m["env"].items() if v is not None}
    con.print(escape(f"env: {env or 'none of the recorded variables set'}   backends: {result['backends']}"
                     + (f"   skipped: {result['skipped_backends']}" if result.get("skipped_backends") else "")))
    load = result.get("load_average") or {}
    if load.get("start"):
        con.print(f"load average at start {load['start'][0]:.2f}, at end {(load.get('end') or [0])[0]:.2f} "
                  f"(on {m['logical_cpus']} CPUs; other work on the machine slows threaded BLAS)")

    t = Table(title="Large-GEMM rate (the floor's denominator)")
    for col in ("backend/dtype", "n", "median ms", "GFLOP/s"):
        t.add_column(col, justify="right")
    for key, g in result["gemm"].items():
        for row in g["sizes"]:
            t.add_row(key, str(row["n"]), _ms(row["median_s"]), _f(row["gflops_per_s"], ".1f"))
    con.print(t)

    cases = result["cases"]
    groups = []
    for c in cases:
        key = (c["group"], c["backend"], c["dtype"])
        if key not in groups:
            groups.append(key)
    for group, backend, dtype in groups:
        rows = [c for c in cases if (c["group"], c["backend"], c["dtype"]) == (group, backend, dtype)]
        t = Table(title=f"{group} — {backend} {dtype}", show_lines=False)
        for col in ("case", "M", "N", "P", "median ms", "reps", "GFLOP/s", "×floor", "peak MiB", "peak/params",
                    "RSS growth MiB", "RSS/params", "peak RSS MiB", "status"):
            t.add_column(col, justify="right" if col not in ("case", "status") else "left")
        for c in rows:
            ok = c["status"] == "ok"
            t.add_row(
                _label(c),
                str(c.get("width") or "—"),
                str(c.get("n") or "—"),
                str(c.get("n_params") or "—"),
                _ms(c.get("median_s")) if ok else "—",
                str(c.get("repeats", "—")) if ok else "—",
                _f(c.get("gflops_per_s"), ".1f") if ok else "—",
                _f(c.get("time_over_floor"), ".1f") if ok else "—",
                _mib(c.get("peak_bytes")) if ok else "—",
                _f(c.get("peak_over_params")) if ok else "—",
                _mib(c.get("peak_rss_growth_bytes")) if ok else "—",  # growth during the call (a forked child)
                _f(c.get("peak_rss_growth_over_params")) if ok else "—",
                _mib(c.get("peak_rss_bytes")) if ok else "—",  # the whole process's peak (the CLI case has only this)
                "ok" if ok else escape(f"{c['status']}: {c['note'][:70]}"),
            )
        con.print(t)

    r = result["ratios"]
    if r.get("structured_over_explicit"):
        t = Table(title="structured / explicit (same run)")
        for col in ("case", "dtype", "M", "P", "structured ms", "explicit ms", "time ratio", "memory ratio", "max rel diff"):
            t.add_column(col, justify="right")
        for row in r["structured_over_explicit"]:
            t.add_row(escape(row["case"] + (f" [{row['fim']}]" if row.get("fim") else "")), row["dtype"], str(row["width"]),
                      str(row["n_params"]), _ms(row["structured_s"]), _ms(row["explicit_s"]),
                      _f(row["time_structured_over_explicit"], ".2g"), _f(row["memory_structured_over_explicit"], ".2g"),
                      _f(row.get("max_rel_diff"), ".1e"))
        con.print(t)
    if r.get("float32_over_float64"):
        t = Table(title="float32 / float64 time (same run)")
        for col in ("case", "backend", "M", "f32 ms", "f64 ms", "ratio"):
            t.add_column(col, justify="right")
        for row in r["float32_over_float64"]:
            label = row["case"] + (f" [{row['fim']}]" if row.get("fim") else "") + (
                f" ({row['path']})" if row.get("path") and row["group"] == "core" else "")
            t.add_row(escape(label), row["backend"], str(row["width"]), _ms(row["float32_s"]), _ms(row["float64_s"]),
                      _f(row["time_float32_over_float64"]))
        con.print(t)
        con.print(escape(f"GEMM time float32/float64 (rate f64 / rate f32): {r.get('gemm_float32_over_float64')}"))
    if isinstance(r.get("cupy_over_numpy"), list):
        t = Table(title="CuPy / NumPy time (same run)")
        for col in ("case", "cupy ms", "numpy ms", "ratio"):
            t.add_column(col, justify="right")
        for row in r["cupy_over_numpy"]:
            t.add_row(escape(row["id"]), _ms(row["cupy_s"]), _ms(row["numpy_s"]), _f(row["time_cupy_over_numpy"], ".3f"))
        con.print(t)
    else:
        con.print(escape(f"CuPy/NumPy: {r.get('cupy_over_numpy')}"))

    peer = result.get("peer") or {}
    if peer.get("rows"):
        t = Table(title="empirical NTK vs neural-tangents (float64, same weights)")
        for col in ("M", "ngdref ms", "neural-tangents ms", "best NT impl.", "speed-up", "kernel rel diff", "status"):
            t.add_column(col, justify="right")
        for row in peer["rows"]:
            t.add_row(str(row["width"]), _ms(row.get("ngdref_median_s")), _ms(row.get("peer_best_median_s")),
                      str(row.get("peer_best_implementation", "—")), _f(row.get("speedup"), ".1f"),
                      _f(row.get("kernel_max_rel_diff"), ".1e"), str(row.get("status"))[:60])
        con.print(t)
    else:
        con.print(escape(f"peer comparison: {peer.get('status')}; torch: {peer.get('torch', '—')}"))

    con.print("[bold]targets[/bold]")
    for key, tg in result["targets"].items():
        met = tg.get("met")
        mark = {True: "[green]met[/green]", False: "[red]NOT met[/red]", None: "[yellow]not evaluated[/yellow]"}[met]
        detail = tg.get("status", "")
        if key == "cli_train_unit_30s" and tg.get("wall_s") is not None:
            detail = f"{tg['wall_s']:.1f} s"
        if key == "step_memory" and tg.get("rows"):
            detail = ", ".join(f"{x['fim']} {x['peak_over_params']:.2f}×" for x in tg["rows"])
        if key == "ntk_vs_neural_tangents_3x" and tg.get("rows"):
            detail = ", ".join(f"M={x['width']} {x['speedup']:.1f}×" for x in tg["rows"])
        if key == "fisher_step_speed" and tg.get("rows"):
            bad = [f"{x['fim']}.{x['case']} {x['median_s'] * 1e3:.0f} ms ({x['time_over_floor']:.1f}× floor)"
                   for x in tg["rows"] if x["case"] != "direction" and not (x["within_2s"] and x["within_3x_floor"])]
            detail = f"≤2 s: {tg['met_2s']}, ≤3× floor: {tg['met_3x_floor']}" + (f"; misses: {', '.join(bad)}" if bad else "")
        con.print(f"  {key}: {mark}  {escape(detail)}")
    for note in result.get("notes", []):
        con.print(f"note: {escape(note)}")
    con.print(f"elapsed {result.get('elapsed_s', 0):.0f} s")
