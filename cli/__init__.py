"""The ``ngdref`` command line (package ``ngdref_cli``), and two settings of the process it runs in.

Both are made here, on import, because this package is imported before any command module and
before NumPy loads OpenBLAS; both were measured on the 2-core development machine with
``ngdref train --fim unit`` (M = 4096, N = 100) against a 4096² float64 GEMM timed in the same run.

* ``OPENBLAS_THREAD_TIMEOUT=20`` unless the user set it: OpenBLAS's idle workers spin for 2^28 cycles
  (~0.1 s) after every threaded call before they sleep. ngdref alternates threaded GEMMs with pools of
  single-BLAS-thread pieces (:mod:`ngdref.threads`); the spinning workers took a core from those pieces
  and slowed the GEMM that followed (8.1-8.9× the GEMM with the default, 7.3-7.5× with 2^20 cycles,
  ~0.4 ms, still long enough for back-to-back calls).
* glibc's allocator serves blocks of up to 64 MiB from its heap (``mallopt`` M_MMAP_THRESHOLD) and keeps
  up to 128 MiB of freed memory at the heap's top (M_TRIM_THRESHOLD), instead of mapping each block afresh
  and returning it to the kernel on free, which faults fresh pages in for the next:
  the unit-wise set-up's chunks of temporaries (a few MiB each, allocated and freed hundreds of times)
  took 405,000 page faults and 1.4 s of system time in its first call, 15,000 and 0.1 s with this.
  Freed blocks then stay with the process until it exits; larger ones (M = 16,384's chunks of hundreds
  of MiB) are still returned, so the peak resident set does not grow by heap fragmentation (with 256 MiB
  it grew from 2.42 to 2.46 P at M = 16,384). Measured with 2 CPUs: each pool thread's arena may keep as
  much again, so on many cores the retained memory can be larger. Skipped where the C library is not glibc.
"""

import ctypes
import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")


def _keep_freed_blocks(limit: int = 64 << 20) -> None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows): nothing to tune
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    mallopt(m_mmap_threshold, limit)
    mallopt(m_trim_threshold, 2 * limit)


_keep_freed_blocks()
