"""Markdown tables of a benchmark JSON (``python -m benchmarks markdown bench.json``), for RESULTS.md."""

from __future__ import annotations


def _ms(s) -> str:
    if s is None:
        return "—"
    if s >= 1:
        return f"{s:.2f} s"
    return f"{s * 1e3:.3g} ms"


def _f(v, spec=".2f") -> str:
    return "—" if v is None else format(v, spec)


def _mib(b) -> str:
    return "—" if b is None else f"{b / 2**20:.1f}"


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header, rows) -> list[str]:
    out = [_row(header), _row(["---"] * len(header))]
    out += [_row(r) for r in rows]
    return out


def _label(c: dict) -> str:
    name = c["case"]
    if c.get("fim"):
        name += f" `{c['fim']}`"
    if c.get("path") and c["group"] in ("core", "explicit"):
        name += f" ({c['path']})"
    return name


def to_markdown(result: dict) -> str:
    lines: list[str] = []
    m = result["machine"]
    blas = m["blas"].get("blas", {})
    lines.append(f"Run: `{result.get('command')}` — suite `{result['suite']}`, {m['date_utc']}, "
                 f"{result.get('elapsed_s', 0):.0f} s.")
    lines.append("")
    lines.append(f"Machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs, "
                 f"{(m.get('memory_total_bytes') or 0) / 2**30:.0f} GiB; Python {m['versions'].get('python')}, "
                 f"NumPy {m['versions'].get('numpy')}, SciPy {m['versions'].get('scipy')}; BLAS "
                 f"{blas.get('name', '?')} {blas.get('version', '')} ({blas.get('openblas configuration', '')}); "
                 f"threadpoolctl: {m['blas'].get('threadpoolctl') if isinstance(m['blas'].get('threadpoolctl'), str) else 'see JSON'}.")
    env = {k: v for k, v in m["env"].items() if v is not None}
    lines.append(f"Environment variables: {env or 'none of ' + ', '.join(m['env'])} set.")
    load = result.get("load_average") or {}
    if load.get("start"):
        lines.append(f"Load average (1/5/15 min) at start {load['start']}, at end {load.get('end')}.")
    lines.append("")
    lines.append("GEMM rate (square C = A @ B, median of 3 after a warm-up):")
    lines.append("")
    rows = []
    for key, g in result["gemm"].items():
        for r in g["sizes"]:
            rows.append([key, r["n"], r.get("when", "start"), _ms(r["median_s"]), _f(r["gflops_per_s"], ".1f")])
    lines += _table(["backend/dtype", "n", "when", "time", "GFLOP/s"], rows)
    lines.append("")
    lines.append("The floors use the better rate of the two: " + ", ".join(
        f"{k} {g['best_gflops_per_s']:.1f} GFLOP/s" for k, g in result["gemm"].items()) + ".")
    lines.append("")

    cases = result["cases"]
    for group, title in (("core", "Signals and empirical NTK"), ("fisher", "Fisher family (structured path)")):
        for backend in result["backends"]:
            for dtype in result["settings"]["dtypes"]:
                sel = [c for c in cases if c["group"] == group and c["backend"] == backend and c["dtype"] == dtype]
                if not sel:
                    continue
                lines.append(f"**{title} — {backend} {dtype}** (ms; ×floor = time / (counted FLOPs / GEMM rate); "
                             "peak = tracemalloc peak of one call; peak/P = peak / (P × itemsize); RSS = growth of the "
                             "resident set's high-water mark over one call in a forked child, BLAS workspaces included; "
                             "RSS/P likewise)")
                lines.append("")
                rows = []
                for c in sel:
                    ok = c["status"] == "ok"
                    rows.append([
                        _label(c), c.get("width"), _ms(c.get("median_s")) if ok else "—",
                        f"{_ms(c.get('min_s'))}–{_ms(c.get('max_s'))}" if ok else "—",
                        c.get("repeats", "—") if ok else "—",
                        _f(c.get("gflops_per_s"), ".1f") if ok else "—",
                        _f(c.get("time_over_floor"), ".1f") if ok else "—",
                        _mib(c.get("peak_bytes")) if ok else "—",
                        _f(c.get("peak_over_params")) if ok else "—",
                        _mib(c.get("peak_rss_growth_bytes")) if ok else "—",
                        _f(c.get("peak_rss_growth_over_params")) if ok else "—",
                        "ok" if ok else f"{c['status']}: {c['note'][:90]}",
                    ])
                lines += _table(["case", "M", "median", "min–max", "reps", "GFLOP/s", "×floor", "peak MiB",
                                 "peak/P", "RSS MiB", "RSS/P", "status"], rows)
                lines.append("")

    other = [c for c in cases if c["group"] in ("train", "analytic", "cli")]
    if other:
        lines.append("**Training, analytic kernels, CLI**")
        lines.append("")
        rows = []
        for c in other:
            ok = c["status"] == "ok"
            rows.append([c["group"], _label(c), c.get("width") or "—", c.get("n") or "—",
                         _ms(c.get("median_s")) if ok else "—", c.get("repeats", "—") if ok else "—",
                         _mib(c.get("peak_bytes")) if ok else "—",
                         _mib(c.get("peak_rss_growth_bytes")) if ok else "—",
                         _mib(c.get("peak_rss_bytes")) if ok else "—",
                         _f(c.get("over_gemm4096")) if ok else "—",
                         "ok" if ok else f"{c['status']}: {c['note'][:90]}"])
        lines += _table(["group", "case", "M", "N", "median", "reps", "peak MiB", "RSS growth MiB", "peak RSS MiB",
                         "× GEMM 4096²", "status"], rows)
        lines.append("")

    r = result["ratios"]
    if r.get("structured_over_explicit"):
        lines.append("**Structured / explicit** (same run; the explicit path builds J, or G (P×P) and its pseudo-inverse)")
        lines.append("")
        rows = [[row["group"], row["case"] + (f" `{row['fim']}`" if row.get("fim") else ""), row["dtype"], row["width"],
                 row["n_params"], _ms(row["structured_s"]), _ms(row["explicit_s"]),
                 _f(row["time_structured_over_explicit"], ".2g"), _f(row["memory_structured_over_explicit"], ".2g"),
                 _f(row.get("max_rel_diff"), ".1e")] for row in r["structured_over_explicit"]]
        lines += _table(["group", "case", "dtype", "M", "P", "structured", "explicit", "time ratio", "memory ratio",
                         "max rel. diff"], rows)
        lines.append("")
    if r.get("float32_over_float64"):
        top = max(row["width"] or 0 for row in r["float32_over_float64"])
        lines.append(f"**float32 / float64 time** (same run; M = {top} here, every width in the JSON)")
        lines.append("")
        rows = [[row["case"] + (f" `{row['fim']}`" if row.get("fim") else "") +
                 (f" ({row['path']})" if row.get("path") and row["group"] == "core" else ""),
                 row["backend"], row["width"], _ms(row["float32_s"]), _ms(row["float64_s"]),
                 _f(row["time_float32_over_float64"])] for row in r["float32_over_float64"] if row["width"] == top]
        lines += _table(["case", "backend", "M", "float32", "float64", "ratio"], rows)
        lines.append("")
    peer = result.get("peer") or {}
    if peer.get("rows"):
        lines.append(f"**Empirical NTK vs neural-tangents** (float64, same weights; interpreter {peer.get('interpreter')}, "
                     f"versions {peer.get('versions')})")
        lines.append("")
        rows = [[row["width"], row.get("n_params"), _ms(row.get("ngdref_median_s")), _ms(row.get("peer_best_median_s")),
                 row.get("peer_best_implementation", "—"), _f(row.get("speedup"), ".1f"),
                 _f(row.get("kernel_max_rel_diff"), ".1e"), str(row.get("status"))[:60]] for row in peer["rows"]]
        lines += _table(["M", "P", "ngdref", "neural-tangents", "best NT implementation", "speed-up",
                         "kernel rel. diff", "status"], rows)
        lines.append("")
    else:
        lines.append(f"Peer comparison: {peer.get('status')}; torch: {peer.get('torch', '—')}.")
        lines.append("")
    lines.append(f"CuPy/NumPy: {r.get('cupy_over_numpy') if isinstance(r.get('cupy_over_numpy'), str) else 'see JSON'}.")
    lines.append("")
    return "\n".join(lines) + "\n"
