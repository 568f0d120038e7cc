#!/usr/bin/env bash
# Issue 14's pairs benchmark (items 3-4) for a session lent a GPU: one call, at most 8 minutes.
#
#   bash bench/gpu_issue14.sh [OUT]              # on the GPU machine; default OUT docs/results/pairs-recovery
#   bash bench/gpu_issue14.sh --dry-run [OUT]    # a rehearsal on this CPU: every step, tiny (3.5 minutes on a busy 2-core CPU)
#
# The grid: 3 truths (collider, chain, fork) x 3 seeds x all 25 DAGs over q1..q3 = 225 runs, each
# one model trained under its candidate with --code-prior graph --lambda-pair $LAMBDA for $STEPS steps
# of the quick preset's net (bench/pairs_recovery.py), then scored. $PROCS processes (default 15 of
# the 16 cores, OMP_NUM_THREADS=1 each) share the one GPU, each a shard of the grid; seeds are the
# outer loop of every shard, so a grid cut short holds whole seeds first.
#
# Steps, each under its own `timeout` (seconds, cut to the budget left; a step is skipped when
# under 10 s remain):
#
#   1. env        (20)  GPU, driver, torch
#   2. speed      (40)  s/step of one process alone on the device, without and with pairs
#   3. preflight  (90)  one 20-step run on the device: every code path, and the feature net of
#                       pair_feature_energy (fid's, trained once here and cached for the shards)
#   4. bench     (rest) the shards; each stops training at --max-minutes (checkpointed, so a second
#                       call of this script resumes every unfinished run and skips finished ones)
#   5. summary    (30)  summary.md: per truth and score, how often the top DAG is right
#
# A second call (a fresh machine) resumes where the first stopped when OUT/results.jsonl is in the
# working tree and runs/pairs-recovery (ignored by git: the device tool's `carry`) travels with it.
# Environment: STEPS (default 1000), LAMBDA (1.0), PROCS (15), BUDGET_S (450 of the 480), PYTHON, and
# CANDIDATES (all: the 25 DAGs; shapes: one DAG per unlabelled shape, 54 runs, so about 4x STEPS fits).
# Results land in OUT (results.jsonl, summary.md, logs/). When $OUT names a folder (the device
# tool's), they are also packed into $OUT/gpu-issue14.tar.gz with the console log as $OUT/console.log.
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
if [[ ${1:-} == --dry-run ]]; then dry=1; shift; fi
out=${1:-}
if [[ -z $out ]]; then ((dry)) && out=$(mktemp -d)/pairs-recovery-dry || out=docs/results/pairs-recovery; fi
budget=${BUDGET_S:-450}
py=${PYTHON:-$(command -v python3 || command -v python)}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$out/logs"
: >"$out/logs/steps.txt"
runs=$(mktemp -d)  # the preflight's checkpoints
if ((dry)); then
    device=cpu steps=${STEPS:-10} procs=${PROCS:-2} lambda=${LAMBDA:-1.0} speed_steps=5
    grid=(--seeds 0,1 --candidates "q1->q3, q2->q3; (no edges); q1->q2, q1->q3, q2->q3")
    expected=18
    ckpt=$runs/bench
else
    device=cuda steps=${STEPS:-1000} procs=${PROCS:-15} lambda=${LAMBDA:-1.0} speed_steps=200
    candidates=${CANDIDATES:-all}  # shapes: one DAG per unlabelled shape, 54 runs (raise STEPS with it)
    grid=(--candidates "$candidates")
    [[ $candidates == shapes ]] && expected=54 || expected=225
    ckpt=runs/pairs-recovery  # in the repository: a second call resumes from here
fi
bench=("$py" bench/pairs_recovery.py --device "$device" --steps "$steps" --lambda-pair "$lambda")

source bench/gpu_step.sh  # step NAME LIMIT COMMAND... (the working directory is the repository root)

shards() {  # shards LIMIT: every shard in the background under `timeout LIMIT`, OMP_NUM_THREADS=1 each
    local limit=$1 pids=() i t0=$SECONDS rc=0
    local minutes
    minutes=$(awk "BEGIN {print ($limit - 45) / 60}")  # training stops 45 s before the kill: time to score
    for ((i = 0; i < procs; i++)); do
        timeout -k 5 "$limit" "${bench[@]}" "${grid[@]}" --out "$out/results.jsonl" --runs "$ckpt" \
            --shard "$i/$procs" --max-minutes "$minutes" >"$out/logs/shard-$i.log" 2>&1 &
        pids+=($!)
    done
    for i in "${pids[@]}"; do wait "$i" || rc=$?; done
    echo "bench: $procs shards, last nonzero exit ${rc}, after $((SECONDS - t0)) s (limit $limit s, training $minutes min)" |
        tee -a "$out/logs/steps.txt"
    grep -h "stopped by --max-minutes\|Error" "$out"/logs/shard-*.log | cut -c1-300 || true
}

{
    step env 20 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1;
        $py -c 'import torch; print(\"torch\", torch.__version__, \"cuda\", torch.cuda.is_available())'"
    step speed 40 "${bench[@]}" --speed "$speed_steps"  # s/step of one process alone, without and with pairs
    step preflight 90 "${bench[@]}" --steps 20 --truths collider --seeds 0 --candidates "q1->q3, q2->q3" \
        --out "$runs/preflight.jsonl" --runs "$runs/preflight" || { echo "preflight failed: stopping"; exit 1; }
    shards $((budget - SECONDS - 35))  # 35 s left for the summary and the packing
    step summary 30 "$py" bench/pairs_recovery.py --summarize --out "$out/results.jsonl"
    echo "rows in $out/results.jsonl: $(wc -l <"$out/results.jsonl" 2>/dev/null || echo 0) ($expected for the grid); all done in $SECONDS s"
} 2>&1 | tee "$out/logs/console.log"

if [[ -n ${OUT:-} && -d ${OUT:-} ]]; then
    tar czf "$OUT/gpu-issue14.tar.gz" -C "$(dirname "$out")" "$(basename "$out")"
    cp "$out/logs/console.log" "$OUT/console.log"
fi
