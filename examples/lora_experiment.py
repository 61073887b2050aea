"""LoRA around a frozen SAE vs e2e fine-tuning of the SAE vs both, at equal extra tokens (Chen, Engels & Tegmark 2025,
arXiv 2501.19406; Karvonen 2025, arXiv 2503.17272), on the embedded tiny Shakespeare GPT-2.

    python examples/lora_experiment.py              # resumable: finished runs are skipped
    python examples/lora_experiment.py --seeds 0    # one seed

Per seed: a short local (MSE) SAE at blocks.2.resid_pre (examples/configs/tiny-e2e.yaml with loss.preset=local,
lambda 4, LOCAL_SAMPLES samples), then, from its final weights and for the same EXTRA_SAMPLES more samples each:
  lora      LoRA (r 8, alpha 16, every c_attn / c_proj / c_fc) around the frozen SAE, objective KL to the original
  finetune  `loss.preset=finetune` of the SAE itself (KL + MSE, balanced; same lambda)
  both      LoRA and the SAE together (finetune loss; the adapters learn from its KL)
  lora-after  as lora, with adapters only in the blocks after the SAE site (its input and L0 unchanged)
Every run is evaluated on the 128 held-out chunks; the CE loss increase is against the ORIGINAL model (no adapter,
no SAE). Writes docs/results/lora/results.json (every run) and prints the mean reduction of each arm.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "outputs" / "lora"
RESULTS = REPO / "docs" / "results" / "lora"
SITE = "blocks.2.resid_pre"
BASE = ["examples/configs/tiny-e2e.yaml", "eval_every_samples=null", "loss.sparsity.coeff=4"]
LOCAL_SAMPLES = 1024
EXTRA_SAMPLES = 256  # 25% of the local run's tokens, whole optimizer steps of 16 samples
TUNE = [f"n_samples={EXTRA_SAMPLES}", "lr=2e-3", "warmup_samples=32"]
LORA = ["lora.r=8", "lora.alpha=16", "lora.target_modules=[c_attn,c_proj,c_fc]", "lora.objective=kl"]
ARMS = {
    "lora": [*TUNE, *LORA, "lora.train_sae=false"],
    "finetune": [*TUNE, "loss.preset=finetune"],
    "both": [*TUNE, *LORA, "lora.train_sae=true", "loss.preset=finetune"],
    # adapters only in the blocks after the SAE (blocks 2 and 3 read blocks.2.resid_pre): the SAE's input, and so
    # its code and L0, stay exactly those of the local SAE
    "lora-after": [*TUNE, *LORA, "lora.train_sae=false", "lora.layers=[2,3]"],
    "lora-after-lr1e-2": [*TUNE, *LORA, "lora.train_sae=false", "lora.layers=[2,3]", "lr=1e-2"],  # lr sensitivity
}


def run(name: str, overrides: list) -> dict:
    """Train one run (unless its final/ exists) and return its metrics and summary."""
    final = RUNS / name / "final"
    if not (final / "eval_metrics.json").exists():
        command = [sys.executable, "-m", "hf_e2e_sae.cli", "train", *BASE, *overrides, f"output_dir={RUNS / name}",
                   "overwrite_output_dir=true"]
        with open(RUNS / f"{name}.log", "w") as log:
            subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)
    metrics = json.loads((final / "eval_metrics.json").read_text())
    summary = json.loads((final / "train_summary.json").read_text())
    return {"run": name, "l0": metrics[f"l0/{SITE}"], "ce_loss_orig": metrics["ce_loss_orig"],
            "ce_loss_sae": metrics["ce_loss_sae"], "ce_loss_increase": metrics["ce_loss_increase"], "kl": metrics["kl"],
            "explained_variance": metrics[f"explained_variance/{SITE}"], "train_samples": summary["train_samples"],
            "train_tokens": summary["train_tokens"], "seconds": summary["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    RUNS.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        local = run(f"local-s{seed}", ["loss.preset=local", f"n_samples={LOCAL_SAMPLES}", f"seed={seed}"])
        rows.append({**local, "arm": "local", "seed": seed, "reduction": None})
        for arm, overrides in ARMS.items():
            row = run(f"{arm}-s{seed}", [*overrides, f"seed={seed}", f"init_from={RUNS / f'local-s{seed}' / 'final'}"])
            reduction = 1 - row["ce_loss_increase"] / local["ce_loss_increase"]
            rows.append({**row, "arm": arm, "seed": seed, "reduction": reduction})
    means = {arm: sum(r["reduction"] for r in rows if r["arm"] == arm) / len(args.seeds) for arm in ARMS}
    setup = {"model": "builtin:tiny-shakespeare-gpt2", "site": SITE, "local_samples": LOCAL_SAMPLES,
             "extra_samples": EXTRA_SAMPLES, "context_length": 256, "lambda": 4, "arms": ARMS}
    (RESULTS / "results.json").write_text(json.dumps({"setup": setup, "mean_reduction": means, "runs": rows},
                                                     indent=2) + "\n")
    for row in rows:
        red = "" if row["reduction"] is None else f"  reduction {row['reduction']:+.1%}"
        print(f"{row['run']:12s} L0 {row['l0']:6.1f}  CE increase {row['ce_loss_increase']:.4f}  KL {row['kl']:.4f}"
              f"  {row['seconds']:.0f}s{red}")
    print("mean CE-increase reduction vs the local SAE:", {k: f"{v:+.1%}" for k, v in means.items()})


if __name__ == "__main__":
    main()
