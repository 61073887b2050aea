#!/usr/bin/env bash
# The two-seed sweep and the hyper-parameter checks on the device machine (examples/sweep.py, many runs at once).
set -u
source "$(dirname "$0")/gpu_env.sh"
export OMP_NUM_THREADS=1
start=$(date +%s)
python3 examples/sweep.py examples/configs/sweep-tiny.yaml --parallel 15 > "$OUT/sweep.log" 2>&1
echo "sweep: $(( $(date +%s) - start )) s"; tail -n 12 "$OUT/sweep.log"
cp docs/results/sweep.csv docs/results/sweep.md docs/results/reading.json docs/results/reading.md "$OUT/"
python3 examples/sweep.py examples/configs/hparams-tiny.yaml --parallel 10 > "$OUT/hparams.log" 2>&1
echo "sweep + hparams: $(( $(date +%s) - start )) s"; tail -n 16 "$OUT/hparams.log"
cp docs/results/hparams/sweep.csv "$OUT/hparams_sweep.csv"; cp docs/results/hparams/sweep.md "$OUT/hparams_sweep.md"
