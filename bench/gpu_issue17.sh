#!/usr/bin/env bash
# Issue 17's GPU measurements (item 5), for a session lent a GPU: one call, at most 8 minutes.
#
#   bash bench/gpu_issue17.sh [OUT]              # on the GPU machine; default OUT docs/results/gpu-issue17
#   bash bench/gpu_issue17.sh --dry-run [OUT]    # a rehearsal on this CPU: every step, tiny, ~2 s of timing each
#
# From the repository root, with python3 (or $PYTHON) holding torch (the H200 image's has torch and networkx,
# all these steps import: nothing to install, no MNIST needed, since the arithmetic does not
# depend on the pixels and every step trains on a resident random tensor of MNIST's shape).
# Steps, each under its own `timeout` so one hang cannot eat the call (limits in seconds):
#
#   1. env      (20)  GPU, driver, torch
#   2. ops      (60)  aten ops per step: InfoGAN vs R_G on the paper graph and on the collider
#                     (bench/op_count.py; the launch count that bounds a small net on a GPU)
#   3. steps    (90)  steps/s of InfoGAN and of R_G on the paper graph, back to back, interleaved
#                     rounds, batch 64 and 128, with the PyTorch-GAN-style peer (bench/peer_loop.py)
#   4. share   (170)  1, 4 and 9 processes sharing the GPU, InfoGAN then R_G, 12 s each (bench/gpu_share.py)
#   5. stacked (130)  K = 1, 4, 16 stacked trials in one process (bench/stacked_speed.py; skipped
#                     if that file is absent)
#
# A step never starts with a limit past the 8-minute budget: it gets what is left, or is skipped.
# Results land in OUT (json, md, logs/). When $OUT names a folder (the device tool's), they are
# also packed into $OUT/gpu-issue17.tar.gz with the console log as $OUT/console.log.
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
if [[ ${1:-} == --dry-run ]]; then dry=1; shift; fi
out=${1:-docs/results/gpu-issue17}
budget=${BUDGET_S:-470}  # of the 8 minutes: leaves time to pack the results
py=${PYTHON:-$(command -v python3 || command -v python)}  # PYTHON: another interpreter (a venv here)
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$out/logs"
: >"$out/logs/steps.txt"

if ((dry)); then
    device=cpu
    ops_args=(--batch 16)
    steps_args=(--batches 16 --rounds 2 --steps 2 --warmup 1 --threads 1)
    share_args=(--procs 1,2 --seconds 2 --batch 16 --warmup 1)
    stacked_args=(--ks 1,2 --steps 2 --rounds 1 --warmup 1 --batch 16 --width 0.25 --threads 1)
else
    device=cuda
    ops_args=(--batch 128)
    steps_args=(--batches 64,128 --rounds 3 --steps 40 --warmup 10)
    share_args=(--procs 1,4,9 --seconds 12 --batch 128)
    stacked_args=(--ks 1,4,16 --steps 15 --rounds 3 --batch 128 --count-ops)
fi

source bench/gpu_step.sh  # step NAME LIMIT COMMAND... (the working directory is the repository root)

{
    step env 20 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1;
        $py -c 'import torch; print(\"torch\", torch.__version__, \"cuda\", torch.cuda.is_available())'"
    step ops 60 "$py" bench/op_count.py --device "$device" "${ops_args[@]}" --out "$out/op_count.json"
    step steps 90 "$py" bench/peer_loop.py --device "$device" "${steps_args[@]}" --out "$out" --name "steps_$device"
    step share 170 "$py" bench/gpu_share.py --device "$device" "${share_args[@]}" --out "$out/share_$device.json"
    if [[ -f bench/stacked_speed.py ]]; then
        step stacked 130 "$py" bench/stacked_speed.py --device "$device" "${stacked_args[@]}" \
            --out "$out/stacked_speed_$device.json"
    else
        echo "stacked: skipped, bench/stacked_speed.py is absent" | tee -a "$out/logs/steps.txt"
    fi
    echo "all steps done in $SECONDS s"
} 2>&1 | tee "$out/logs/console.log"

if [[ -n ${OUT:-} && -d ${OUT:-} ]]; then
    tar czf "$OUT/gpu-issue17.tar.gz" -C "$(dirname "$out")" "$(basename "$out")"
    cp "$out/logs/console.log" "$OUT/console.log"
fi
