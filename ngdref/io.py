"""Results files: atomic writing, a per-folder lock, run metadata.

Every file is written under a temporary name unique to the writer (``mkstemp`` in the target's
folder) and renamed into place, so a reader, an interrupted run or a second run writing the same
folder never sees a half-written file. :func:`folder_lock` lets runs that write one folder take
turns (``ngdref reproduce`` holds it for a figure's whole run).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

LOCK_NAME = ".ngdref.lock"


def _default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _clean(obj):
    """Replace non-finite floats by None (JSON has no NaN/inf) recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def dumps(record) -> str:
    return json.dumps(_clean(json.loads(json.dumps(record, default=_default))), indent=2) + "\n"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path unique to this writer, next to ``path``, renamed onto ``path`` when the block ends.

    The block writes the temporary file (a writer that picks the format from the name, such as
    matplotlib's ``savefig``, gets ``suffix``); on an exception it is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; results are ordinary files
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a unique temporary file in the same folder, then rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())


def write_json(path: str | os.PathLike, record) -> None:
    write_atomic(path, dumps(record))


def folder_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be, or become, a folder this process writes files into; None when it can.

    Checked before any work, so that a run is refused at its start instead of failing at its first
    file: the path must not be empty, must not exist as anything but a folder, and its nearest
    existing ancestor (where a missing path would be created) must be a writable folder.
    """
    if not str(path).strip():
        return "is empty"
    p = Path(path)
    if os.path.lexists(p) and not p.is_dir():
        return "exists and is not a folder"
    q = p
    while not os.path.lexists(q) and q.parent != q:
        q = q.parent
    if not q.is_dir():
        return f"cannot be created: {q} is not a folder"
    if not os.access(q, os.W_OK | os.X_OK):
        return f"is not writable ({q}: permission denied)"
    return None


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, on_wait: Callable[[Path], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` for the block, waiting while another process holds it.

    The lock is an OS lock (``flock``; ``msvcrt.locking`` on Windows) on ``folder/.ngdref.lock``,
    released by the OS when its holder exits, however it exits, so a killed run never leaves a
    stale lock. ``on_wait(lock_path)`` is called once before waiting. Where the file system has
    no locks (some network file systems) the block runs unlocked: every file is still written
    atomically under a unique temporary name, so concurrent runs cannot corrupt each other.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            _lock(fd, blocking=False)
        except BlockingIOError:
            if on_wait is not None:
                on_wait(path)
            _lock(fd, blocking=True)
        except OSError:
            pass  # no locks on this file system
        yield
    finally:
        os.close(fd)  # releases the lock


def _lock(fd: int, blocking: bool) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        import msvcrt
        import time

        while True:
            try:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                return
            except OSError:
                if not blocking:
                    raise BlockingIOError from None
                time.sleep(0.5)
    fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))


def software_versions() -> dict:
    """What produced a result: ngdref, Python, NumPy, SciPy (CuPy when installed), the platform, the
    git commit of the checkout ngdref runs from (``git_commit`` None, ``git_dirty`` None when it is
    not run from a checkout) and the BLAS: ``blas_build`` as NumPy was built (``numpy.show_config``),
    ``blas`` the libraries loaded now (``threadpoolctl``: implementation, version, architecture)."""
    import scipy

    from . import __version__

    out = {
        "ngdref": __version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "platform": platform.platform(),
        **_git_state(),
        "blas_build": _blas_build(),
        "blas": _blas_runtime(),
    }
    try:  # pragma: no cover - only with a GPU
        import cupy  # type: ignore[import-not-found]

        out["cupy"] = cupy.__version__
    except Exception:
        pass
    return out


#: seconds a git query may take before the commit is recorded as unknown
GIT_TIMEOUT = 5.0


@functools.lru_cache(maxsize=1)
def _git_state_cached() -> tuple:
    root = Path(__file__).resolve().parent.parent  # the checkout's root, when ngdref runs from one

    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT, check=False)

    try:
        top = git("rev-parse", "--show-toplevel")
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != root:
            return None, None  # installed, not a checkout (or inside some other repository)
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return None, None
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return head.stdout.strip(), (None if dirty.returncode != 0 else bool(dirty.stdout.strip()))
    except (OSError, subprocess.SubprocessError):  # no git, or it hung
        return None, None


def _git_state() -> dict:
    commit, dirty = _git_state_cached()
    return {"git_commit": commit, "git_dirty": dirty}


def _blas_build() -> dict | None:
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    except Exception:  # an older NumPy or another build layout
        return None
    return {k: blas.get(k) for k in ("name", "version", "openblas configuration") if blas.get(k) is not None}


def _blas_runtime() -> list[dict]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover - a declared dependency
        return []
    keys = ("user_api", "internal_api", "version", "threading_layer", "architecture")
    return [{k: lib.get(k) for k in keys} for lib in threadpool_info() if lib.get("user_api") == "blas"]
