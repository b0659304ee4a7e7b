"""Small thread pools for independent pieces of array work on the NumPy backend.

Where the work of one call is many small, independent pieces — unit-wise's per-unit solves
(``fisher.unitwise``), K-FAC's per-layer Θ̄ terms (``fisher.kfac``), the quasi-diagonal step's
blocks of units (``fisher.diagonal``), the analytic kernels' tiles (``kernels``) — a threaded BLAS
gains little on each piece: a 64×64 LAPACK call is *slower* on two OpenBLAS threads than on one
(a stack of 2,000 SPD 64×64 solves: 0.086 s against 0.059 s), and NumPy's element-wise passes are
single-threaded. NumPy's ``linalg`` gufuncs, ``matmul`` and ufuncs release the GIL, so the pieces
run side by side on Python threads while BLAS is held at one thread (:func:`one_blas_thread`).

How many threads (:func:`workers`): as many as the BLAS pool may use at the time of the call
(threadpoolctl), at most the CPUs this process may use. So ``OPENBLAS_NUM_THREADS=1``, a sweep that
pins BLAS to one thread per cell (:func:`ngdref.experiments.sweep.pinned_threads`: ``reproduce
--jobs N`` and ``--threads``) or a caller already inside :func:`one_blas_thread` get one thread —
the serial path — and never more threads than cores. :data:`THREADS` overrides the count (tests).

Results never depend on the count: every user computes each piece by one thread from its own
inputs and assembles the pieces in a fixed order (each user's tests compare 1, 2 and 3 threads
bit for bit). Only the NumPy backend uses threads: the strict array-API backend is a conformance
check of the calls, and CuPy queues its kernels on one stream, where host threads add nothing.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from .backend import backend_of

__all__ = ["THREADS", "Pool", "blas_context", "cpu_count", "map_on_threads", "one_blas_thread", "process_wide", "workers"]

#: threads of every pool of this module; ``None``: :func:`workers`' rule (the BLAS pool's size, at most the CPUs)
THREADS: int | None = None

_LOCK = threading.Lock()
_STATE: dict = {"controller": None, "depth": 0, "limiter": None}


def _controller():
    """threadpoolctl's controller of the BLAS/LAPACK libraries NumPy and SciPy loaded (made once)."""
    if _STATE["controller"] is None:
        import numpy  # noqa: F401  threadpoolctl controls only the libraries already loaded: load
        import scipy.linalg  # noqa: F401  both BLAS builds first (NumPy's and SciPy's may differ)
        from threadpoolctl import ThreadpoolController

        _STATE["controller"] = ThreadpoolController()
    return _STATE["controller"]


