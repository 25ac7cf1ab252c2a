#!/usr/bin/env bash
# The one command a GPU session runs (cwd: the repo copy; $OUT: a folder whose files come
# back). It installs dlx, records the machine, runs the CUDA tests, the kernel benchmark and
# the rest of the suite, each stage under `timeout`, never stopping at a failed stage, and
# finishes within about 9 minutes. Every stage writes $OUT/NN_stage.txt; $OUT/summary.txt
# lists each stage's exit status and duration.
#
#     bash benchmarks/gpu_check.sh            # OUT defaults to ./gpu_check_out
#
# Offline machine: packages missing there (pytest, array-api-compat, array-api-strict, tqdm)
# are installed from a wheelhouse if the repo copy carries one, made beforehand with
#     pip download --no-deps -d build/wheelhouse pytest pluggy iniconfig packaging pygments \
#         array-api-compat array-api-strict tqdm
# (2 MB of pure-Python wheels; build/ is git-ignored, so pass carry=["build/wheelhouse"]).
# Without array-api-compat dlx.device("cuda") raises DeviceError and the cuda tests skip.

set -u
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
START=$(date +%s)
BUDGET="${GPU_CHECK_BUDGET:-530}"   # seconds for everything
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
LAST_RC=0

remaining() { echo $(( BUDGET - ($(date +%s) - START) )); }

# stage NAME CAP_SECONDS COMMAND...: run under timeout (the smaller of CAP and what is left),
# output to $OUT/NAME.txt and to the console tail, status to summary.txt.
stage() {
    local name=$1 cap=$2
    shift 2
    local left
    left=$(( $(remaining) - 5 ))
    local limit=$(( cap < left ? cap : left ))
    if [ "$limit" -lt 10 ]; then
        echo "$name: SKIPPED (no time left)" | tee -a "$SUMMARY"
        LAST_RC=125
        return 0
    fi
    local t0 rc
    t0=$(date +%s)
    echo "=== $name (limit ${limit}s): $*" | tee "$OUT/$name.txt"
    timeout -k 10 "$limit" "$@" >> "$OUT/$name.txt" 2>&1
    rc=$?
    LAST_RC=$rc
    local msg="$name: exit $rc in $(( $(date +%s) - t0 ))s"
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && msg="$msg (TIMED OUT after ${limit}s)"
    echo "$msg" | tee -a "$SUMMARY"
    tail -n 25 "$OUT/$name.txt"
    return 0
}

has() { "$PY" -c "import $1" >/dev/null 2>&1; }

# -- 00: what is installed; 01: dlx itself (and wheels the machine lacks) ---------------------
stage 00_env 60 bash -c "
    echo python: \$(command -v $PY); $PY --version
    $PY -m pip list 2>/dev/null | grep -i -E 'cupy|torch|numpy|numba|pytest|array|tqdm|fastrlock|setuptools' || true
    command -v nvcc && nvcc --version | tail -n 2
    nvidia-smi || echo 'nvidia-smi not found'
"

install_missing() {
    local wh
    for wh in build/wheelhouse wheelhouse dist/wheelhouse; do
        [ -d "$wh" ] || continue
        for mod_pkg in pytest:pytest array_api_compat:array-api-compat \
                       array_api_strict:array-api-strict tqdm:tqdm; do
            has "${mod_pkg%%:*}" || "$PY" -m pip install --no-index --find-links "$wh" "${mod_pkg#*:}"
        done
    done
    "$PY" -m pip install --no-deps --no-build-isolation -e . || {
        echo "editable install failed: linking dlx/backends -> backends so 'import dlx.backends' works from here"
        [ -e dlx/backends ] || ln -s ../backends dlx/backends
    }
    "$PY" -c "import dlx.backends.cuda, dlx; print('dlx imports from', dlx.__file__)"
    for m in pytest array_api_compat array_api_strict tqdm cupy torch; do
        has "$m" && echo "$m: ok" || echo "$m: MISSING"
    done
}
stage 01_install 90 bash -c "$(declare -f has install_missing); PY=$PY; install_missing"

# -- 02: GPU, driver, CUDA and CuPy versions, dlx's view of the device ------------------------
stage 02_info 60 "$PY" -c "
import json
from dlx.backends.cuda import cuda_info
info = cuda_info()
print(json.dumps(info, indent=1))
json.dump(info, open('$OUT/cuda_info.json', 'w'), indent=1)
try:
    import cupy
    cupy.show_config()
except Exception as e:
    print('cupy.show_config() failed:', type(e).__name__, e)
import dlx
dev = dlx.device('cuda')
print('dlx.device(\"cuda\") ->', dev, dev.xp.__name__)
"

# -- 03: the CUDA tests (pytest -m cuda); on failure, rerun the failures with DLX_CUDA_SYNC=1 --
# Without pytest or array-api-compat (dlx.device("cuda") needs it, so every cuda test would
# skip), the kernels are checked against the reference by selfcheck instead.
if ! has array_api_compat; then
    echo "WARNING: array-api-compat is missing: dlx.device('cuda') cannot work here and the" \
         "cuda tests would all skip; carry a wheelhouse (see the top of this script)" | tee -a "$SUMMARY"
fi
if has pytest && has array_api_compat; then
    stage 03_pytest_cuda 240 "$PY" -m pytest -m cuda -q -rfEs --durations=15 \
        --junitxml="$OUT/pytest_cuda.xml"
    if [ "$LAST_RC" -ne 0 ] && [ "$LAST_RC" -ne 5 ]; then  # 5: no tests collected
        stage 03b_pytest_cuda_failed_sync 60 env DLX_CUDA_SYNC=1 "$PY" -m pytest -m cuda --lf -x -q -rfE
    fi
else
    stage 03_selfcheck 240 "$PY" -m dlx.backends.cuda.selfcheck --count 150
fi

# -- 04: per-kernel benchmark ------------------------------------------------------------------
stage 04_benchmark 150 "$PY" benchmarks/kernels_cuda.py --out "$OUT/kernels_cuda.json"

# -- 04b: whole-model speed on the GPU: LeNet-5 step/epoch vs PyTorch eager, and the loader
# with and without augmentation (random CIFAR-shaped data: the GPU machine has no data sets)
stage 04b_lenet_gpu 120 "$PY" benchmarks/lenet_step.py --device cuda --steps 100 --rounds 2 \
    --json "$OUT/lenet_step_cuda.json"
stage 04c_augment_gpu 90 "$PY" benchmarks/augment_cost.py --device cuda --batches 200 --rounds 2 \
    --data-dir /nonexistent --json "$OUT/augment_cost_cuda.json"

# -- 05: the rest of the suite (CPU and strict devices; cuda tests already ran) ----------------
if has pytest; then
    stage 05_pytest_rest 200 "$PY" -m pytest -m "not cuda" -q -rfEs --durations=15 \
        --junitxml="$OUT/pytest_rest.xml"
fi

echo "total $(( $(date +%s) - START ))s" | tee -a "$SUMMARY"
echo "--- summary"
cat "$SUMMARY"
