"""Processes and files of `ngdref reproduce`: workers die with their parent, concurrent runs into one folder.

Both tests start real processes and poll with deadlines of tens of seconds (a loaded 2-core
machine is slow to spawn Python processes); no duration is asserted beyond those bounds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

CLI = [sys.executable, "-c", "from ngdref_cli.main import main; main()"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state letter) of ``pid``, or None when it no longer exists."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), fields[0]


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None and st[0] == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[1] not in ("Z", "X")  # a zombie has exited; only its reaping is pending


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _wait_for_workers(parent: subprocess.Popen, n: int, deadline_s: float) -> list[int]:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        assert parent.poll() is None, "the run ended before its workers were seen"
        workers = [c for c in _children(parent.pid) if "spawn_main" in _cmdline(c)]
        if len(workers) >= n:
            return workers
        time.sleep(0.2)
    pytest.fail(f"no {n} workers within {deadline_s} s")


def _kill_and_watch(parent: subprocess.Popen, watched: list[int], deadline_s: float = 60) -> list[int]:
    """SIGKILL ``parent``; the pids of ``watched`` still alive after ``deadline_s`` (ideally none)."""
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(timeout=60)
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and any(_alive(p) for p in watched):
        time.sleep(0.2)
    return [p for p in watched if _alive(p)]


def _cleanup(pids: list[int]) -> None:
    for p in pids:  # only processes this test started (children of its own subprocess)
        if _alive(p):
            os.kill(p, signal.SIGKILL)


def test_reproduce_workers_exit_when_the_parent_is_killed(tmp_path):
    """`reproduce --jobs 2` killed by SIGKILL (an OOM killer, a CI timeout): no worker survives it,
    and none holds the parent's output open (the pipe reaches end of file)."""
    parent = subprocess.Popen([*CLI, "reproduce", "figS2", "--jobs", "2", "--out", str(tmp_path / "s2")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV)
    workers: list[int] = []
    try:
        workers = _wait_for_workers(parent, 2, 120)
        time.sleep(1.0)  # let them get into their first cells
        survivors = _kill_and_watch(parent, workers)
        assert not survivors, f"workers {survivors} outlived their killed parent"
        parent.stdout.read()  # end of file: nothing holds the output any more (else: pytest's timeout)
    finally:
        _cleanup(workers)
        if parent.poll() is None:
            parent.kill()
        parent.stdout.close()


_POOL = """
import concurrent.futures as cf, multiprocessing, os, sys, time
from ngdref.experiments.sweep import _exit_with_parent
pool = cf.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"),
                              initializer=_exit_with_parent, initargs=(os.getpid(), {pdeathsig}))
futures = [pool.submit(time.sleep, 600) for _ in range(2)]
time.sleep(600)
"""


@pytest.mark.parametrize("pdeathsig", [True, False], ids=["prctl", "parent-pipe"])
def test_each_guard_alone_ends_the_workers(pdeathsig):
    """The kernel's parent-death signal and the portable watch of the spawn pipe each suffice."""
    parent = subprocess.Popen([sys.executable, "-c", _POOL.format(pdeathsig=pdeathsig)], env=ENV)
    workers: list[int] = []
    try:
        workers = _wait_for_workers(parent, 2, 120)
        time.sleep(1.0)
        assert not _kill_and_watch(parent, workers)
    finally:
        _cleanup(workers)
        if parent.poll() is None:
            parent.kill()


def test_concurrent_runs_into_one_folder(tmp_path):
    """Two `reproduce` runs into the same --out: both succeed and write what a run of its own writes."""
    solo, shared = tmp_path / "solo", tmp_path / "shared"
    args = ["reproduce", "figS2", "--quick"]
    runs = [subprocess.Popen([*CLI, *args, "--out", str(shared)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=ENV) for _ in range(2)]
    reference = subprocess.run([*CLI, *args, "--out", str(solo)], capture_output=True, text=True, env=ENV,
                               timeout=600)
    assert reference.returncode == 0, reference.stderr
    for proc in runs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    assert (shared / "figS2.csv").read_bytes() == (solo / "figS2.csv").read_bytes()
    a, b = (json.loads((d / "figS2.json").read_text()) for d in (shared, solo))
    assert a["rows"] == b["rows"] and a["claims"] == b["claims"]
    assert (shared / "figS2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cells = sorted(p.name for p in (shared / "cells").iterdir())
    assert cells == sorted(p.name for p in (solo / "cells").iterdir())  # no temporaries left behind
    assert not [p for p in shared.iterdir() if p.name.endswith(".tmp") or ".tmp." in p.name]
