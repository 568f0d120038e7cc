#!/usr/bin/env bash
# Issue 7's comparisons at the paper's scale, for a session that is lent a GPU (one script, at most
# about 8 minutes; each part is time-boxed and resumable, so a rerun continues where this stopped).
#
#   bash bench/gpu_issue7.sh            # writes under runs/ and docs/results/paper-gpu/
#
# 1. MNIST: InfoGAN vs the independent vs the entangled graph, 5,000 updates (the paper's length).
# 2. dSprites: InfoGAN vs the structured model, 3 seeds, 5,000 steps of the full-width 64x64 net,
#    the six metrics at disentanglement_lib's sample counts.
set -uo pipefail
export MNIST_DIR=${MNIST_DIR:-../shared/data/mnist}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout 300 bash bench/paper_mnist.sh 5000 cuda
timeout 180 python bench/paper_dsprites.py --device cuda --steps 5000 --width 1.0 --scale 1.0 \
    --out docs/results/paper-gpu --run-root runs/paper-dsprites-gpu
for m in infogan independent entangled; do
    echo "== $m"; python -c "import json,sys; print(json.load(open(sys.argv[1])))" runs/paper-mnist-$m/scores.json || true
done
