#!/usr/bin/env bash
# The two-seed sweep and the hyper-parameter checks on the device machine (examples/sweep.py, many runs at once).
set -u
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader
start=$(date +%s)
python3 examples/sweep.py examples/configs/sweep-tiny.yaml --parallel 15 > "$OUT/sweep.log" 2>&1
echo "sweep: $(( $(date +%s) - start )) s"; tail -n 12 "$OUT/sweep.log"
cp docs/results/sweep.csv docs/results/sweep.md docs/results/reading.json docs/results/reading.md "$OUT/"
python3 examples/sweep.py examples/configs/hparams-tiny.yaml --parallel 10 > "$OUT/hparams.log" 2>&1
echo "sweep + hparams: $(( $(date +%s) - start )) s"; tail -n 16 "$OUT/hparams.log"
cp docs/results/hparams/sweep.csv "$OUT/hparams_sweep.csv"; cp docs/results/hparams/sweep.md "$OUT/hparams_sweep.md"
