#!/usr/bin/env bash
# GPU checks of ngdref, for a machine with an NVIDIA GPU and CuPy (pip install -e ".[gpu,test]").
#
#   bash benchmarks/gpu_check.sh OUTDIR
#
# Writes into OUTDIR, in this order (parity first). Every step runs under `timeout` so that the
# whole script stays within BUDGET_S = 480 s (8 minutes) by default; a step that would start with
# less than its minimum left is skipped and says so in summary.txt:
#   nvidia-smi.txt        the device as the driver reports it
#   environment.txt       python, numpy, cupy, CUDA runtime, the recorded environment variables
#   parity.json / .txt    NumPy vs CuPy on the same seeds, float64, relative error <= 1e-10 for
#                         the NTK, Θ̄ and one direction of every approximation in the registry
#   scale-gpu.json / .txt one NGD step of each approximation at M = 16,384 and 32,768 (L = 3,
#                         N = 100) on CuPy: wall time, memory-pool size / P (issue 17, target 2)
#   train-16384.json/.txt ngdref --backend cupy train --fim unit --width 16384 (10 steps)
#   analytic-10000.txt    analytic kernels (host NumPy) at N = 10,000: the NTK, and the exact-NGD
#                         prediction with N' = 2,000; time and peak RSS (issue 17, target 3)
#   pytest-gpu.txt        python -m pytest -q -m gpu tests/   (the GPU parity tests)
#   bench-gpu.json / .txt python -m benchmarks run --suite gpu (CuPy at M up to 16384, NumPy up to
#                         4096), with the time that is left
#   summary.txt           one line per step with its exit code and the elapsed time
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
BUDGET_S="${BUDGET_S:-480}"
NGDREF=(ngdref)
command -v ngdref >/dev/null 2>&1 || NGDREF=("$PY" -c "from ngdref_cli.main import main; main()")

# run_step NAME MIN_S MAX_S LOGFILE CMD...: CMD under `timeout` (at most MAX_S and what is left of the
# budget), skipped when less than MIN_S is left; 124 = it hit its limit (a failure)
run_step() {
    local name="$1" min_s="$2" max_s="$3" log="$4"; shift 4
    local left=$((BUDGET_S - SECONDS))
    if [ "$left" -lt "$min_s" ]; then note "$name: skipped ($left s of the budget left, needs $min_s)"; return 0; fi
    local limit=$(( max_s < left ? max_s : left ))
    timeout "$limit" "$@" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -eq 124 ]; then note "$name: FAILED (time limit ${limit} s)"; status=1
    elif [ "$rc" -ne 0 ]; then note "$name: FAILED (exit $rc)"; status=1
    else note "$name: passed (${SECONDS} s elapsed)"; fi
    return 0
}

# 1. NumPy vs CuPy parity on the same seeds (float64, <= 1e-10 relative), first
run_step "parity numpy vs cupy" 30 120 "$OUT/parity.txt" \
    "$PY" -m benchmarks parity --other cupy --seeds 0,1 --tol 1e-10 --out "$OUT/parity.json"

# 2. one step of every approximation at M = 16,384 and 32,768 (P = 2.8e8 and 1.1e9, float64)
run_step "scale M=16384,32768" 60 200 "$OUT/scale-gpu.txt" \
    "$PY" -m benchmarks.scale --backend cupy --widths 16384,32768 --budget-s 150 --out "$OUT/scale-gpu.json"

# 3. the default unit-wise training (10 steps) at width 16,384 on the GPU
run_step "train --fim unit --width 16384" 30 90 "$OUT/train-16384.txt" \
    "${NGDREF[@]}" --backend cupy train --fim unit --width 16384 --json "$OUT/train-16384.json"

# 4. analytic kernels at N = 10,000 (host NumPy, float64): the NTK, then the exact-NGD prediction (N' = 2,000)
run_step "analytic N=10000" 30 120 "$OUT/analytic-10000.txt" "$PY" -c '
import resource, time
import numpy as np
from ngdref.data import Dataset
from ngdref.experiments.prediction import AnalyticPredictor
from ngdref.kernels import analytic_kernels
from ngdref.network import Network
rng = np.random.default_rng(0)
def unit(k):
    x = rng.standard_normal((k, 784))
    return x / np.linalg.norm(x, axis=1, keepdims=True)
n, nt = 10000, 2000
x, xt = unit(n), unit(nt)
net = Network.build(784, 4096, 3, 1, "relu", sigma_w2=2.0, sigma_b2=0.0)
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
base, t0 = rss(), time.perf_counter()
analytic_kernels(net, x).ntk
print(f"analytic NTK N={n}: {time.perf_counter() - t0:.1f} s, peak RSS growth {(rss() - base) / (8 * n * n):.2f} N^2 arrays")
lab, labt = rng.integers(0, 2, n), rng.integers(0, 2, nt)
ds = Dataset(x, (0.5 - lab)[:, None].astype(float), xt, (0.5 - labt)[:, None].astype(float), lab, labt, (0, 1), "gaussian")
t0 = time.perf_counter()
acc = AnalyticPredictor(net, ds, ["exact"]).accuracies(0)
print(f"predict exact N={n} N_test={nt}: {time.perf_counter() - t0:.1f} s, peak RSS growth {(rss() - base) / (8 * n * n):.2f} N^2 arrays, accuracy {acc}")
'

# 5. the GPU-marked tests (pytest exits 5 when none are collected: recorded, not a failure)
left=$((BUDGET_S - SECONDS))
if [ "$left" -lt 30 ]; then
    note "pytest -m gpu: skipped ($left s of the budget left)"
else
    timeout "$(( left < 120 ? left : 120 ))" "$PY" -m pytest -q -m gpu tests/ 2>&1 | tee "$OUT/pytest-gpu.txt"
    rc=${PIPESTATUS[0]}
    if [ "$rc" -eq 5 ]; then
        note "pytest -m gpu: no tests marked gpu were collected (exit 5)"
    elif [ "$rc" -ne 0 ]; then
        note "pytest -m gpu: FAILED (exit $rc)"; status=1
    else
        note "pytest -m gpu: passed"
    fi
fi

# 6. the benchmark suite on the GPU (M up to 16384), with the time that is left
run_step "benchmark suite gpu" 60 600 "$OUT/bench-gpu.txt" \
    "$PY" -m benchmarks run --suite gpu --out "$OUT/bench-gpu.json"

note "gpu_check: $([ "$status" -eq 0 ] && echo OK || echo FAILED) in ${SECONDS} s"
exit "$status"
