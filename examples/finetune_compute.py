"""Per-token training cost of local, e2e and finetune steps on the tiny model, timed interleaved.

    python examples/finetune_compute.py

The machine is shared, so wall-clock times of separate runs are not comparable; here the three kinds of
optimizer step run on the same batches, alternately (local, e2e, finetune, local, ...), so that load changes hit
all three alike. Writes docs/results/finetune/step_cost.json (median seconds per optimizer step, and ratios).
"""
import json
import statistics
import sys
import time
from pathlib import Path

from accelerate.state import AcceleratorState, GradientState

from hf_e2e_sae.training.config import load_train_config
from hf_e2e_sae.training.trainer import _micro_batch_groups, setup_run, train_step

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results" / "finetune"
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 8
INIT = REPO / "outputs" / "finetune" / "local-l4" / "final"
KINDS = {"local": ["loss.preset=local", "loss.sparsity.coeff=4"],
         "e2e": ["loss.preset=e2e", "loss.sparsity.coeff=1"],
         "finetune": ["loss.preset=finetune", "loss.sparsity.coeff=4", f"init_from={INIT}"]}


def build(overrides: list):
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    config = load_train_config(REPO / "examples" / "configs" / "tiny-e2e.yaml",
                               [*overrides, "eval_every_samples=null", "output_dir=outputs/finetune/compute-tmp"])
    run = setup_run(config)
    return run, list(zip(range(ROUNDS + 1), _micro_batch_groups(run)))


def main() -> None:
    runs = {kind: build(overrides) for kind, overrides in KINDS.items()}
    times = {kind: [] for kind in KINDS}
    for i in range(ROUNDS + 1):
        for kind, (run, groups) in runs.items():
            start = time.perf_counter()
            train_step(run, groups[i][1])
            if i:  # the first step warms up
                times[kind].append(time.perf_counter() - start)
    median = {kind: statistics.median(values) for kind, values in times.items()}
    result = {"rounds": ROUNDS, "tokens_per_step": 16 * 256, "median_seconds_per_step": median,
              "e2e_over_local": median["e2e"] / median["local"], "finetune_over_e2e": median["finetune"] / median["e2e"]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "step_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
