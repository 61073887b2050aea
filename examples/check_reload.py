"""Reload a finished run's final/ SAEs and re-evaluate them on the run's held-out data.

    python examples/check_reload.py outputs/topk16-readme/final

Loads the SAEs with `SAEPatchedModel.from_pretrained` (the base model they name), rebuilds the held-out set
from the saved train_config.yaml, evaluates, and compares with the eval_metrics.json the trainer wrote. Two
independent loads must also give identical latents. Prints the comparison; exits 1 on a mismatch.
"""
import json
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer

from hf_e2e_sae import SAEPatchedModel, evaluate
from hf_e2e_sae.patching.base_models import resolve_base_model
from hf_e2e_sae.training.config import load_train_config
from hf_e2e_sae.data.pipeline import build_datasets, create_dataloader


def main(final_dir: str) -> int:
    final = Path(final_dir)
    config = load_train_config(final / "train_config.yaml")
    where = resolve_base_model(config.base_model.name_or_path)  # a name the run's files give: never its own code
    tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=False)
    _, eval_ds = build_datasets(config.data, tokenizer, config.total_samples, config.seed)
    loader = create_dataloader(eval_ds, config.eval_batch_size or config.batch_size)
    model = SAEPatchedModel.from_pretrained(final).eval()
    metrics = evaluate(model, loader)
    saved = json.loads((final / "eval_metrics.json").read_text())
    worst = max(abs(metrics[k] - saved[k]) for k in saved)
    for key in saved:
        print(f"{key:<45} saved {saved[key]:<12.6g} reloaded {metrics[key]:.6g}")
    ids = next(iter(loader))["input_ids"]
    with torch.no_grad():
        a = model(ids).sae_outputs
        b = SAEPatchedModel.from_pretrained(final).eval()(ids).sae_outputs
    identical = all(torch.equal(a[s].latents, b[s].latents) for s in a)
    print(f"largest metric difference {worst:.3g}; two loads give identical latents: {identical}")
    return 0 if worst < 1e-5 and identical else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
