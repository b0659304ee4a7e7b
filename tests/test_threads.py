"""ngdref.threads: the pools of the per-unit solves, K-FAC's layer terms, the quasi-diagonal blocks and
the analytic kernels' tiles — thread counts, order, splitting and the process-wide BLAS limit."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import scipy.linalg  # noqa: F401  loaded before any limit, as the sweep's pinned_threads does
from threadpoolctl import threadpool_info, threadpool_limits

from ngdref import get_backend, threads


def _blas_threads() -> set:
    return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


def _in_step(parties: int):
    """A wait that returns only once ``parties`` threads are in it at once (a cyclic barrier): pieces that call it
    prove that the pool runs ``parties`` of them side by side. The timeout is a failure path only (a pool that runs
    fewer at a time never fills the barrier), never reached by a passing run, whatever the load."""
    barrier = threading.Barrier(parties, timeout=120)
    return barrier.wait


@pytest.mark.parametrize("name,count", [("numpy", 3), ("strict", 1)])
def test_pool_threads_only_on_numpy(name, count, monkeypatch):
    monkeypatch.setattr(threads, "THREADS", 3)
    pool = threads.Pool.open(get_backend(name))
    assert pool.threads == count
    with pool:
        got = pool.split(lambda lo, hi: np.arange(lo, hi), 10)
    assert np.array_equal(got, np.arange(10))


def test_pool_splits_into_contiguous_pieces_and_maps_in_order(monkeypatch):
    monkeypatch.setattr(threads, "THREADS", 4)
    calls, names = [], set()
    with threads.Pool.open(np.zeros(1), "ngdref-test") as pool:
        got = pool.split(lambda lo, hi: calls.append((lo, hi)) or np.arange(lo, hi), 10)
        small = pool.split(lambda lo, hi: np.arange(lo, hi), 2)  # fewer rows than threads: one per row
        wait = _in_step(4)
        mapped = pool.map(lambda i: (wait(), names.add(threading.current_thread().name), i * i)[2], range(12))
    assert sorted(calls) == [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert np.array_equal(got, np.arange(10)) and np.array_equal(small, np.arange(2))
    assert mapped == [i * i for i in range(12)]
    assert len(names) == 4 and sum(n.startswith("ngdref-test") for n in names) == 3  # the caller and 3 of the pool's


def test_pool_map_keeps_every_thread_busy_until_the_items_run_out(monkeypatch):
    """More items than threads: every thread, the caller's included, takes items until none is left — not the
    caller the first item and one pool thread all the others (the quasi-diagonal step's 78 blocks and the
    unit-wise pieces ran one at a time that way). Each round of the barrier needs both threads in it."""
    monkeypatch.setattr(threads, "THREADS", 2)
    wait, who = _in_step(2), []
    with threads.Pool.open(np.zeros(1), "ngdref-busy") as pool:
        out = pool.map(lambda i: (wait(), who.append(threading.current_thread().name), i)[2], range(8))
    assert out == list(range(8))
    assert who.count(threading.current_thread().name) == 4  # each thread computed one item of each round


def test_pool_map_raises_the_first_failing_item_and_starts_no_more(monkeypatch):
    """Item 5 fails first (item 3 waits for it, so the other thread takes 4 and 5), then item 3: the error raised is
    item 3's, the one a serial loop raises, not the first to happen; no item after 5 is started. The wait's timeout
    is a failure path only (a pool that runs item 5 only after item 3 never sets the event)."""
    monkeypatch.setattr(threads, "THREADS", 2)
    started, later_failed = [], threading.Event()

    def fn(i):
        started.append(i)
        if i == 3:
            if not later_failed.wait(120):
                raise TimeoutError("item 5 did not run while item 3 was running")
            raise ValueError("item 3")
        if i == 5:
            later_failed.set()
            raise ValueError("item 5")
        return i

    with threads.Pool.open(np.zeros(1)) as pool, pytest.raises(ValueError, match="item 3"):
        pool.map(fn, range(40))
    assert sorted(started) == list(range(6))  # items are taken in order; none is started after a failure


_NESTED = """
import threading
import numpy as np
from ngdref import threads
threads.THREADS = 2
wait = threading.Barrier(2, timeout=120).wait
with threads.Pool.open(np.zeros(1), "ngdref-nest") as pool:
    print(pool.map(lambda i: (wait(), sum(pool.map(lambda j: 10 * i + j, range(3))))[1], range(4)))
