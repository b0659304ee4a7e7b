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
  ``spawn`` workers, each of which exits as soon as the process that started it dies
  (:func:`_exit_with_parent`: a parent killed by SIGKILL cannot shut its pool down);
* ``scheduler=ADDRESS``: a Dask distributed cluster, ``Client(ADDRESS).get_executor()``
  (``pip install 'ngdref[dask]'``; the workers must be able to import ``ngdref``). The
  address is checked before anything connects, and the whole connection, handshake
  included, is bounded by :data:`SCHEDULER_TIMEOUT_S` (:func:`connect_scheduler`).

Resume (:func:`run_cells`): every finished cell is written atomically to
``cell_dir/<key>.json`` together with its parameters; on the next run a cell whose
file exists with the same parameters is loaded instead of recomputed (``fresh=True``
recomputes everything). Keys carry a hash of the parameters, so changing a setting
never silently reuses an old result; a stored cell computed with another thread count
is recomputed, so a resumed sweep never mixes cells computed two ways. A stored file
is validated before it is trusted (:func:`stored_problem`: a JSON object with the
cell's parameters and a result of the shape the cell function returns, checked by the
function's ``check_result`` when it has one); a malformed one is recomputed and said
so through ``notice``. Results go through JSON on both paths (NaN and ±inf become
None), so a resumed sweep analyses exactly what a fresh one does.

A cell that raises stops the sweep with a :class:`CellError` naming the cell and
carrying the original exception and its full traceback (a process pool's remote one
included).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import json
import math
import os
import re
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..errors import ConfigError, NgdrefError, one_line
from ..io import dumps, write_json
from ..threads import process_wide

__all__ = [
    "Cell",
    "CellError",
    "CellOutcome",
    "InProcessExecutor",
    "cell_key",
    "check_scheduler_address",
    "connect_scheduler",
    "describe_executor",
    "make_executor",
    "pinned_threads",
    "run_cells",
    "stored_problem",
]

#: BLAS/OpenMP threads per cell unless the caller says otherwise (``--threads``).
DEFAULT_CELL_THREADS = 1

#: The longest a connection to a Dask scheduler may take, handshake included, before it is refused.
SCHEDULER_TIMEOUT_S = 20.0


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


class CellError(Exception):
    """Cell ``key`` raised ``error``; ``traceback_text`` is its full traceback (a worker's included).

    ``user_caused``: the error is one a user can cause and fix (an :class:`~ngdref.errors.NgdrefError`:
    a refused configuration, bad data; or memory), as opposed to a bug or a crashed worker.
    """

    def __init__(self, key: str, error: BaseException, traceback_text: str):
        self.key, self.error, self.traceback_text = key, error, traceback_text
        self.user_caused = isinstance(error, (NgdrefError, MemoryError))
        what = str(error) if isinstance(error, NgdrefError) else f"{type(error).__name__}: {error}"
        if isinstance(error, MemoryError):
            what = "out of memory (reduce the width or the number of samples, or use float32)"
        super().__init__(f"cell {key} failed: {one_line(what)}")


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


def _per_thread_pools():
    """threadpoolctl's controller of the loaded pools that are per calling thread — all but pthreads
    ones (OpenBLAS, BLIS), whose one process-wide pool only the reference-counted outer limit of
    :func:`pinned_threads` and :func:`ngdref.threads.one_blas_thread` may set: a cell's own limit on it
    would record another cell's temporary single thread as its "original" and restore it on leaving."""
    from threadpoolctl import ThreadpoolController

    controller = ThreadpoolController()
    keep = [lib.filepath for lib in controller.lib_controllers if getattr(lib, "threading_layer", None) != "pthreads"]
    return controller.select(filepath=keep)


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
            _pin_state["limiter"] = process_wide(lambda: threadpool_limits(limits=threads))
            _pin_state["threads"] = threads
        elif _pin_state["threads"] != threads:
            raise ConfigError(
                f"cells with {threads} and {_pin_state['threads']} BLAS threads cannot run at once in one process"
            )
        _pin_state["depth"] += 1
    try:
        with _per_thread_pools().limit(limits=threads):  # this thread's own (OpenMP) pools
            yield
    finally:
        with _PIN_LOCK:
            _pin_state["depth"] -= 1
            if _pin_state["depth"] == 0:
                process_wide(_pin_state["limiter"].restore_original_limits)
                _pin_state["limiter"] = _pin_state["threads"] = None


def describe_executor(jobs: int | None = None, scheduler: str | None = None) -> str:
    if scheduler:
        return f"dask ({scheduler})"
    if jobs and jobs > 1:
        return f"process pool ({jobs} workers)"
    return "in-process"


def check_scheduler_address(address) -> str:
    """``address`` if it is a Dask scheduler address (``[tcp://]HOST:PORT``, ``tls://…``, ``inproc://…``, …).

    Checked with Dask's own parsers before any client is made: a client made from a malformed
    address raises at once but then stalls the interpreter's exit while it closes. An
    ``inproc://`` address must name a scheduler running in this very process.
    """
    hint = "expected tcp://HOST:PORT (a Dask scheduler listens on port 8786 by default)"
    if not isinstance(address, str) or not address.strip():
        raise ConfigError(f"--scheduler needs an address: {hint}")
    try:
        import dask.distributed  # noqa: F401
        from distributed.comm.addressing import parse_address, parse_host_port
        from distributed.comm.registry import get_backend
    except ImportError:
        raise ConfigError("--scheduler needs Dask: pip install 'ngdref[dask]'") from None
    try:
        scheme, location = parse_address(address, strict=False)
        get_backend(scheme)
        if scheme in ("tcp", "tls", "ws", "wss"):
            host, port = parse_host_port(location)
            if not host or any(c.isspace() for c in host) or not 0 < int(port) < 65536:
                raise ValueError(f"no host or no port in 1..65535 in {location!r}")
        if scheme == "inproc":  # reachable only from the process that runs the scheduler
            from distributed.comm.inproc import global_manager

            if global_manager.get_listener_for(location) is None:
                raise ValueError("no scheduler listens there in this process")
    except (ValueError, TypeError, ImportError) as exc:
        raise ConfigError(f"--scheduler {address!r} is not a Dask scheduler address ({one_line(exc, 120)}); "
                          f"{hint}") from None
    return address


def _open_client(address: str, scheme: str, budget: float):
    """A Dask client of ``address`` (runs in a helper thread; see :func:`connect_scheduler`)."""
    import asyncio
    import socket

    from dask.distributed import Client
    from distributed.comm import connect
    from distributed.comm.addressing import parse_address, parse_host_port

    if scheme in ("tcp", "tls"):
        host, port = parse_host_port(parse_address(address, strict=False)[1])
        try:  # a plain TCP connection first: "nothing listens" is then said at once
            socket.create_connection((host, port), timeout=budget / 4).close()
        except OSError as exc:
            raise ConfigError(f"cannot connect to the Dask scheduler at {address}: "
                              f"{one_line(exc.strerror or exc, 120)}") from None

        async def handshake():
            comm = await connect(address, timeout=budget / 3)
            await comm.close()

        try:  # Dask's handshake, bounded (Dask itself waits for the peer's first message forever)
            asyncio.run(asyncio.wait_for(handshake(), budget / 3))
        except (asyncio.TimeoutError, TimeoutError):
            raise ConfigError(f"{address} accepted the connection but did not answer as a Dask scheduler within "
                              f"{budget / 3:.0f} s (a dashboard or another service? a scheduler listens on port "
                              "8786 by default)") from None
        except OSError as exc:
            raise ConfigError(f"cannot connect to the Dask scheduler at {address}: {one_line(exc, 160)}") from None
    try:
        return Client(address, timeout=f"{budget / 3:.0f}s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ConfigError(f"cannot connect to the Dask scheduler at {address}: {one_line(exc, 160)}") from None


def connect_scheduler(address: str, timeout: float = SCHEDULER_TIMEOUT_S):
    """A ``dask.distributed.Client`` of the scheduler at ``address``, or ConfigError within ``timeout`` seconds.

    The address is checked first (:func:`check_scheduler_address`); then a plain TCP connection,
    Dask's handshake and the client each get a share of ``timeout``, and the whole runs in a helper
    thread that is abandoned when the time is up, so that no peer (one that accepts and never
    answers, a name that never resolves) can hold the caller longer. A client the abandoned
    thread makes after all is closed there.
    """
    address = check_scheduler_address(address)
    from distributed.comm.addressing import parse_address

    scheme = parse_address(address, strict=False)[0]
    box: dict = {}
    lock = threading.Lock()
    done = threading.Event()

    def attempt():
        try:
            client = _open_client(address, scheme, 0.95 * timeout)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc
        else:
            with lock:
                if box.get("abandoned"):
                    with contextlib.suppress(Exception):
                        client.close()
                else:
                    box["client"] = client
        finally:
            done.set()

    threading.Thread(target=attempt, name="ngdref-dask-connect", daemon=True).start()
    done.wait(timeout)
    with lock:
        if "client" in box:
            return box["client"]
        if "error" in box:
            err = box["error"]
            if isinstance(err, ConfigError):
                raise err
            raise ConfigError(f"cannot connect to the Dask scheduler at {address}: "
                              f"{one_line(f'{type(err).__name__}: {err}', 160)}") from None
        box["abandoned"] = True
    raise ConfigError(f"no Dask scheduler answered at {address} within {timeout:.0f} s")


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _exit_with_parent(parent_pid: int, pdeathsig: bool) -> None:
    """Process-pool initializer: this worker exits as soon as the process that started it dies.

    A parent killed by SIGKILL (an out-of-memory killer, a CI timeout) cannot shut its pool
    down, and its idle workers would wait for work forever, holding the parent's terminal
    open. Two guards: on Linux the kernel sends SIGKILL when the parent dies
    (``PR_SET_PDEATHSIG``, set only when the pool is fed from the parent's main thread,
    because the kernel watches the thread that started the worker); everywhere, a daemon
    thread waits on :func:`multiprocessing.parent_process` (the end of the spawn pipe the
    parent keeps open while it lives) and ends the process when it closes.
    """
    import multiprocessing

    if pdeathsig and sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent_pid:  # died before the guards were in place
        os._exit(1)
    parent = multiprocessing.parent_process()

    def watch():
        if parent is not None:
            parent.join()
        else:  # pragma: no cover - not a multiprocessing child
            while os.getppid() == parent_pid:
                time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="ngdref-parent-watch", daemon=True).start()


@contextlib.contextmanager
def make_executor(jobs: int | None = None, scheduler: str | None = None) -> Iterator[cf.Executor]:
    """The executor for a sweep (see the module docstring); shut down on exit."""
    if jobs is not None and jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    if scheduler is not None:
        if jobs and jobs > 1:
            raise ConfigError("--jobs and --scheduler are exclusive (the Dask cluster sets the parallelism)")
        client = connect_scheduler(scheduler)
        try:
            executor = client.get_executor(pure=False)
            yield executor
        finally:
            client.close()
        return
    if jobs and jobs > 1:
        import multiprocessing

        main = threading.current_thread() is threading.main_thread()
        pool = cf.ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                      initializer=_exit_with_parent, initargs=(os.getpid(), main))
        try:
            yield pool
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        else:
            pool.shutdown(wait=True)
        return
    yield InProcessExecutor()


