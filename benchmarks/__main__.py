"""``python -m benchmarks run --suite cpu --out bench.json`` and ``python -m benchmarks parity``."""

from __future__ import annotations

import argparse
import json
import sys

from . import __doc__ as PACKAGE_DOC
from .io import dumps, write_atomic
from .suite import SUITES, suite_config


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def _strs(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=PACKAGE_DOC,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a benchmark suite, print tables, write JSON")
    run.add_argument("--suite", choices=sorted(SUITES), default="cpu")
    run.add_argument("--out", default=None, help="JSON output path (written atomically)")
    run.add_argument("--widths", type=_ints, default=None, help="comma-separated hidden widths M")
    run.add_argument("--repeats", type=int, default=None, help="timed calls per case (after one warm-up)")
    run.add_argument("--dtypes", type=_strs, default=None, help="e.g. float64,float32")
    run.add_argument("--backends", type=_strs, default=None, help="numpy,cupy or auto")
    run.add_argument("--fims", type=_strs, default=None, help="approximations (default: the whole registry but 'layer')")
    run.add_argument("--n", type=int, default=None, help="training samples N")
    run.add_argument("--damping", type=float, default=None, help="ρ for every approximation (default 0)")
    run.add_argument("--case-budget", type=float, default=None, dest="case_budget_s",
                     help="seconds of repeats per case before the repeats are cut (never below --min-repeats)")
    run.add_argument("--min-repeats", type=int, default=None)
    run.add_argument("--peer", choices=["auto", "off"], default=None, help="neural-tangents comparison")
    run.add_argument("--peer-python", default=None, help="interpreter that has jax + neural_tangents")
    run.add_argument("--peer-widths", type=_ints, default=None)
    run.add_argument("--no-tiny", action="store_true", help="skip the explicit-oracle (tiny network) group")
    run.add_argument("--no-analytic", action="store_true", help="skip the analytic-kernel cases")
    run.add_argument("--no-train", action="store_true", help="skip the ngdref.train case")
    run.add_argument("--no-cli", action="store_true", help="skip timing `ngdref train --fim unit`")
    run.add_argument("--quiet", action="store_true", help="no per-case progress lines")

    par = sub.add_parser("parity", help="NumPy-vs-device parity on the same seeds (float64)")
    par.add_argument("--other", default="cupy", help="backend compared with NumPy (cupy; strict for a CPU dry run)")
    par.add_argument("--seeds", type=_ints, default=(0, 1))
    par.add_argument("--width", type=int, default=512)
    par.add_argument("--n", type=int, default=50)
    par.add_argument("--tol", type=float, default=1e-10)
    par.add_argument("--out", default=None)

    md = sub.add_parser("markdown", help="markdown tables of a result JSON (for RESULTS.md)")
    md.add_argument("json", help="a JSON written by `run --out`")

    args = parser.parse_args(argv)
    if args.command == "markdown":
        from .markdown import to_markdown

        with open(args.json, encoding="utf-8") as fh:
            sys.stdout.write(to_markdown(json.load(fh)))
        return 0
    if args.command == "parity":
        from .parity import parity

        res = parity(args.other, args.seeds, args.width, args.n, tol=args.tol)
        if args.out:
            write_atomic(args.out, dumps(res))
        print(f"parity numpy vs {args.other}: {'OK' if res['ok'] else 'FAILED'} "
              f"({sum(r['ok'] for r in res['rows'])}/{len(res['rows'])} within {args.tol:g})")
        return 0 if res["ok"] else 1

    overrides = {k: getattr(args, k) for k in ("widths", "repeats", "dtypes", "backends", "fims", "n", "damping",
                                                "case_budget_s", "min_repeats", "peer", "peer_python", "peer_widths")}
    cfg = suite_config(args.suite, **overrides)
    if args.no_tiny:
        cfg.tiny = None
    if args.no_analytic:
        cfg.analytic_n = ()
    if args.no_train:
        cfg.train_case = False
    if args.no_cli:
        cfg.cli_train = False

    from rich.console import Console

    from .report import print_report
    from .suite import run_suite

    err = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=250)
    log = (lambda msg: None) if args.quiet else (lambda msg: err.print(msg, style="dim", markup=False, highlight=False))
    result = run_suite(cfg, log=log)
    result["command"] = "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv)
    out = Console() if sys.stdout.isatty() else Console(width=200)
    print_report(result, out)
    if args.out:
        write_atomic(args.out, dumps(result))
        out.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
