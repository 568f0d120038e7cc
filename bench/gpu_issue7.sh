#!/usr/bin/env bash
# Issue 7's comparisons at the paper's scale, for a session lent a GPU: one script, about 8 minutes.
#
#   bash bench/gpu_issue7.sh [OUT] [MINUTES]     # defaults: docs/results/paper-gpu, 3.5
#   bash bench/gpu_bare_machine.sh               # the same on a machine with torch but not this project
#
# 0. The regularizer's training-speed overhead on the idle GPU (bench/train_speed.py).
# 1. MNIST: InfoGAN vs the independent vs the entangled graph, 5,000 updates (the paper's length),
#    InfoGAN's net and batch 128: scores, traversal and extrapolation grids.
# 2. dSprites: InfoGAN vs the structured model, seeds 0-2, 5,000 steps of the full-width 64x64 net,
#    the six metrics at SCALE (default 0.5) times disentanglement_lib's sample counts.
#
# All nine runs start at once, each its own process on the one GPU: these nets are small, so one
# run leaves the GPU mostly idle. Each run's training stops after MINUTES if it has not finished
# (its log, scores.json and dsprites.jsonl say how many steps it did), then it is scored as usual;
# a hard limit of MINUTES + 4 kills whatever is still running. Environment: RUNS (run folders,
# default runs), SCALE, MNIST_DIR; STEPS, WIDTH and DEVICE (defaults 5000, 1.0, cuda) for a rehearsal
# on a CPU.
set -uo pipefail
out=${1:-docs/results/paper-gpu}
minutes=${2:-3.5}
runs=${RUNS:-runs}
scale=${SCALE:-0.5}
steps=${STEPS:-5000}
width=${WIDTH:-1.0}
device=${DEVICE:-cuda}
hard=$(python -c "print(int(60 * $minutes + 240))")
mkdir -p "$out/logs"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 TRACKING=none MAX_MINUTES=$minutes RUNS=$runs
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$out/logs/gpu.txt"
python -c "import torch, pgmpy, optuna, structsearch.trial; print('torch', torch.__version__)" >>"$out/logs/gpu.txt" || exit 1
cat "$out/logs/gpu.txt"
# Preflight (about 30 s): every code path of the runs below, tiny, so a bug fails here, not after training.
pre=$(mktemp -d)
structsearch train --dataset mnist --data-dir "${MNIST_DIR:-../shared/data/mnist}" --preset tiny --steps 20 \
    --device "$device" --tracking none --out "$pre/mnist" >"$out/logs/preflight-mnist.log" 2>&1 &
python bench/paper_dsprites.py --device "$device" --steps 20 --width 0.125 --scale 0.01 --seeds 0 --models structured \
    --out "$pre" --run-root "$pre/runs" >"$out/logs/preflight-dsprites.log" 2>&1 ||
    { tail -n 30 "$out/logs/preflight-dsprites.log"; exit 1; }
wait $! || { tail -n 30 "$out/logs/preflight-mnist.log"; exit 1; }
echo "preflight passed"
if [[ $device == cuda* ]]; then  # the regularizer's cost on the idle GPU (about 30 s), steps back to back
    python bench/train_speed.py --device "$device" --steps 100 --out "$out/train_speed.json" \
        >"$out/logs/train_speed.log" 2>&1
    tail -n 12 "$out/logs/train_speed.log"
fi

pids=()
for model in infogan independent entangled; do
    timeout "$hard" bash bench/paper_mnist.sh "$steps" "$device" "$model" >"$out/logs/mnist-$model.log" 2>&1 &
    pids+=($!)
done
dsprites=(--device "$device" --steps "$steps" --width "$width" --scale "$scale" --out "$out" --run-root "$runs/paper-dsprites-gpu")
for model in infogan structured; do
    for seed in 0 1 2; do
        timeout "$hard" python bench/paper_dsprites.py "${dsprites[@]}" --models "$model" --seeds "$seed" \
            --max-minutes "$minutes" >"$out/logs/dsprites-$model-$seed.log" 2>&1 &
        pids+=($!)
    done
done
while sleep 20; do
    echo "$(date +%T) $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader)"
done >"$out/logs/gpu-utilization.log" &
monitor=$!
wait "${pids[@]}"
kill "$monitor"

python bench/paper_dsprites.py "${dsprites[@]}" --summarize
for model in infogan independent entangled; do
    mkdir -p "$out/mnist-$model"
    cp -r "$runs/paper-mnist-$model"/{scores.json,config.json,traversals} "$out/mnist-$model/" 2>/dev/null
done
python bench/paper_mnist_figure.py --out "$out" --runs "$runs"/paper-mnist-{infogan,independent,entangled}
grep -h "steps\|stopped\|completed\|cat_acc\|info/" "$out"/logs/mnist-*.log
cat "$out/dsprites.md"
tail -n 2 "$out"/logs/dsprites-*.log
