#!/usr/bin/env bash
# The GPU proof (device machine, at most 10 minutes): with the current code,
#   1. the GPT-2-small shape bench in bf16: ours, sparsify kl, the lower bound (tokens/s, peak memory);
#   2. an 8-SAE sweep at that shape (bench system ours_sweep_e2e_8);
#   3. a Gemma-2-2B-shaped random model's e2e step (tokens/s, peak memory) next to `hf-e2e-sae plan`'s prediction;
#   4. liger-kernel's fused linear KL against ours (fp32 parity 1e-4 relative; speed), on CUDA.
# JSON and logs go to $OUT (copy them to docs/results/performance/ and commit).
# Usage there: bash scripts/gpu_check.sh            (sources gpu_env.sh: carried wheels, $OUT, nvidia-smi)
#        here: bash scripts/gpu_check.sh --device cpu  (dry run: tiny shapes, no wheels, a few seconds per step)
set -u
DEVICE=cuda
if [ "${1:-}" = "--device" ]; then DEVICE="${2:?--device needs cuda or cpu}"; fi
if [ "$DEVICE" = cuda ]; then
    source "$(dirname "$0")/gpu_env.sh"
    SHAPE=gpt2; DTYPE=bfloat16; REPEATS=5; WARMUP=2
else
    export PYTHONPATH=${PYTHONPATH:-$PWD} TOKENIZERS_PARALLELISM=false
    OUT=${OUT:-$(mktemp -d)}; mkdir -p "$OUT"
    SHAPE=tiny; DTYPE=float32; REPEATS=1; WARMUP=0
fi
start=$(date +%s)
step() { echo "== $1 ($(( $(date +%s) - start )) s)"; }
quiet() { grep -v -E "Training:|it/s|bitsandbytes|Learning rate|Initializing SAEs|Training on modules|Consider using|avg_kl"; }
bench() {  # bench NAME SYSTEMS
    timeout 300 python3 -m hf_e2e_sae.cli bench --shape "$SHAPE" --device "$DEVICE" --dtype "$DTYPE" --systems "$2" \
        --repeats "$REPEATS" --warmup "$WARMUP" --out "$OUT/$1.json" 2>&1 | quiet | tee "$OUT/$1.log"
}

step "1. bench at shape $SHAPE ($DTYPE): ours, sparsify kl, lower bound"
systems=ours_e2e,lower_bound
python3 -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('sparsify') is None)" \
    && systems=$systems,sparsify_kl || echo "sparsify_kl: not available (eai-sparsify not installed)"
bench "bench_${SHAPE}_${DTYPE}" "$systems"

step "2. 8-SAE sweep at shape $SHAPE"
if python3 -c "import sys; from hf_e2e_sae.bench.benchmark import SYSTEMS; sys.exit('ours_sweep_e2e_8' not in SYSTEMS)"; then
    bench "sweep8_${SHAPE}_${DTYPE}" ours_sweep_e2e_8,ours_e2e
else
    echo "sweep: not available (no bench system ours_sweep_e2e_8 in this build)" | tee "$OUT/sweep8.log"
fi

step "3. Gemma-2-2B-shaped e2e step against plan"
timeout 300 python3 scripts/gpu_check.py gemma --device "$DEVICE" --out "$OUT" 2>&1 | tee "$OUT/gemma.log" | tail -n 3

step "4. KL backends: liger against ours"
timeout 120 python3 scripts/gpu_check.py liger --device "$DEVICE" --out "$OUT" 2>&1 | tee "$OUT/liger.log" | tail -n 3

step "done: JSON and logs in $OUT"
ls "$OUT"
