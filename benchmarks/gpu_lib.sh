# Helpers shared by the GPU scripts (gpu_check.sh, gpu_experiments.sh), sourced by them:
# staged commands under `timeout` within a time budget, logs packed into $OUT/$PACK_NAME after
# every stage (the device tool returns at most 8 files; a run cut off at its limit still
# leaves what was done), the offline install, and the CIFAR-10 rebuild from carried JPEGs.
# Set PACK_NAME and BUDGET before sourcing.

set -u
OUT="${OUT:-$PWD/gpu_check_out}"
LOGS="${GPU_CHECK_LOGS:-/tmp/${PACK_NAME%%.*}_logs}"
mkdir -p "$OUT" "$LOGS"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
START=$(date +%s)
BUDGET="${GPU_CHECK_BUDGET:-${BUDGET:-560}}"   # seconds for everything
SUMMARY="$LOGS/summary.txt"
: > "$SUMMARY"
LAST_RC=0

# The logs so far -> $OUT/$PACK_NAME (atomically) and $OUT/summary.txt. Checkpoints and all but
# every tenth GAN sample grid stay out: the tool returns no file over 16 MB (a 60-epoch run of
# the 128-wide DCGAN made the whole pack too large once). Fetch those with a second command
# while the machine is still warm (30 s).
pack() {
    tar czf "$OUT/.$PACK_NAME" -C "$LOGS" --exclude='*.npz' --exclude='samples_epoch*[1-9].png' . \
        2>/dev/null && mv "$OUT/.$PACK_NAME" "$OUT/$PACK_NAME"
    cp "$SUMMARY" "$OUT/summary.txt"
}

remaining() { echo $(( BUDGET - ($(date +%s) - START) )); }

# stage NAME CAP_SECONDS COMMAND...: run under timeout (the smaller of CAP and what is left),
# output to $LOGS/NAME.txt and to the console tail, status to summary.txt.
stage() {
    local name=$1 cap=$2
    shift 2
    local left
    left=$(( $(remaining) - 5 ))
    local limit=$(( cap < left ? cap : left ))
    if [ "$limit" -lt 10 ]; then
        echo "$name: SKIPPED (no time left)" | tee -a "$SUMMARY"
        pack
        LAST_RC=125
        return 0
    fi
    local t0 rc
    t0=$(date +%s)
    echo "=== $name (limit ${limit}s): $*" | tee "$LOGS/$name.txt"
    timeout -k 10 "$limit" "$@" >> "$LOGS/$name.txt" 2>&1
    rc=$?
    LAST_RC=$rc
    local msg="$name: exit $rc in $(( $(date +%s) - t0 ))s"
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && msg="$msg (TIMED OUT after ${limit}s)"
    echo "$msg" | tee -a "$SUMMARY"
    tail -n 25 "$LOGS/$name.txt"
    pack
    return 0
}

has() { "$PY" -c "import $1" >/dev/null 2>&1; }

has() { "$PY" -c "import $1" >/dev/null 2>&1; }

install_missing() {
    local wh
    for wh in build/wheelhouse wheelhouse dist/wheelhouse; do
        [ -d "$wh" ] || continue
        for mod_pkg in pytest:pytest array_api_compat:array-api-compat \
                       array_api_strict:array-api-strict tqdm:tqdm mpi4py:mpi4py; do
            has "${mod_pkg%%:*}" || "$PY" -m pip install --no-index --find-links "$wh" "${mod_pkg#*:}"
        done
        # mpiexec for the data-parallel tests (tests/test_distributed.py), from the mpich wheel
        command -v mpiexec >/dev/null || "$PY" -m pip install --no-index --find-links "$wh" mpich
        # pyproject.toml's SPDX licence string needs setuptools >= 77 to build
        "$PY" -c "import setuptools, sys; sys.exit(int(setuptools.__version__.split('.')[0]) < 77)" ||
            "$PY" -m pip install --no-index --find-links "$wh" "setuptools>=77"
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

# Real data, if carried (.gpudata/, git-ignored): rebuild the CIFAR-10 archive on the CPU in
# the background; wait_for_data waits for it.
DATA=.gpudata
if [ -f "$DATA/cifar10/cifar10-jpg.tar.gz" ] && [ ! -f "$DATA/cifar10/cifar-10-python.tar.gz" ]; then
    ( "$PY" "$DATA/cifar10/make_cifar10.py" "$DATA/cifar10" --format python \
        > "$LOGS/cifar_rebuild.txt" 2>&1; echo "exit $?" >> "$LOGS/cifar_rebuild.txt" ) &
    REBUILD_PID=$!
fi


wait_for_data() {
    if [ -n "${REBUILD_PID:-}" ]; then
        wait "$REBUILD_PID"
        cat "$LOGS/cifar_rebuild.txt"
        REBUILD_PID=
    fi
}

# The stages both scripts run: dlx installed (and the wheels the machine lacks), and the
# whole-model speed on the GPU: LeNet-5 step/epoch vs PyTorch eager, and the loader with and
# without augmentation (random CIFAR-shaped data, so no data set is needed).
install_stage() {  # NAME
    stage "$1" 90 bash -c "$(declare -f has install_missing); PY=$PY; install_missing"
}
model_speed_stages() {  # NAME_OF_STEP_STAGE NAME_OF_LOADER_STAGE
    stage "$1" 90 "$PY" benchmarks/lenet_step.py --device cuda --steps 100 --rounds 2 \
        --json "$LOGS/lenet_step_cuda.json"
    stage "$2" 60 "$PY" benchmarks/augment_cost.py --device cuda --batches 200 --rounds 2 \
        --data-dir /nonexistent --json "$LOGS/augment_cost_cuda.json"
}
