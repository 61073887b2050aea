#!/usr/bin/env bash
# The decoder-geometry comparison at small scale (docs/results/geometry/): local (lambda 4), e2e (lambda 1) and
# e2e+ds (lambda 12) SAEs at blocks.2.resid_pre of the embedded tiny GPT-2, similar L0, seeds 1 and 2, at two
# budgets (1,024 and 2,048 samples x 256 tokens = 64 and 128 Adam steps); then `hf-e2e-sae geometry`, the drift
# from initialisation and the summary tables. Runs already trained are skipped. About 30-60 minutes on a shared
# 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for budget in "1024 outputs/geo steps64" "2048 outputs/geo2048 steps128"; do
  set -- $budget
  n_samples=$1 root=$2 out=docs/results/geometry/$3
  runs=()
  for seed in 1 2; do
    for spec in "local 4" "e2e 1" "e2e+ds 12"; do
      set -- $spec
      name=$(echo "$1" | tr '+' 'p')-s$seed
      runs+=("$root/$name/final")
      [ -f "$root/$name/final/model.safetensors" ] && continue
      hf-e2e-sae train loss.preset="$1" loss.sparsity.coeff="$2" seed="$seed" n_samples="$n_samples" \
        data.n_eval_samples=32 eval_every_samples=null output_dir="$root/$name" \
        $([ "$n_samples" = 1024 ] && echo warmup_samples=64)
    done
  done
  hf-e2e-sae geometry "${runs[@]}" --out "$out"
  python examples/geometry_init_drift.py "${runs[@]}" --out "$out/init_drift.json"
done
python examples/geometry_summary.py steps64=outputs/geo steps128=outputs/geo2048
