"""Matryoshka BatchTopK on the embedded tiny Shakespeare GPT-2: local vs e2e, two seeds, each prefix evaluated.

    python examples/matryoshka_results.py [--n-samples 512] [--out docs/results/architectures/matryoshka]

Every run is examples/configs/tiny-e2e.yaml (1,024 latents at blocks.2.resid_pre) with activation
matryoshka_batchtopk, k 16, prefixes [64, 256] (weights 1), no sparsity penalty, n_samples reduced (the CPU is
shared). After training, the held-out metrics (128 chunks x 256 tokens of plays neither model saw) are computed for
the whole dictionary and for each prefix alone (encoder biases past the prefix at -1e4: the SAE reconstructs from
its first m latents: the others never fire). Writes results.csv / results.md; runs land in outputs/matryoshka-results/<preset>-seed<s>-n<n_samples>.
"""
import argparse
import copy
import csv
import json
import time
from pathlib import Path

import torch

from hf_e2e_sae import SAEPatchedModel
from hf_e2e_sae.data.pipeline import build_datasets, create_dataloader
from hf_e2e_sae.evaluation import evaluate
from hf_e2e_sae.training.config import load_train_config
from hf_e2e_sae.training.trainer import build_patched_model, train

REPO = Path(__file__).resolve().parents[1]
SITE = "blocks.2.resid_pre"
PREFIXES = [64, 256]
COLUMNS = ["preset", "seed", "latents", "l0", "ce_loss_increase", "kl", "explained_variance", "minutes"]


def overrides(preset: str, seed: int, n_samples: int, out: Path) -> list:
    return ["activation=matryoshka_batchtopk", "k=16", f"matryoshka_prefixes={PREFIXES}", f"loss.preset={preset}",
            "loss.sparsity.coeff=0", f"n_samples={n_samples}", f"warmup_samples={min(128, n_samples // 8)}",
            "eval_every_samples=null", f"seed={seed}",
            f"output_dir={out}"]


def cut(model: SAEPatchedModel, size: int, base) -> SAEPatchedModel:
    """The SAE with only its first `size` latents able to fire (at inference BatchTopK has no competition between
    latents: those latents and the prefix's reconstruction are unchanged), patched into a fresh `base`."""
    sae = copy.deepcopy(model.sae(SITE))
    with torch.no_grad():
        sae.encoder.bias[size:] = -1.0e4
    return SAEPatchedModel(base, {SITE: sae})


def evaluate_prefixes(config, final: Path) -> list:
    def fresh_base():
        patched, tokenizer = build_patched_model(config)
        return patched.unpatch(), tokenizer

    base, tokenizer = fresh_base()
    model = SAEPatchedModel.from_pretrained(final, base_model=base).eval()
    _, eval_ds = build_datasets(config.data, tokenizer, config.total_samples, config.seed)
    loader = create_dataloader(eval_ds, config.eval_batch_size or config.batch_size)
    rows = []
    for size in [*PREFIXES, None]:
        variant = model if size is None else cut(model, size, fresh_base()[0]).eval()
        m = evaluate(variant, loader)
        rows.append({"latents": size or model.sae(SITE).config.dict_size, "l0": m[f"l0/{SITE}"],
                     "ce_loss_increase": m["ce_loss_increase"], "kl": m["kl"],
                     "explained_variance": m[f"explained_variance/{SITE}"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-samples", type=int, default=512)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--presets", nargs="+", default=["local", "e2e"])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "architectures" / "matryoshka")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for seed in args.seeds:  # seed-major: both presets of a seed before the next seed
        for preset in args.presets:
            run_dir = REPO / "outputs" / "matryoshka-results" / f"{preset}-seed{seed}-n{args.n_samples}"
            config = load_train_config(REPO / "examples" / "configs" / "tiny-e2e.yaml",
                                       overrides(preset, seed, args.n_samples, run_dir))
            minutes_file = run_dir / "final" / "minutes.txt"
            if not minutes_file.exists():
                start = time.time()
                train(config)
                minutes_file.write_text(f"{(time.time() - start) / 60:.2f}\n")
            for row in evaluate_prefixes(config, run_dir / "final"):
                rows.append({"preset": preset, "seed": seed, **row, "minutes": float(minutes_file.read_text())})
            print(json.dumps(rows[-3:]), flush=True)
            write(rows, args.out)  # after every run: a partial table survives an interrupted sweep


def write(rows: list, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| preset | seed | latents used | L0 | CE loss increase | KL | explained variance | train minutes |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['preset']} | {r['seed']} | {r['latents']} | {r['l0']:.1f} | {r['ce_loss_increase']:.4f} | "
              f"{r['kl']:.4f} | {r['explained_variance']:.3f} | {r['minutes']:.1f} |" for r in rows]
    (out / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
