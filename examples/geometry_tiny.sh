#!/usr/bin/env bash
# The decoder-geometry comparison at small scale (docs/results/geometry/): local, e2e and e2e+ds SAEs at
# blocks.2.resid_pre of the embedded tiny GPT-2, at similar L0 (about 45-55), two seeds each, 1,024 samples x 256
# tokens per run (a short budget: about 1-5 minutes per run on a shared 2-core machine), then `hf-e2e-sae geometry`.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
runs=()
for seed in 1 2; do
  for spec in "local 4" "e2e 1" "e2e+ds 12"; do
    set -- $spec
    name=$(echo "$1" | tr '+' 'p')-s$seed
    runs+=("outputs/geo/$name/final")
    [ -f "outputs/geo/$name/final/model.safetensors" ] && continue
    hf-e2e-sae train loss.preset="$1" loss.sparsity.coeff="$2" seed="$seed" n_samples=1024 warmup_samples=64 \
      data.n_eval_samples=32 eval_every_samples=null output_dir="outputs/geo/$name"
  done
done
hf-e2e-sae geometry "${runs[@]}" --out docs/results/geometry