def _is_number(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def stored_problem(rec, cell: Cell) -> str | None:
    """Why ``rec`` (a parsed cell file) is not a stored result of ``cell``, or None when it is.

    A cell function may carry ``check_result(result, params) -> str | None`` saying what is wrong
    with a stored result of it (missing keys, values of the wrong kind). A thread count is not
    checked here (a different one is a reason to recompute, not a fault).
    """
    if not isinstance(rec, dict):
        return f"holds {type(rec).__name__ if rec is not None else 'null'}, not a cell record"
    missing = [k for k in ("params", "result", "threads") if k not in rec]
    if missing:
        return f"lacks {', '.join(missing)}"
    if rec.get("key", cell.key) != cell.key:
        return f"is the record of cell {one_line(rec['key'], 80)!s}"
    if rec["params"] != cell.params:
        return "holds other parameters than this cell's"
    if not isinstance(rec["threads"], int) or isinstance(rec["threads"], bool):
        return "has a non-integer thread count"
    seconds = rec.get("seconds", 0.0)
    if not _is_number(seconds) or seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "has no valid duration"
    if not isinstance(rec["result"], dict):
        return f"has a result that is {type(rec['result']).__name__ if rec['result'] is not None else 'null'}, not an object"
    check = getattr(cell.func, "check_result", None)
    if check is not None:
        problem = check(rec["result"], cell.params)
        if problem:
            return f"has a malformed result ({one_line(problem, 120)})"
    return None


def _load(path: Path, cell: Cell, threads: int) -> tuple[CellOutcome | None, str | None]:
    """The stored outcome of ``cell`` at ``path`` if it is valid, else (None, why not or None when absent)."""
    if not os.path.lexists(path):
        return None, None
    if not path.is_file():
        return None, "is not a regular file"
    try:
        rec = json.loads(path.read_text())
    except OSError as exc:
        return None, f"cannot be read ({one_line(exc.strerror or exc, 80)})"
    except ValueError:
        return None, "is not valid JSON (half-written or edited)"
    problem = stored_problem(rec, cell)
    if problem:
        return None, problem
    if rec["threads"] != threads:
        return None, None  # computed with another thread count: recomputed, never mixed in
    return CellOutcome(cell.key, cell.params, _canonical(rec["result"]), float(rec.get("seconds", 0.0)), True), None


def _make_room(path: Path) -> str:
    """Move a folder (or other non-file) at ``path`` aside so the cell file can be written; say where."""
    for i in range(100):
        aside = path.with_name(f"{path.name}.invalid{'' if i == 0 else f'-{i}'}")
        if not os.path.lexists(aside):
            try:
                os.replace(path, aside)
            except OSError as exc:
                break_reason = exc.strerror or str(exc)
                raise ConfigError(f"{path} is not a cell file and cannot be moved aside ({break_reason}); "
                                  "remove it") from None
            return f"; moved it to {aside.name}"
    raise ConfigError(f"{path} is not a cell file and cannot be moved aside; remove it")


def _timed(func, params, threads):
    with pinned_threads(threads):
        t0 = time.perf_counter()
        result = func(params)
        return result, time.perf_counter() - t0


def _warn(message: str) -> None:
    import warnings

    warnings.warn(message, UserWarning, stacklevel=3)


def run_cells(
    cells: list[Cell],
    executor: cf.Executor | None = None,
    cell_dir: str | os.PathLike | None = None,
    fresh: bool = False,
    progress: Callable[[int, int, CellOutcome], None] | None = None,
    threads: int = DEFAULT_CELL_THREADS,
    notice: Callable[[str], None] | None = None,
) -> list[CellOutcome]:
    """Run ``cells`` (skipping those already stored in ``cell_dir``) and return their outcomes in order.

    ``progress(done, total, outcome)`` is called after every finished (or loaded) cell.
    Each computed cell is written atomically as soon as it finishes, so an interrupted
    sweep resumes where it stopped. A stored file that is not a valid record of its cell is
    recomputed, and ``notice`` (default: a warning) gets one line saying which and why. A cell
    that raises stops the sweep (after the cells already finished were written) with a
    :class:`CellError`. Every cell runs with ``threads`` BLAS/OpenMP threads
    (:func:`pinned_threads`), in every executor.
    """
    if isinstance(threads, bool) or int(threads) != threads or threads < 1:
        raise ConfigError(f"threads per cell must be a positive integer, got {threads!r}")
    threads = int(threads)
    notice = notice if notice is not None else _warn
    keys = [c.key for c in cells]
    if len(set(keys)) != len(keys):
        raise ConfigError("duplicate cell keys in a sweep")
    executor = executor if executor is not None else InProcessExecutor()
    folder = Path(cell_dir) if cell_dir is not None else None
    outcomes: dict[str, CellOutcome] = {}
    total, done = len(cells), 0
    todo: list[Cell] = []
    for cell in cells:
        hit = None
        if folder is not None:
            path = folder / f"{cell.key}.json"
            if not fresh:
                hit, problem = _load(path, cell, threads)
                if problem:
                    moved = _make_room(path) if not path.is_file() and os.path.lexists(path) else ""
                    notice(f"{path}: {problem}; recomputing that cell{moved}")
            elif os.path.lexists(path) and not path.is_file():
                notice(f"{path}: is not a regular file{_make_room(path)}")
        if hit is None:
            todo.append(cell)
            continue
        outcomes[cell.key] = hit
        done += 1
        if progress is not None:
            progress(done, total, hit)

    def finish(cell: Cell, future: cf.Future) -> None:
        nonlocal done
        try:
            result, seconds = future.result()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - named and re-raised
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            raise CellError(cell.key, exc, text) from exc
        result = _canonical(result)  # what a resumed sweep will load: NaN/inf → None, tuples → lists
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