def cpu_count() -> int:
    """The CPUs this process may run on (``os.sched_getaffinity``; ``os.cpu_count`` where it is missing)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def workers() -> int:
    """Threads for a pool now: :data:`THREADS` if set, else the BLAS pool's thread count (the largest over
    the loaded BLAS libraries) capped at :func:`cpu_count` — 1 inside :func:`one_blas_thread` or a sweep
    pinned to one thread per cell."""
    if THREADS is not None:
        return max(1, int(THREADS))
    counts = [int(c.num_threads or 1) for c in _controller().select(user_api="blas").lib_controllers]
    return max(1, min(max(counts, default=1), cpu_count()))


def process_wide(action):
    """Run ``action`` as the thread that controls a process-wide (pthreads) OpenBLAS pool.

    threadpoolctl lets only one "controlling" thread change a shared OpenBLAS pool and silently ignores
    the others: once another live thread (a Dask worker's, a sweep's) has set the limit, a plain
    ``limit`` from this thread reads back unchanged. Take control, act, and give control back."""
    from threadpoolctl import OpenBLASController

    OpenBLASController.clear_controlling_thread(force=True)
    try:
        return action()
    finally:
        OpenBLASController.clear_controlling_thread(force=True)


@contextlib.contextmanager
def one_blas_thread():
    """BLAS held at one thread while any caller is inside (process-wide: an OpenBLAS pool is shared by the
    whole process). Reference-counted, so nested and concurrent users compose: the first to enter sets
    the limit, the last to leave restores the limits that were there."""
    with _LOCK:
        if _STATE["depth"] == 0:
            _STATE["limiter"] = process_wide(lambda: _controller().limit(limits=1, user_api="blas"))
        _STATE["depth"] += 1
    try:
        yield
    finally:
        with _LOCK:
            _STATE["depth"] -= 1
            if _STATE["depth"] == 0:
                process_wide(_STATE["limiter"].restore_original_limits)
                _STATE["limiter"] = None


def _numpy(like) -> bool:
    """``like`` is the NumPy backend or one of its arrays (a backend object has a ``name``)."""
    name = getattr(like, "name", None)
    if not isinstance(name, str):
        name = backend_of(like).name
    return name == "numpy"


def blas_context(like):
    """:func:`one_blas_thread` on the NumPy backend, nothing elsewhere (``like``: a backend or an array)."""
    return one_blas_thread() if _numpy(like) else contextlib.nullcontext()


class Pool:
    """A pool of :func:`workers` threads, the calling thread being one of them, for the NumPy backend
    (one thread, i.e. plain serial calls, elsewhere). Use as a context; the BLAS limit is separate
    (:func:`blas_context`), so a caller can hold it around the small calls only."""

    def __init__(self, threads: int = 1, name: str = "ngdref"):
        self.threads = max(1, int(threads))
        self.name = name
        self._executor = None

    @classmethod
    def open(cls, like, name: str = "ngdref") -> "Pool":
        """A pool for ``like`` (a backend or an array): :func:`workers` threads on NumPy, one elsewhere."""
        return cls(workers() if _numpy(like) else 1, name)

    def __enter__(self):
        if self.threads > 1:
            self._executor = ThreadPoolExecutor(max_workers=self.threads - 1, thread_name_prefix=self.name)
        return self

    def __exit__(self, *exc):
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        return False

    def map(self, fn, items) -> list:
        """[fn(i) for i in items], in order, on every thread of the pool, the calling thread included: each
        thread takes the next item not yet taken until none is left, so ``threads`` items run at a time however
        many there are. Which thread computes an item does not change its result (each is computed by one
        thread from its own inputs), only the order they finish in. Each item runs in a copy of the caller's
        context (``contextvars``), so the caller's ``np.errstate`` holds in the pool's threads too (a thread of
        the executor starts with an empty context otherwise). If an item raises, no further item is started,
        the items already running are waited for, and the first exception by item order is raised (the one a serial
        loop would raise: items are taken in order and every item taken is finished). An item may map on this same
        pool: the thread that runs it computes the nested items the pool's busy threads do not take."""
        items = list(items)
        if self._executor is None or len(items) <= 1:
            return [fn(i) for i in items]
        results: list = [None] * len(items)
        errors: dict = {}
        lock = threading.Lock()
        taken = iter(range(len(items)))
        caller = contextvars.copy_context()
        stop = threading.Event()

        def drain():
            while True:
                with lock:
                    j = None if errors or stop.is_set() else next(taken, None)
                if j is None:
                    return
                try:
                    results[j] = caller.copy().run(fn, items[j])
                except BaseException as exc:  # noqa: BLE001  re-raised below, after every thread stopped
                    with lock:
                        errors[j] = exc

        helpers: list = []
        try:
            for _ in range(min(self.threads, len(items)) - 1):
                helpers.append(self._executor.submit(drain))
            drain()
        finally:
            stop.set()  # nothing left to take — or the caller was interrupted (Ctrl-C) while it waits below
            # a helper still queued has nothing left to do: cancelled, not waited for (an item that maps on this same
            # pool would otherwise wait for helpers queued behind the pool's busy threads — a deadlock)
            concurrent.futures.wait([helper for helper in helpers if not helper.cancel()])
        if errors:
            raise errors[min(errors)]
        return results

    def split(self, piece, count: int):
        """``piece(0, count)``, or its contiguous pieces ``piece(lo, hi)`` (one per thread) concatenated along
        axis 0 — for work that acts row by row, so the split does not change any row's result."""
        k = min(self.threads, count) if self._executor is not None else 1
        if k <= 1:
            return piece(0, count)
        bounds = [count * j // k for j in range(k + 1)]
        parts = self.map(lambda j: piece(bounds[j], bounds[j + 1]), range(k))
        from .backend import namespace_of

        return namespace_of(parts[0]).concat(parts, axis=0)


def map_on_threads(fn, items, like, name: str = "ngdref") -> list:
    """[fn(i) for i in items] on a :class:`Pool` for ``like``; on NumPy with BLAS at one thread throughout,
    whatever the number of threads (so one thread computes exactly what several do); serially, with no
    limit, on other backends."""
    items = list(items)
    with Pool.open(like, name) as pool, blas_context(like):
        return pool.map(fn, items)
