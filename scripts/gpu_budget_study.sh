#!/usr/bin/env bash
# The budget study on the device machine: all 12 runs at once on one GPU (see examples/budget_study.py).
set -u
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader
python3 examples/budget_study.py run --out "$OUT" --runs-dir /tmp/budget_runs --parallel 12 2>&1 | tee "$OUT/study.log"
tail -n 3 /tmp/budget_runs/*x16.log | grep -v "^$" | tail -n 20
