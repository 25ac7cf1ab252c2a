#!/usr/bin/env bash
# The long GPU runs of the experiments (issue 5) and the step profile, in one device call of
# under 10 minutes (cwd: the repo copy; $OUT: a folder whose files come back):
#
#   1. with GPU_EXPERIMENTS_TIMINGS=1 only, alone on the GPU: where a LeNet-5 step's time goes
#      (profile_step_cuda.py), the step and epoch vs PyTorch (lenet_step.py), the loader with
#      and without augmentation (augment_cost.py) (recorded once already, 2026-11-22);
#   2. side by side on the GPU until the budget runs out, the GAN recipes of issue 15: the
#      unconditional DCGAN and the class-conditional one with spectral norm and the hinge loss,
#      and the conditional one with the non-saturating loss, each with a weight average with
#      warm-up and cosine learning rates, scored per epoch by the LeNet-5 MNIST classifier (a
#      checkpoint, scores and samples after every epoch, so a run cut off at the deadline keeps
#      its last epoch); meanwhile the cuda-marked tests. Afterwards score the final generators
#      on 10,000 samples with the judge (examples/results/judge_convnet_mnist). (Earlier calls
#      ran the plain DCGAN recipes and the CIFAR-10 ones; see benchmarks/results/.)
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
# issue 15: the GAN recipes, chosen by the LeNet-5 classifier's scores per epoch; the judge
# (examples/results/judge_convnet_mnist, another architecture and seed) scores the finals only
background 10_gan_sn_hinge "$PY" -m dlx.cli gan --dataset mnist --device cuda --epochs 60 \
    --spectral-norm --loss hinge --ema 0.999 --ema-warmup --schedule cosine --data-dir .gpudata \
    --classifier examples/results/lenet5_mnist/model.npz --quiet --out "$LOGS/gan_sn_hinge"
background 11_cgan_sn_hinge "$PY" -m dlx.cli gan --dataset mnist --device cuda --epochs 60 \
    --conditional --spectral-norm --loss hinge --ema 0.999 --ema-warmup --schedule cosine \
    --data-dir .gpudata --classifier examples/results/lenet5_mnist/model.npz --quiet \
    --out "$LOGS/cgan_sn_hinge"
background 12_cgan_bce "$PY" -m dlx.cli gan --dataset mnist --device cuda --epochs 60 \
    --conditional --ema 0.999 --ema-warmup --schedule cosine --data-dir .gpudata \
    --classifier examples/results/lenet5_mnist/model.npz --quiet --out "$LOGS/cgan_bce"

stage 05_pytest_cuda 400 env DLX_NUM_THREADS=8 "$PY" -m pytest -m cuda -q -rfEs --continue-on-collection-errors --durations=10 \
    --junitxml="$LOGS/pytest_cuda.xml"
while [ -n "$(jobs -r)" ]; do  # pack now and then until the runs end
    sleep 15
    pack
done
wait
echo "total $(( $(date +%s) - START ))s" | tee -a "$SUMMARY"
pack
cat "$SUMMARY"
