"""The ``ngdref`` command line (package ``ngdref_cli``)."""

import os

# Set before NumPy loads OpenBLAS (this package is imported before any command module). OpenBLAS's idle
# worker threads spin for 2^28 cycles (~0.1 s) after every threaded call before they sleep; ngdref
# alternates threaded GEMMs with pools of single-BLAS-thread pieces (ngdref.threads), and on a 2-core
# machine the spinning workers take a core from those pieces and slow the GEMM that follows:
# `ngdref train --fim unit` took 8.1-8.9x a 4096² GEMM with the default and 7.3-7.5x with 2^20 cycles
# (~0.4 ms: still long enough for back-to-back calls). A value the user has set is kept.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")
