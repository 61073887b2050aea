#!/usr/bin/env bash
# The GPU benchmark run (device machine): carried wheels for what the image lacks, then hf-e2e-sae bench and a
# profile of our e2e step. Usage there: bash scripts/gpu_bench.sh [quick]   (JSON and logs under $OUT)
#   quick: only the GPT-2 small shape in bf16 and our step's profile
set -u
source "$(dirname "$0")/gpu_env.sh"
quiet() { grep -v -E "Training:|it/s|bitsandbytes|Learning rate|Initializing SAEs|Training on modules|Consider using|avg_kl"; }
python3 -m hf_e2e_sae.cli bench --shape gpt2 --device cuda --dtype bfloat16 --repeats 10 --warmup 3 \
    --out "$OUT/bench_gpt2_bf16.json" 2>&1 | quiet | tee "$OUT/bench_gpt2_bf16.log"
if [ "${1:-}" != quick ]; then
    python3 -m hf_e2e_sae.cli bench --shape A --shape B --device cuda --dtype float32 --repeats 10 --warmup 3 \
        --out "$OUT/bench_AB_cuda.json" 2>&1 | quiet | tee "$OUT/bench_AB_cuda.log"
    python3 scripts/profile_step.py lower_bound gpt2 bfloat16 2>&1 | tee "$OUT/profile_lower_bound.log" | tail -22
fi
python3 scripts/profile_step.py ours_e2e gpt2 bfloat16 2>&1 | tee "$OUT/profile_ours_e2e.log" | tail -22
