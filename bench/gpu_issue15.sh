#!/usr/bin/env bash
# Issue 15's GPU runs, for a session lent a GPU: one call, at most 8 minutes.
#
#   bash bench/gpu_issue15.sh [OUT]              # on the GPU machine; default OUT docs/results/gpu-issue15
#   bash bench/gpu_issue15.sh --dry-run [OUT]    # a rehearsal on this CPU: every step, tiny (a few minutes)
#
# From the repository root, with python3 (or $PYTHON) holding torch and this project's dependencies
# (structsearch importable from the checkout: PYTHONPATH is set to it). Steps, each under its own
# `timeout` so one hang cannot eat the call (limits in seconds), run side by side on the one GPU:
#
#   1. env        (20)  GPU, driver, torch
#   2. dsprites  (440)  bench/dsprites_preset.py at the paper's length (InfoGAN-CR's 322,560 steps,
#                       full width, batch 64), seeds 0-2: today, preset, preset-structured, and
#                       preset-cr with the contrastive term from step 0 (at the authors' 288,000 it
#                       would never start within a call), one process per run, all at once, each
#                       training for DSPRITES_MIN minutes (default 3), checkpointed, then scored
#                       (MIG, DCI, FactorVAE at scale 0.2). A second call while the machine still
#                       holds runs/gpu-issue15/ continues every run from its checkpoint (--resume).
#   3. mnist     (440)  bench/mnist_seeds.py --device cuda, models infogan, infogan-normal, independent,
#                       entangled, independent-from300, independent-pooled and the null independent-l1e-6
#                       (lambda_struct 1e-6: the pairing's own drift; bench/seed_null.py) (each run --max-minutes MNIST_MIN,
#                       default 3; reruns resume), beside step 2, when the MNIST folder MNIST_DIR
#                       exists (default shared/data/mnist); skipped otherwise.
#
# The budget (BUDGET_S, 470 s) caps every limit. Results land in OUT (rows.jsonl and summary.md of
# the dSprites runs, mnist/, logs/). The checkpoints stay in runs/gpu-issue15/ (200-310 MB per
# full-width run: too large to bring back, so a resume needs the same warm machine). When $OUT
# names a folder (the device tool's), OUT is also packed into $OUT/gpu-issue15.tar.gz with the
# console log as $OUT/console.log.
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
if [[ ${1:-} == --dry-run ]]; then dry=1; shift; fi
out=${1:-docs/results/gpu-issue15}
budget=${BUDGET_S:-470}
py=${PYTHON:-$(command -v python3 || command -v python)}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} OMP_NUM_THREADS=1
runs=runs/gpu-issue15
mnist_dir=${MNIST_DIR:-shared/data/mnist}
mkdir -p "$out/logs" "$runs"
: >"$out/logs/steps.txt"

if ((dry)); then
    device=cpu
    common=(--steps 30 --width 0.125 --scale 0.02 --seeds 0 --max-minutes 0.2)
    recipes=(today preset-cr)
    seeds=(0)
    mnist_args=(--device cpu --steps 20 --seeds 0 --models infogan --max-minutes 0.5)
else
    device=cuda
    common=(--steps 322560 --width 1.0 --scale 0.2 --seeds 0,1,2 --max-minutes "${DSPRITES_MIN:-3}")
    recipes=(today preset preset-structured preset-cr)
    seeds=(0 1 2)
    mnist_args=(--device cuda --max-minutes "${MNIST_MIN:-3}" --models infogan infogan-normal independent entangled independent-from300 independent-pooled independent-l1e-6)
fi
common+=(--cr-start-fraction 0 --device "$device" --out "$out" --run-root "$runs/dsprites" --keep-runs --resume)

source bench/gpu_step.sh  # step NAME LIMIT COMMAND... (the working directory is the repository root)

dsprites() {  # one process per recipe and seed, all at once (a small net leaves the GPU mostly idle)
    local pids=() r s
    for r in "${recipes[@]}"; do
        for s in "${seeds[@]}"; do
            "$py" bench/dsprites_preset.py "${common[@]}" --recipes "$r" --seeds "$s" >"$out/logs/dsprites-$r-$s.log" 2>&1 &
            pids+=($!)
        done
    done
    for p in "${pids[@]}"; do wait "$p" || echo "a dsprites run exited $? (logs: $out/logs/dsprites-*.log)"; done
    local all
    all=$(IFS=,; echo "${recipes[*]}")
    "$py" bench/dsprites_preset.py "${common[@]}" --recipes "$all" --summarize && cat "$out/summary.md"
}

{
    step env 20 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1;
        $py -c 'import torch; print(\"torch\", torch.__version__, \"cuda\", torch.cuda.is_available())'"
    if [[ -d $mnist_dir ]]; then
        step mnist 440 "$py" bench/mnist_seeds.py "${mnist_args[@]}" --data-dir "$mnist_dir" \
            --out "$out/mnist" --runs "$runs/mnist" &
        mnist_pid=$!
    else
        echo "mnist: skipped, no MNIST folder at $mnist_dir (set MNIST_DIR)" | tee -a "$out/logs/steps.txt"
        mnist_pid=
    fi
    step dsprites 440 bash -c "$(declare -p common recipes seeds out py); $(declare -f dsprites); dsprites"
    [[ -n $mnist_pid ]] && wait "$mnist_pid"
    echo "all steps done in $SECONDS s"
} 2>&1 | tee "$out/logs/console.log"

if [[ -n ${OUT:-} && -d ${OUT:-} ]]; then
    tar czf "$OUT/gpu-issue15.tar.gz" "$out"
    cp "$out/logs/console.log" "$OUT/console.log"
fi
