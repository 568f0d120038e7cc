#!/usr/bin/env bash
# The paper's MNIST comparison: InfoGAN (lambda_struct 0) vs the independent graph vs the entangled
# graph (q2, q3 -> q4 among three continuous codes), all with InfoGAN's Cat(10) code, its net and
# batch 128, the same seed; lambda_struct 1 for the two graphs, as every documented run used (the
# default became 0.1 later). Traversal grids (with the extrapolation grid at c in {-2, 0, 2}) land
# in runs/paper-mnist-<model>/traversals, scores (cat_acc, info per code) in scores.json.
#
#   bash bench/paper_mnist.sh [STEPS] [DEVICE] [MODELS]   # defaults: 5000 (the paper's length), auto,
#                                                         # "infogan independent entangled"
#
# (with the project installed: `structsearch` on PATH, e.g. the activated venv). Optional
# environment: MNIST_DIR (default ../shared/data/mnist), TRACKING (an MLflow URI or 'none'),
# MAX_MINUTES (each run stops there, then is scored as usual), RUNS (default runs).
#
# A killed run (or one rerun with more STEPS) continues from its last checkpoint.
set -euo pipefail
steps=${1:-5000}
device=${2:-auto}
models=${3:-infogan independent entangled}
codes="cat10,cont,cont,cont;noise=62"
common=(--dataset mnist --data-dir "${MNIST_DIR:-../shared/data/mnist}" --codes "$codes" --preset paper
        --steps "$steps" --device "$device" --seed 0 --checkpoint-every 250)
[[ -n ${TRACKING:-} ]] && common+=(--tracking "$TRACKING")
[[ -n ${MAX_MINUTES:-} ]] && common+=(--max-minutes "$MAX_MINUTES")
train() {  # train OUT ARGS...: start the run in OUT, or resume it if OUT holds one
    local out=$1; shift
    local resume=(); [[ -f $out/config.json ]] && resume=(--resume)
    structsearch train "${common[@]}" "$@" --out "$out" "${resume[@]}" || echo "$out: failed (exit $?)" >&2
}
for model in $models; do
    case $model in
        infogan) train "${RUNS:-runs}/paper-mnist-infogan" --graph independent --lambda-struct 0 ;;
        independent) train "${RUNS:-runs}/paper-mnist-independent" --graph independent --lambda-struct 1 ;;
        entangled) train "${RUNS:-runs}/paper-mnist-entangled" --graph "c1->q1, c2->q2, c3->q3, c4->q4, q2->q4, q3->q4" \
            --lambda-struct 1 ;;
        *) echo "unknown model '$model' (infogan, independent, entangled)" >&2; exit 2 ;;
    esac
done
