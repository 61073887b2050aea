#!/usr/bin/env bash
# A shorter GPU run: GPT-2 small shape in bf16 and a profile of our e2e step (see gpu_bench.sh).
set -u
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
quiet() { grep -v -E "Training:|it/s|bitsandbytes|Learning rate|Initializing SAEs|Training on modules|Consider using|avg_kl"; }
python3 -m hf_e2e_sae.cli bench --shape gpt2 --device cuda --dtype bfloat16 --repeats 10 --warmup 3 \
    --out "$OUT/bench_gpt2_bf16.json" 2>&1 | quiet | tee "$OUT/bench_gpt2_bf16.log"
python3 scripts/profile_step.py ours_e2e gpt2 bfloat16 2>&1 | tee "$OUT/profile_ours_e2e.log" | tail -22
