#!/usr/bin/env bash
# The one command a GPU session runs (cwd: the repo copy; $OUT: a folder whose files come
# back). It installs dlx, records the machine, runs the CUDA tests, the kernel benchmark and
# the rest of the suite, each stage under `timeout`, never stopping at a failed stage, and
# finishes within about 9.5 minutes. Every stage writes NN_stage.txt into a log folder that is
# packed into $OUT/gpu_check.tgz after each stage (the device tool returns at most 8 files, and
# a run cut off at its limit still leaves the stages done so far); $OUT/summary.txt lists each
# stage's exit status and duration.
#
#     bash benchmarks/gpu_check.sh            # OUT defaults to ./gpu_check_out
#
# Real data: if the repo copy carries .gpudata/ (git-ignored: mnist/ with the four IDX .gz
# files and cifar10/ with cifar10-jpg.tar.gz + make_cifar10.py from ../shared/data), the
# CIFAR-10 archive is rebuilt there in the background while the tests run, and the README's
# main job (LeNet-5 on CIFAR-10, 10 epochs) and a 2-epoch DCGAN run on cuda are timed.
#
# Offline machine: packages missing there (pytest, array-api-compat, array-api-strict, tqdm)
# are installed from a wheelhouse if the repo copy carries one, made beforehand with
#     pip download --no-deps -d build/wheelhouse pytest pluggy iniconfig packaging pygments \
#         array-api-compat array-api-strict tqdm "setuptools>=77" mpi4py mpich
# (about 17 MB with mpich's binaries; build/ is git-ignored, so pass carry=["build/wheelhouse"]).
# Without array-api-compat dlx.device("cuda") raises DeviceError and the cuda tests skip.

set -u
PACK_NAME=gpu_check.tgz
BUDGET="${GPU_CHECK_BUDGET:-560}"   # seconds for everything
source "$(dirname "$0")/gpu_lib.sh"

# -- 00: what is installed; 01: dlx itself (and wheels the machine lacks) ---------------------
stage 00_env 60 bash -c "
    echo python: \$(command -v $PY); $PY --version
    $PY -m pip list 2>/dev/null | grep -i -E 'cupy|torch|numpy|numba|pytest|array|tqdm|fastrlock|setuptools' || true
    command -v nvcc && nvcc --version | tail -n 2
    nvidia-smi || echo 'nvidia-smi not found'
"

install_stage 01_install

# -- 02: GPU, driver, CUDA and CuPy versions, dlx's view of the device ------------------------
stage 02_info 60 "$PY" -c "
import json
from dlx.backends.cuda import cuda_info
info = cuda_info()
print(json.dumps(info, indent=1))
json.dump(info, open('$LOGS/cuda_info.json', 'w'), indent=1)
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
# skip), the kernels are checked against the reference by tests/cuda_selfcheck.py instead.
if ! has array_api_compat; then
    echo "WARNING: array-api-compat is missing: dlx.device('cuda') cannot work here and the" \
         "cuda tests would all skip; carry a wheelhouse (see the top of this script)" | tee -a "$SUMMARY"
fi
if has pytest && has array_api_compat; then
    stage 03_pytest_cuda 210 "$PY" -m pytest -m cuda -q -rfEs --continue-on-collection-errors --durations=15 \
        --junitxml="$LOGS/pytest_cuda.xml"
    if [ "$LAST_RC" -ne 0 ] && [ "$LAST_RC" -ne 5 ]; then  # 5: no tests collected
        stage 03b_pytest_cuda_failed_sync 60 env DLX_CUDA_SYNC=1 "$PY" -m pytest -m cuda --lf -x -q -rfE
    fi
else
    stage 03_selfcheck 240 "$PY" tests/cuda_selfcheck.py --count 150
fi

# -- 04: per-kernel benchmark ------------------------------------------------------------------
stage 04_benchmark 90 "$PY" benchmarks/kernels_cuda.py --out "$LOGS/kernels_cuda.json"

# -- 04b/04c: whole-model speed on the GPU (gpu_lib.sh)
model_speed_stages 04b_lenet_gpu 04c_augment_gpu

# -- 06/07: real data on cuda: the README's main job (LeNet-5, CIFAR-10, 10 epochs) and a short
# DCGAN run scored by the committed MNIST LeNet-5 (time per epoch; samples; IS / FD) ----------
wait_for_data
if [ -f "$DATA/cifar10/cifar-10-python.tar.gz" ]; then
    stage 06_cifar10_lenet_cuda 120 "$PY" -m dlx.cli train lenet5 --dataset cifar10 --device cuda \
        --data-dir "$DATA" --epochs 10 --quiet --out "$LOGS/lenet5_cifar10_cuda"
    # its curve next to the CPU runs of the same job (rounding drift: results/2026-11-22-drift-cifar10)
    drift=benchmarks/results/2026-11-22-drift-cifar10
    stage 06b_cifar10_drift 30 "$PY" benchmarks/float32_drift.py compare "$drift/cpu.json" \
        "$LOGS/lenet5_cifar10_cuda/history.json" "$drift"/cpu_nudged_seed*.json \
        --json "$LOGS/cifar10_drift.json"
fi
if [ -f "$DATA/mnist/train-images-idx3-ubyte.gz" ]; then
    stage 07_gan_cuda 100 "$PY" -m dlx.cli gan --dataset mnist --device cuda --epochs 2 \
        --data-dir "$DATA" --classifier examples/results/lenet5_mnist/model.npz --quiet \
        --out "$LOGS/gan_cuda"
fi

# -- 08: the rest of the suite (CPU and strict devices; cuda tests already ran) ----------------
if has pytest; then
    stage 08_pytest_rest 200 "$PY" -m pytest -m "not cuda" -q -rfEs --durations=15 \
        --junitxml="$LOGS/pytest_rest.xml"
fi

echo "total $(( $(date +%s) - START ))s" | tee -a "$SUMMARY"
pack
echo "--- summary"
cat "$SUMMARY"
