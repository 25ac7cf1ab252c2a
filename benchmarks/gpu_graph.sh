#!/usr/bin/env bash
# The GPU checks of the captured training step (issue 11), in one device call of under 10
# minutes (cwd: the repo copy; $OUT: a folder whose files come back):
#
#   1. the cuda-marked tests of this issue: tests/test_compile.py's replayed graph against
#      eager steps with the same kernels, bit for bit over 200 LeNet-5 steps (Adam, Adam +
#      dropout, SGD; the short last batch's own graph), the fused multi-tensor Adam against
#      the xp code (tests/test_optim.py), the loader's fused batch kernel (tests/test_data.py
#      on cuda), dlx's GEMM against cuBLAS (tests/test_cuda_kernels.py), fit on cuda; failures are rerun with DLX_CUDA_SYNC=1 (the rest of the cuda
#      suite runs last, in the time left);
#   2. the kernel table (benchmarks/kernels_cuda.py), dlx's GEMM included;
#   3. benchmarks/graph_epoch.py: the LeNet-5 epoch (batch 128 and 512, with and without crop +
#      flip) for dlx eager, dlx graph, PyTorch eager and PyTorch graphed/compiled, the DCGAN
#      epoch, and the GPU busy fraction of a step;
#   4. the README's main job with --graph, against the same job eager (06 of gpu_check.sh).
#
# Needs build/wheelhouse carried (see gpu_check.sh); .gpudata/ (real CIFAR-10 and MNIST) is
# used when carried, else the benchmarks use random data of the same shapes.
#
#     bash benchmarks/gpu_graph.sh

set -u
PACK_NAME=gpu_graph.tgz
BUDGET="${GPU_GRAPH_BUDGET:-560}"
source "$(dirname "$0")/gpu_lib.sh"

install_stage 01_install
stage 02_info 30 "$PY" -c "
import json, dlx
from dlx.backends.cuda import cuda_info
print(json.dumps(cuda_info(), indent=1))
print(dlx.device('cuda'))
"
CUDA_TESTS=(tests/test_compile.py tests/test_optim.py tests/test_data.py tests/test_cuda_kernels.py
            tests/test_no_host_sync.py tests/test_training.py)
if has pytest && has array_api_compat; then  # the tests of this issue first, the rest at the end
    stage 03_pytest_cuda_graph 150 "$PY" -m pytest -m cuda -q -rfEs --durations=10 "${CUDA_TESTS[@]}" \
        --junitxml="$LOGS/pytest_cuda_graph.xml"
    if [ "$LAST_RC" -ne 0 ] && [ "$LAST_RC" -ne 5 ]; then
        stage 03b_failed_with_sync 60 env DLX_CUDA_SYNC=1 "$PY" -m pytest -m cuda --lf -x -q -rfE \
            "${CUDA_TESTS[@]}"
    fi
fi
stage 04_kernels 60 "$PY" benchmarks/kernels_cuda.py --out "$LOGS/kernels_cuda.json"
DATA_ARGS=()
wait_for_data
[ -f "$DATA/cifar10/cifar-10-python.tar.gz" ] && DATA_ARGS=(--data-dir "$DATA")
stage 05_graph_epoch 200 "$PY" benchmarks/graph_epoch.py --device cuda "${DATA_ARGS[@]}" \
    --out "$LOGS/graph_epoch.json"
if [ -f "$DATA/cifar10/cifar-10-python.tar.gz" ]; then
    for mode in graph no-graph; do
        stage "06_main_job_$mode" 60 "$PY" -m dlx.cli train lenet5 --dataset cifar10 --device cuda \
            --data-dir "$DATA" --epochs 10 --quiet --"$mode" --out "$LOGS/main_job_$mode"
    done
fi
if has pytest && has array_api_compat; then  # the rest of the cuda suite, in the time left
    IGNORES=()
    for f in "${CUDA_TESTS[@]}"; do IGNORES+=(--ignore="$f"); done
    stage 07_pytest_cuda_rest 300 "$PY" -m pytest -m cuda -q -rfEs --durations=10 "${IGNORES[@]}" \
        --junitxml="$LOGS/pytest_cuda_rest.xml"
fi
echo "total $(( $(date +%s) - START ))s" | tee -a "$SUMMARY"
pack
echo "--- summary"
cat "$SUMMARY"
