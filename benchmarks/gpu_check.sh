#!/usr/bin/env bash
# GPU checks of ngdref, for a machine with an NVIDIA GPU and CuPy (pip install -e ".[gpu,test]").
#
#   bash benchmarks/gpu_check.sh OUTDIR
#
# Writes into OUTDIR:
#   nvidia-smi.txt        the device as the driver reports it
#   environment.txt       python, numpy, cupy, CUDA runtime, the recorded environment variables
#   pytest-gpu.txt        python -m pytest -q -m gpu tests/   (the GPU parity tests)
#   parity.json / .txt    NumPy vs CuPy on the same seeds, float64, relative error <= 1e-10 for
#                         the NTK, Θ̄ and one direction of every approximation in the registry
#   bench-gpu.json / .txt python -m benchmarks run --suite gpu (CuPy at M up to 16384, NumPy up to 4096)
#   summary.txt           one line per step with its exit code
#
# Exit code: 0 when every step passed, 1 when a check failed, 2 when there is no usable GPU/CuPy.
# It does not change the GPU's settings and does not install anything.
set -u -o pipefail

OUT="${1:?usage: bash benchmarks/gpu_check.sh OUTDIR}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python}"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

note() { echo "$*" | tee -a "$SUMMARY"; }

if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
else
    echo "nvidia-smi not found" > "$OUT/nvidia-smi.txt"
fi

if ! "$PY" - > "$OUT/environment.txt" 2>&1 <<'EOF'
import os, platform, sys
import numpy
print("python", platform.python_version(), sys.executable)
print("numpy", numpy.__version__)
for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "CUPY_TF32", "CUDA_VISIBLE_DEVICES", "NGDREF_MAX_BYTES"):
    print(k, os.environ.get(k))
import cupy
print("cupy", cupy.__version__, "CUDA runtime", cupy.cuda.runtime.runtimeGetVersion())
n = cupy.cuda.runtime.getDeviceCount()
print("devices", n)
assert n >= 1, "no CUDA device visible"
props = cupy.cuda.runtime.getDeviceProperties(0)
print("device 0", props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
      props["totalGlobalMem"] // 2**20, "MiB")
from ngdref.backend import get_backend
get_backend("cupy")
EOF
then
    cat "$OUT/environment.txt"
    note "gpu: unusable (no CuPy or no CUDA device); see environment.txt"
    exit 2
fi
cat "$OUT/environment.txt"

status=0

# 1. the GPU-marked tests (pytest exits 5 when none are collected: recorded, not a failure)
"$PY" -m pytest -q -m gpu tests/ 2>&1 | tee "$OUT/pytest-gpu.txt"
rc=${PIPESTATUS[0]}
if [ "$rc" -eq 5 ]; then
    note "pytest -m gpu: no tests marked gpu were collected (exit 5)"
elif [ "$rc" -ne 0 ]; then
    note "pytest -m gpu: FAILED (exit $rc)"; status=1
else
    note "pytest -m gpu: passed"
fi

# 2. NumPy vs CuPy parity on the same seeds (float64, <= 1e-10 relative)
"$PY" -m benchmarks parity --other cupy --seeds 0,1 --tol 1e-10 --out "$OUT/parity.json" 2>&1 | tee "$OUT/parity.txt"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then note "parity numpy vs cupy: FAILED (exit $rc)"; status=1; else note "parity numpy vs cupy: passed"; fi

# 3. the benchmark suite on the GPU (M up to 16384), progress on stderr into the same log
"$PY" -m benchmarks run --suite gpu --out "$OUT/bench-gpu.json" 2>&1 | tee "$OUT/bench-gpu.txt"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then note "benchmark suite gpu: FAILED (exit $rc)"; status=1; else note "benchmark suite gpu: written to bench-gpu.json"; fi

note "gpu_check: $([ "$status" -eq 0 ] && echo OK || echo FAILED)"
exit "$status"
