"""Sweeps as independent, resumable *cells* run through a ``concurrent.futures``-style executor.

A cell is a pure function of its parameters: ``func(params) -> dict`` where ``func``
is a module-level function (picklable by reference) and ``params`` and the result
are JSON-able (host Python numbers, strings and lists; no device arrays). The same
parameters give bit-identical results whichever executor runs them: every cell runs
with its BLAS/OpenMP thread pools pinned to the same count (``threads``, default 1;
:func:`pinned_threads`, through threadpoolctl), because a threaded BLAS splits sums
differently for different thread counts and the results then differ in the last bits.

Executors (:func:`make_executor`):

* in-process (default): :class:`InProcessExecutor`, runs each cell when submitted;
* ``jobs=N`` (N > 1): a local :class:`concurrent.futures.ProcessPoolExecutor` with
  ``spawn`` workers;
* ``scheduler=ADDRESS``: a Dask distributed cluster, ``Client(ADDRESS).get_executor()``
  (``pip install 'ngdref[dask]'``; the workers must be able to import ``ngdref``).

Resume (:func:`run_cells`): every finished cell is written atomically to
``cell_dir/<key>.json`` together with its parameters; on the next run a cell whose
file exists with the same parameters is loaded instead of recomputed (``fresh=True``
recomputes everything). Keys carry a hash of the parameters, so changing a setting
never silently reuses an old result; a stored cell computed with another thread count
is recomputed, so a resumed sweep never mixes cells computed two ways.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..errors import ConfigError
from ..io import dumps, write_json

__all__ = [
    "Cell",
    "CellOutcome",
    "InProcessExecutor",
    "cell_key",
    "describe_executor",
    "make_executor",
    "pinned_threads",
    "run_cells",
]

#: BLAS/OpenMP threads per cell unless the caller says otherwise (``--threads``).
DEFAULT_CELL_THREADS = 1


def _canonical(params: dict) -> dict:
    """``params`` as JSON would give them back (tuples → lists, numpy scalars → numbers)."""
    return json.loads(dumps(params))


def cell_key(prefix: str, params: dict, readable: str = "") -> str:
    """A file-system-safe key: ``prefix-readable-<10 hex of the SHA-1 of the parameters>``."""
    digest = hashlib.sha1(json.dumps(_canonical(params), sort_keys=True).encode()).hexdigest()[:10]
    stem = "-".join(p for p in (prefix, readable) if p)
    stem = re.sub(r"[^A-Za-z0-9._=+-]+", "_", stem)
    return f"{stem}-{digest}"


@dataclass(frozen=True)
class Cell:
    """One unit of a sweep: ``func(params)``; ``key`` names its result file."""

    key: str
    func: Callable[[dict], dict]
    params: dict = field(default_factory=dict)

    @classmethod
    def make(cls, prefix: str, func: Callable[[dict], dict], params: dict, readable: str = "") -> "Cell":
        params = _canonical(params)
        return cls(cell_key(prefix, params, readable), func, params)


@dataclass
class CellOutcome:
    key: str
    params: dict
    result: dict
    seconds: float
    cached: bool


class InProcessExecutor(cf.Executor):
    """A ``concurrent.futures.Executor`` that runs each call in the calling thread at ``submit``."""

    def submit(self, fn, /, *args, **kwargs):
        future: cf.Future = cf.Future()
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - delivered through the future
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            future.set_exception(exc)
        return future


_PIN_LOCK = threading.Lock()
_pin_state: dict = {"depth": 0, "threads": None, "limiter": None}


def _process_wide(action):
    """Run ``action`` as the thread that controls a process-wide (pthreads) OpenBLAS pool.

    threadpoolctl lets only one "controlling" thread change a shared OpenBLAS pool and
    silently ignores the others; the first cell of a Dask worker need not run in the
    thread that sets the limit last. Take control, act, and give control back.
    """
    from threadpoolctl import OpenBLASController

    OpenBLASController.clear_controlling_thread(force=True)
    try:
        return action()
    finally:
        OpenBLASController.clear_controlling_thread(force=True)


@contextlib.contextmanager
def pinned_threads(threads: int) -> Iterator[None]:
    """Run the block with every BLAS/OpenMP pool it uses limited to ``threads`` (threadpoolctl).

    Two kinds of pools: a pthreads OpenBLAS pool is shared by the whole process, so concurrent
    cells of one process (a Dask worker with several threads) share its limit — the first cell
    to enter sets it, the last to leave restores the previous limits, and a cell asking for a
    different count while another runs is refused rather than silently computed with the
    wrong one; OpenMP pools (OpenMP-built OpenBLAS, MKL) are per calling thread, so each cell
    also limits its own thread.
    """
    import numpy  # noqa: F401  threadpoolctl limits only the libraries already loaded: load the
    import scipy.linalg  # noqa: F401  BLAS/LAPACK the cells use first (a fresh worker has neither)
    from threadpoolctl import threadpool_limits

    threads = int(threads)
    if threads < 1:
        raise ConfigError(f"threads per cell must be >= 1, got {threads}")
    with _PIN_LOCK:
        if _pin_state["depth"] == 0:
            _pin_state["limiter"] = _process_wide(lambda: threadpool_limits(limits=threads))
            _pin_state["threads"] = threads
        elif _pin_state["threads"] != threads:
            raise ConfigError(
                f"cells with {threads} and {_pin_state['threads']} BLAS threads cannot run at once in one process"
            )
        _pin_state["depth"] += 1
    try:
        with threadpool_limits(limits=threads):  # this thread's own (OpenMP) pools
            yield
    finally:
        with _PIN_LOCK:
            _pin_state["depth"] -= 1
            if _pin_state["depth"] == 0:
                _process_wide(_pin_state["limiter"].restore_original_limits)
                _pin_state["limiter"] = _pin_state["threads"] = None


def describe_executor(jobs: int | None = None, scheduler: str | None = None) -> str:
    if scheduler:
        return f"dask ({scheduler})"
    if jobs and jobs > 1:
        return f"process pool ({jobs} workers)"
    return "in-process"


@contextlib.contextmanager
def make_executor(jobs: int | None = None, scheduler: str | None = None) -> Iterator[cf.Executor]:
    """The executor for a sweep (see the module docstring); shut down on exit."""
    if jobs is not None and jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    if scheduler:
        if jobs and jobs > 1:
            raise ConfigError("--jobs and --scheduler are exclusive (the Dask cluster sets the parallelism)")
        try:
            from dask.distributed import Client
        except ImportError:
            raise ConfigError("--scheduler needs Dask: pip install 'ngdref[dask]'") from None
        try:
            client = Client(scheduler, timeout="20s", set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ConfigError(f"cannot connect to the Dask scheduler at {scheduler}: {exc}") from None
        try:
            executor = client.get_executor(pure=False)
            yield executor
        finally:
            client.close()
        return
    if jobs and jobs > 1:
        import multiprocessing

        pool = cf.ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))
        try:
            yield pool
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        else:
            pool.shutdown(wait=True)
        return
    yield InProcessExecutor()


def _load(path: Path, params: dict, threads: int) -> CellOutcome | None:
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # unreadable or half-written by something else: recompute
    if rec.get("params") != params or "result" not in rec or rec.get("threads") != threads:
        return None
    return CellOutcome(rec.get("key", path.stem), params, rec["result"], float(rec.get("seconds", 0.0)), True)


def _timed(func, params, threads):
    with pinned_threads(threads):
        t0 = time.perf_counter()
        result = func(params)
        return result, time.perf_counter() - t0


def run_cells(
    cells: list[Cell],
    executor: cf.Executor | None = None,
    cell_dir: str | os.PathLike | None = None,
    fresh: bool = False,
    progress: Callable[[int, int, CellOutcome], None] | None = None,
    threads: int = DEFAULT_CELL_THREADS,
) -> list[CellOutcome]:
    """Run ``cells`` (skipping those already stored in ``cell_dir``) and return their outcomes in order.

    ``progress(done, total, outcome)`` is called after every finished (or loaded) cell.
    Each computed cell is written atomically as soon as it finishes, so an interrupted
    sweep resumes where it stopped. A cell that raises stops the sweep (after the cells
    already finished were written) and the exception propagates. Every cell runs with
    ``threads`` BLAS/OpenMP threads (:func:`pinned_threads`), in every executor.
    """
    if isinstance(threads, bool) or int(threads) != threads or threads < 1:
        raise ConfigError(f"threads per cell must be a positive integer, got {threads!r}")
    threads = int(threads)
    keys = [c.key for c in cells]
    if len(set(keys)) != len(keys):
        raise ConfigError("duplicate cell keys in a sweep")
    executor = executor if executor is not None else InProcessExecutor()
    folder = Path(cell_dir) if cell_dir is not None else None
    outcomes: dict[str, CellOutcome] = {}
    total, done = len(cells), 0
    todo: list[Cell] = []
    for cell in cells:
        hit = None if (fresh or folder is None) else _load(folder / f"{cell.key}.json", cell.params, threads)
        if hit is None:
            todo.append(cell)
            continue
        outcomes[cell.key] = hit
        done += 1
        if progress is not None:
            progress(done, total, hit)

    def finish(cell: Cell, future: cf.Future) -> None:
        nonlocal done
        result, seconds = future.result()
        outcome = CellOutcome(cell.key, cell.params, result, seconds, False)
        if folder is not None:
            write_json(folder / f"{cell.key}.json",
                       {"key": cell.key, "function": f"{cell.func.__module__}.{cell.func.__qualname__}",
                        "params": cell.params, "threads": threads, "seconds": seconds, "result": result})
        outcomes[cell.key] = outcome
        done += 1
        if progress is not None:
            progress(done, total, outcome)

    if isinstance(executor, InProcessExecutor):
        for cell in todo:  # in order, each finished cell written before the next starts
            finish(cell, executor.submit(_timed, cell.func, cell.params, threads))
    else:
        futures = {executor.submit(_timed, cell.func, cell.params, threads): cell for cell in todo}
        try:
            for future in cf.as_completed(futures):
                finish(futures[future], future)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return [outcomes[k] for k in keys]
