#!/usr/bin/env bash
# Run bench/gpu_issue7.sh on a bare GPU machine that has python3 with torch, numpy, scipy, pandas,
# scikit-learn, networkx, matplotlib and tqdm but not this project, and no network. Prepare here:
#
#   mkdir -p .whl .gpu/mnist && cp ../shared/data/mnist/*.gz .gpu/mnist/
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl pgmpy==1.1.2 scikit-base==1.2.0 optuna==5.0.0 \
#       alembic==1.20.1 sqlalchemy==2.1.9 mako==1.4.3 colorlog==6.12.0
#
# then there (both folders in the checkout, git-ignored): `MINUTES=3.5 bash bench/gpu_bare_machine.sh`.
# The results come back as $OUT/paper-gpu.tar.gz and $OUT/console.log.
set -u
cd "$(dirname "$0")/.."
out_dir=${OUT:-/tmp/out}
mkdir -p "$out_dir"
t0=$SECONDS
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
mkdir -p /tmp/bin
command -v python >/dev/null || ln -sf "$(command -v python3)" /tmp/bin/python
printf '#!/bin/sh\nexec python -m structsearch "$@"\n' >/tmp/bin/structsearch && chmod +x /tmp/bin/structsearch
export PATH=/tmp/bin:$PATH MNIST_DIR=$PWD/.gpu/mnist RUNS=${RUNS:-/tmp/runs}
echo "setup took $((SECONDS - t0)) s"
bash bench/gpu_issue7.sh /tmp/paper-gpu "${MINUTES:-3.5}" 2>&1 | tee "$out_dir/console.log"
tar czf "$out_dir/paper-gpu.tar.gz" -C /tmp paper-gpu
echo "all done in $((SECONDS - t0)) s"
