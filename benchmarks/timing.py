"""Wall time and peak memory of one call.

Protocol of :func:`measure`:

1. one warm-up call, run under the memory probe: for NumPy the **tracemalloc
   peak** of that call (NumPy reports its data buffers to tracemalloc; arrays that
   were alive before the call — parameters, inputs, signals passed in — are not
   counted, the call's own result is); for CuPy the growth of the default memory
   pool (emptied before the call; an upper bound of the device peak);
2. a call shorter than :data:`SETTLE_S` gets more untimed warm-up calls, until they add up to
   :data:`SETTLE_S` (at most :data:`SETTLE_CALLS`): the previous case's forked child (step 5)
   leaves the parent's threaded BLAS slow for about ten calls (a unit-wise Θ̄ at ρ = 0, three
   100 × 100 × 4097 ``a aᵀ`` products and three ``eigvalsh`` per call: 9–16 ms for the ten calls
   after a fork, 5–6 ms after them; M = 4096, the 2-core machine), which a millisecond case's
   five repeats would measure instead of the call;
3. ``repeats`` timed calls (``time.perf_counter``, device synchronised after each
   call on CuPy), tracemalloc off, a ``gc.collect()`` before the series;
4. the median is the reported time; all samples are kept;
5. (NumPy) one more call in a forked child process, whose resident-set high-water mark
   (``getrusage`` ``ru_maxrss``, which starts at the resident set of the fork) gives
   ``peak_rss_bytes`` (the whole process at its peak during the call) and
   ``peak_rss_growth_bytes`` (that peak minus the resident set when the call started). Unlike
   tracemalloc it counts every page the call touches — BLAS/LAPACK workspaces, allocator
   slack, copies NumPy does not report — so it is the figure memory targets are judged on.

If the warm-up shows that the repeats would exceed ``budget_s``, fewer repeats are
run: ``min_repeats`` as long as they fit in three budgets, otherwise one (a case
whose single call takes longer than that is timed once); the number actually run
is recorded with every case.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import time
import tracemalloc
from dataclasses import dataclass, field
from typing import Callable

MEMORY_NUMPY = "tracemalloc peak (NumPy allocations) of the warm-up call; arrays alive before the call not counted"
MEMORY_RSS = ("getrusage ru_maxrss of one call in a forked child: peak_rss_bytes = the process's resident set at "
              "its peak, peak_rss_growth_bytes = that minus the resident set at the start of the call")
MEMORY_CUPY = "CuPy default memory pool growth over the warm-up call (pool emptied before; upper bound of the device peak)"


@dataclass
class Measurement:
    times_s: list = field(default_factory=list)
    warmup_s: float = 0.0
    peak_bytes: int | None = None
    memory_probe: str = ""
    peak_rss_bytes: int | None = None
    peak_rss_growth_bytes: int | None = None

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def min_s(self) -> float:
        return min(self.times_s)

    @property
    def max_s(self) -> float:
        return max(self.times_s)

    def to_dict(self) -> dict:
        return {
            "repeats": len(self.times_s),
            "times_s": self.times_s,
            "median_s": self.median_s,
            "min_s": self.min_s,
            "max_s": self.max_s,
            "warmup_s": self.warmup_s,
            "peak_bytes": self.peak_bytes,
            "memory_probe": self.memory_probe,
            "peak_rss_bytes": self.peak_rss_bytes,
            "peak_rss_growth_bytes": self.peak_rss_growth_bytes,
            **({"rss_probe": MEMORY_RSS} if self.peak_rss_bytes is not None else {}),
        }


def synchronizer(backend_name: str) -> Callable[[], None]:
    if backend_name == "cupy":
        import cupy  # type: ignore[import-not-found]

        return cupy.cuda.Device().synchronize
    return lambda: None


def _probe_numpy(fn) -> tuple[float, int]:
    gc.collect()
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    t0 = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    del result
    if not was_tracing:
        tracemalloc.stop()
    return elapsed, max(0, peak - base)


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def run_in_child(fn, *args) -> dict:
    """``fn(*args)`` (a JSON-able dict) in a forked child process, its record sent back through a pipe:
    a fresh process per call (its ``getrusage`` high-water mark starts at the fork's resident set).
    An exception in the child is an error record ``{"status": "error", "note": …}``, as is a child that
    died without a record (killed: out of memory?). The child leaves by ``os._exit`` (no parent's exit
    handlers run twice)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one call, report, leave
        status = 1
        try:
            os.close(read_end)
            try:
                rec = fn(*args)
            except Exception as exc:  # recorded, the parent goes on
                rec = {"status": "error", "note": f"{type(exc).__name__}: {exc}"[:400]}
            os.write(write_end, json.dumps(rec).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    chunks = []
    while True:
        chunk = os.read(read_end, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_end)
    _, code = os.waitpid(pid, 0)
    if not chunks:
        return {"status": "error", "note": f"child died (wait status {code}; out of memory?)"}
    return json.loads(b"".join(chunks))


def _rss_of_call(fn) -> dict:
    import resource

    start = _resident_bytes()
    fn()
    return {"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "start": start}  # KiB on Linux


def probe_rss(fn) -> tuple[int, int] | None:
    """(peak resident bytes, growth over the start) of one call of ``fn`` in a forked child process
    (:func:`run_in_child`), from its ``getrusage`` high-water mark (a fresh process per call: the mark
    starts at the resident set of the fork, not at the parent's own past peak). ``None`` without
    ``fork``/``/proc`` (or if the call failed in the child)."""
    if not hasattr(os, "fork") or _resident_bytes() is None:
        return None
    gc.collect()
    rec = run_in_child(_rss_of_call, fn)
    if "peak" not in rec:
        return None
    return rec["peak"], max(0, rec["peak"] - rec["start"])


def _probe_cupy(fn, sync) -> tuple[float, int]:
    import cupy  # type: ignore[import-not-found]

    pool = cupy.get_default_memory_pool()
    sync()
    gc.collect()
    pool.free_all_blocks()
    before = pool.total_bytes()
    t0 = time.perf_counter()
    result = fn()
    sync()
    elapsed = time.perf_counter() - t0
    peak = pool.total_bytes() - before
    del result
    return elapsed, max(0, int(peak))


#: untimed warm-up, in seconds, for a call shorter than this (protocol step 2)
SETTLE_S = 0.3
#: at most this many extra warm-up calls
SETTLE_CALLS = 30


def measure(
    fn: Callable[[], object],
    repeats: int = 5,
    backend_name: str = "numpy",
    budget_s: float | None = None,
    min_repeats: int = 1,
    memory: bool = True,
    rss: bool = True,
) -> Measurement:
    """Warm-up (with the memory probe; a short call gets untimed calls up to :data:`SETTLE_S` more), then
    ``repeats`` timed calls, then (NumPy, ``memory`` and ``rss``) the peak-RSS call in a forked child; see the
    module docstring."""
    sync = synchronizer(backend_name)
    m = Measurement()
    if memory and backend_name == "cupy":
        m.warmup_s, m.peak_bytes = _probe_cupy(fn, sync)
        m.memory_probe = MEMORY_CUPY
    elif memory:
        m.warmup_s, m.peak_bytes = _probe_numpy(fn)
        m.memory_probe = MEMORY_NUMPY
    else:
        t0 = time.perf_counter()
        fn()
        sync()
        m.warmup_s = time.perf_counter() - t0
        m.memory_probe = "not measured"
    settle_t0, calls = time.perf_counter(), 0
    while m.warmup_s < SETTLE_S and calls < SETTLE_CALLS and time.perf_counter() - settle_t0 < SETTLE_S:
        fn()
        sync()
        calls += 1
    n = max(1, int(repeats))
    if budget_s is not None and m.warmup_s > 0:
        fit = int(budget_s / m.warmup_s)
        if fit < min_repeats:
            # slow case: ``min_repeats`` if that stays within 3 budgets, else a single timed call
            fit = min_repeats if m.warmup_s * min_repeats <= 3 * budget_s else 1
        n = max(1, min(n, fit))
    gc.collect()
    for _ in range(n):
        t0 = time.perf_counter()
        result = fn()
        sync()
        m.times_s.append(time.perf_counter() - t0)
        del result
    if memory and rss and backend_name != "cupy":  # CuPy's device context does not survive a fork
        probed = probe_rss(fn)
        if probed is not None:
            m.peak_rss_bytes, m.peak_rss_growth_bytes = probed
    return m
