#!/usr/bin/env bash
# The budget study on the device machine: all 12 runs at once on one GPU (see examples/budget_study.py).
set -u
source "$(dirname "$0")/gpu_env.sh"
export OMP_NUM_THREADS=1
python3 examples/budget_study.py run --out "$OUT" --runs-dir /tmp/budget_runs --parallel 12 2>&1 | tee "$OUT/study.log"
tail -n 3 /tmp/budget_runs/*x16.log | grep -v "^$" | tail -n 20
