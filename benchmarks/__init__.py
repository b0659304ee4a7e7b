"""Benchmarks of ngdref: time, memory and FLOP rate of the structured paths against the machine's GEMM rate.

    python -m benchmarks run --suite cpu --out bench.json     # the suite of benchmarks/RESULTS.md
    python -m benchmarks run --suite quick                    # a short smoke run (about 10 s)
    python -m benchmarks run --suite gpu --out bench-gpu.json # CuPy and NumPy, M up to 16384
    python -m benchmarks parity --other cupy                  # NumPy-vs-CuPy parity (float64)

Modules: :mod:`~benchmarks.suite` (cases, ratios, targets), :mod:`~benchmarks.flops`
(the FLOP model), :mod:`~benchmarks.timing` (median-after-warm-up, tracemalloc peak),
:mod:`~benchmarks.machine` (CPU, BLAS, environment), :mod:`~benchmarks.peer`
(neural-tangents, optional), :mod:`~benchmarks.report` (rich tables),
:mod:`~benchmarks.parity` (used by ``benchmarks/gpu_check.sh``).
"""

from .suite import SCHEMA, SUITES, SuiteConfig, run_suite, suite_config

__all__ = ["SCHEMA", "SUITES", "SuiteConfig", "run_suite", "suite_config"]
