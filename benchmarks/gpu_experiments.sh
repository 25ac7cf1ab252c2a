#!/usr/bin/env bash
# The long GPU runs of the experiments (issue 5) and the step profile, in one device call of
# under 10 minutes (cwd: the repo copy; $OUT: a folder whose files come back):
#
#   1. with GPU_EXPERIMENTS_TIMINGS=1 only, alone on the GPU: where a LeNet-5 step's time goes
#      (profile_step_cuda.py), the step and epoch vs PyTorch (lenet_step.py), the loader with
#      and without augmentation (augment_cost.py) (recorded once already, 2026-11-22);
#   2. side by side on the GPU until the budget runs out: the DCGAN on MNIST (width 64 for
#      100 epochs and width 128 for 60, both with a weight-averaged generator and cosine
#      learning rates) scored by the committed LeNet-5 MNIST classifier (a checkpoint, scores
#      and samples after every epoch, so a run cut off at the deadline keeps its last epoch),
#      LeNet-5 on augmented CIFAR-10 with the CPU's best recipe (120 epochs, label smoothing,
#      mirror test-time augmentation), and meanwhile the cuda-marked tests. (Earlier calls ran
#      the DCGAN at constant learning rate, with and without averaging, and two 60-epoch
#      CIFAR-10 recipes; see benchmarks/results/.)
#
# Wall times of the runs in step 2 are shared-GPU times, not solo ones. Needs .gpudata/ and
# build/wheelhouse carried (see gpu_check.sh).
#
#     bash benchmarks/gpu_experiments.sh

set -u
PACK_NAME=gpu_experiments.tgz
BUDGET="${GPU_EXPERIMENTS_BUDGET:-540}"
source "$(dirname "$0")/gpu_lib.sh"

install_stage 01_install
if [ "${GPU_EXPERIMENTS_TIMINGS:-0}" = 1 ]; then
    stage 02_profile 90 "$PY" benchmarks/profile_step_cuda.py --json "$LOGS/profile_step_cuda.json"
    model_speed_stages 03_lenet_gpu 04_augment_gpu
fi
wait_for_data

# -- side by side, each under the deadline ----------------------------------------------------
DEADLINE=$(( $(remaining) - 20 ))
background() {  # NAME COMMAND...: run in the background under the deadline, log to NAME.txt
    local name=$1
    shift
    echo "=== $name (limit ${DEADLINE}s, shared GPU): $*" > "$LOGS/$name.txt"
    ( t0=$(date +%s); timeout -k 5 "$DEADLINE" "$@" >> "$LOGS/$name.txt" 2>&1
      echo "$name: exit $? in $(( $(date +%s) - t0 ))s (shared GPU)" >> "$SUMMARY" ) &
}
background 10_gan_dcgan_ema_cos "$PY" -m dlx.cli gan --dataset mnist --device cuda --epochs 100 \
    --ema 0.999 --schedule cosine --data-dir .gpudata \
    --classifier examples/results/lenet5_mnist/model.npz --quiet --out "$LOGS/gan_dcgan_ema_cos"
background 11_gan_dcgan128_ema_cos "$PY" -m dlx.cli gan --dataset mnist --device cuda --epochs 60 \
    --channels 128 --ema 0.999 --schedule cosine --data-dir .gpudata \
    --classifier examples/results/lenet5_mnist/model.npz --quiet --out "$LOGS/gan_dcgan128_ema_cos"
background 12_cifar_aug_ls120 "$PY" -m dlx.cli train lenet5 --dataset cifar10 --device cuda \
    --data-dir .gpudata --epochs 120 --optimizer sgd --lr 0.05 --weight-decay 5e-4 \
    --schedule onecycle --augment --label-smoothing 0.1 --tta --quiet --out "$LOGS/cifar_aug_ls120"

stage 05_pytest_cuda 400 env NUMBA_NUM_THREADS=8 "$PY" -m pytest -m cuda -q -rfEs --continue-on-collection-errors --durations=10 \
    --junitxml="$LOGS/pytest_cuda.xml"
while [ -n "$(jobs -r)" ]; do  # pack now and then until the runs end
    sleep 15
    pack
done
wait
echo "total $(( $(date +%s) - START ))s" | tee -a "$SUMMARY"
pack
cat "$SUMMARY"