"""


def test_an_item_may_map_on_its_own_pool():
    """Items that map on their own pool while every pool thread is busy with an item (the barrier): the nested maps'
    helpers stay queued, so each thread computes its nested items itself and must not wait for those helpers (it
    did: a deadlock). In a child process, so that a deadlock fails the test instead of hanging the interpreter's
    exit (it joins the pool's threads); the timeout is a failure path only."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _NESTED], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "[3, 33, 63, 93]"


def test_workers_follow_the_blas_limit_and_the_override(monkeypatch):
    monkeypatch.setattr(threads, "THREADS", None)
    with threadpool_limits(limits=1, user_api="blas"):
        assert threads.workers() == 1  # OPENBLAS_NUM_THREADS=1, --threads 1, a pinned sweep cell: serial
    assert 1 <= threads.workers() <= threads.cpu_count()
    monkeypatch.setattr(threads, "THREADS", 5)
    assert threads.workers() == 5


def test_one_blas_thread_nests_and_restores(monkeypatch):
    before = _blas_threads()
    with threads.one_blas_thread():
        assert _blas_threads() == {1}
        with threads.one_blas_thread():  # nested (a pool's piece inside another user's limit)
            assert _blas_threads() == {1}
        assert _blas_threads() == {1}  # the inner exit did not restore early
        assert threads.workers() == 1 or threads.THREADS is not None
    assert _blas_threads() == before


def test_map_on_threads_holds_blas_at_one_thread_and_is_serial_elsewhere(monkeypatch):
    monkeypatch.setattr(threads, "THREADS", 2)
    wait = _in_step(2)
    seen = threads.map_on_threads(lambda i: (wait(), _blas_threads(), threading.current_thread().name)[1:], range(4),
                                  np.zeros(1), "ngdref-map")
    assert all(b == {1} for b, _ in seen)
    assert any(n.startswith("ngdref-map") for _, n in seen)  # two threads: the pool's worked too
    strict = threads.map_on_threads(lambda i: threading.current_thread().name, range(4), get_backend("strict"))
    assert set(strict) == {threading.current_thread().name}


#: the process-wide (pthreads) BLAS pools the two tests below are about; OpenMP-built BLAS pools are per thread
PTHREADS_BLAS = pytest.mark.skipif(
    not all(i.get("threading_layer") == "pthreads" for i in threadpool_info() if i["user_api"] == "blas"),
    reason="needs a pthreads BLAS pool (process-wide)")


@PTHREADS_BLAS
def test_one_blas_thread_holds_even_after_another_thread_set_the_pool():
    """A pthreads OpenBLAS pool is controlled by one thread at a time (threadpoolctl ignores the others): after
    another live thread (a Dask worker's, say) set the limit, ``one_blas_thread`` still reads 1 inside and
    restores the previous count after (it takes control, as the sweep's ``pinned_threads`` does)."""
    from threadpoolctl import OpenBLASController

    before = _blas_threads()
    ready, done = threading.Event(), threading.Event()
    OpenBLASController.clear_controlling_thread(force=True)  # whatever ran before: the other thread takes control

    def other():
        limiter = threadpool_limits(limits=2, user_api="blas")
        ready.set()
        done.wait()
        threads.process_wide(limiter.restore_original_limits)

    worker = threading.Thread(target=other)
    worker.start()
    ready.wait()
    try:
        with threads.one_blas_thread():
            inside = _blas_threads()
        after = _blas_threads()
    finally:
        done.set()
        worker.join()
    assert inside == {1}
    assert after == {2}
    assert _blas_threads() == before


@PTHREADS_BLAS
def test_a_pinned_cell_keeps_its_count_after_another_cell_left():
    """Two cells pinned to 2 BLAS threads in one process (a Dask worker's threads): cell B starts while cell A is
    inside ``one_blas_thread`` and leaves before A does. B's own limit must not touch the shared pool — it
    would record A's temporary 1 as its "original" and restore 1 on leaving — so A's cell runs on 2 again."""
    from ngdref.experiments.sweep import pinned_threads

    a_in, b_in, a_out, b_done = (threading.Event() for _ in range(4))
    seen = {}

    def cell_a():
        with pinned_threads(2):
            with threads.one_blas_thread():
                a_in.set()
                b_in.wait()
            a_out.set()
            b_done.wait()
            seen["A after B left"] = _blas_threads()

    def cell_b():
        a_in.wait()
        with pinned_threads(2):
            b_in.set()
            a_out.wait()
        b_done.set()

    workers = [threading.Thread(target=cell_a), threading.Thread(target=cell_b)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert seen["A after B left"] == {2}


def test_pool_pieces_run_under_the_callers_errstate(monkeypatch):
    """The caller's ``np.errstate`` holds in the pool's threads (NumPy keeps it in a context variable, and an
    executor's thread starts with an empty context): an overflow in a piece on another thread raises under
    ``over="raise"`` and is silent under ``all="ignore"`` (a train run that its caller silenced warned)."""
    monkeypatch.setattr(threads, "THREADS", 2)
    big = np.full(4, 1e300)

    wait = _in_step(2)  # both threads compute pieces

    def piece(i):
        wait()
        return threading.current_thread().name, float(np.sum(big * big))

    with np.errstate(over="raise"), pytest.raises(FloatingPointError):
        threads.map_on_threads(piece, range(4), get_backend("numpy"))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="ignore"):
            out = threads.map_on_threads(piece, range(4), get_backend("numpy"))
    assert {name for name, _ in out} != {threading.current_thread().name}  # some pieces ran on the pool
    assert all(value == float("inf") for _, value in out)
