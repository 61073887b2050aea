"""E2E fine-tuning of local SAEs (Karvonen 2025) on the embedded tiny Shakespeare GPT-2.

    python examples/finetune_experiment.py            # resumable: finished runs are skipped

For each sparsity coefficient lambda: a local (MSE) SAE trained as examples/configs/tiny-e2e.yaml says
(2,048 samples x 256 tokens at blocks.2.resid_pre), then `loss.preset=finetune` from its final weights with
the same lambda for ~5% and ~10% of its training samples; plus one full e2e run (lambda 1, whose L0 is close to
the local lambda-4 SAE's) timed in the same session as the compute baseline. Every run is evaluated on the
128 held-out chunks. Writes docs/results/finetune/results.csv and results.md (with the CE-loss-increase reduction against the
SAE it started from, and against local SAEs at the same L0: the local curve of docs/results/sweep.csv, whose
runs are these local runs' configs, interpolated in log L0).
"""
import csv
import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "outputs" / "finetune"
RESULTS = REPO / "docs" / "results" / "finetune"
BASE = ["examples/configs/tiny-e2e.yaml", "eval_every_samples=null"]
LAMBDAS = [2, 4, 8]
LOCAL_SAMPLES = 2048
FINETUNE_SAMPLES = [96, 208]  # 4.7% and 10.2% of the local run (whole optimizer steps of 16 samples)
FINETUNE = ["loss.preset=finetune", "lr=1e-3", "warmup_samples=32"]


def run(name: str, overrides: list) -> dict:
    """Train one run (unless its final/ exists) and return its metrics and summary."""
    final = RUNS / name / "final"
    if not (final / "eval_metrics.json").exists():
        command = [sys.executable, "-m", "hf_e2e_sae.cli", "train", *BASE, *overrides, f"output_dir={RUNS / name}"]
        with open(RUNS / f"{name}.log", "w") as log:
            subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)
    metrics = json.loads((final / "eval_metrics.json").read_text())
    summary = json.loads((final / "train_summary.json").read_text())
    return {"run": name, "l0": metrics["l0/blocks.2.resid_pre"], "ce_loss_increase": metrics["ce_loss_increase"],
            "kl": metrics["kl"], "explained_variance": metrics["explained_variance/blocks.2.resid_pre"],
            "alive": metrics.get("alive/blocks.2.resid_pre"), "train_samples": summary["train_samples"],
            "seconds": summary["seconds"]}


def main() -> None:
    RUNS.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = []
    e2e = run("e2e-l1", ["loss.preset=e2e", "loss.sparsity.coeff=1"])
    for lam in LAMBDAS:
        local = run(f"local-l{lam}", ["loss.preset=local", f"loss.sparsity.coeff={lam}"])
        rows.append({**local, "type": "local", "lambda": lam, "start": ""})
        for samples in FINETUNE_SAMPLES:
            tuned = run(f"finetune-l{lam}-s{samples}", [*FINETUNE, f"loss.sparsity.coeff={lam}", f"n_samples={samples}",
                                                         f"init_from={RUNS / f'local-l{lam}' / 'final'}"])
            rows.append({**tuned, "type": "finetune", "lambda": lam, "start": f"local-l{lam}"})
    rows.append({**e2e, "type": "e2e", "lambda": 1, "start": ""})
    fields = ["type", "lambda", "run", "start", "train_samples", "seconds", "l0", "alive", "ce_loss_increase", "kl",
              "explained_variance"]
    with open(RESULTS / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: row[k] for k in fields} for row in rows)
    write_table(rows, e2e)


def local_curve() -> tuple:
    """(log L0, CE loss increase) of the local sweep (docs/results/sweep.csv: the same config, lambda 1..16)."""
    with open(REPO / "docs" / "results" / "sweep.csv") as f:
        points = sorted((float(r["l0"]), float(r["ce_loss_increase"])) for r in csv.DictReader(f) if r["type"] == "local")
    return [math.log(l0) for l0, _ in points], [ce for _, ce in points]


def local_at(l0: float, curve: tuple) -> float:
    """Local SAEs' CE loss increase at this L0, linear in log L0 between the two nearest sweep runs."""
    xs, ys = curve
    x = math.log(l0)
    i = max(1, min(len(xs) - 1, next((j for j, v in enumerate(xs) if v >= x), len(xs) - 1)))
    return ys[i - 1] + (ys[i] - ys[i - 1]) * (x - xs[i - 1]) / (xs[i] - xs[i - 1])


def write_table(rows: list, e2e: dict) -> None:
    local = {row["lambda"]: row for row in rows if row["type"] == "local"}
    curve = local_curve()
    lines = ["| run | lambda | train samples | seconds | L0 | alive | CE loss increase | KL | explained variance "
             "| CE-increase reduction vs its local SAE | vs local SAEs at the same L0 | seconds / full e2e's |",
             "|---" * 12 + "|"]
    for row in rows:
        base = local.get(row["lambda"]) if row["type"] == "finetune" else None
        reduction = f"{1 - row['ce_loss_increase'] / base['ce_loss_increase']:.0%}" if base else ""
        same_l0 = f"{1 - row['ce_loss_increase'] / local_at(row['l0'], curve):.0%}" if row["type"] != "local" else ""
        lines.append(f"| {row['run']} | {row['lambda']} | {row['train_samples']} | {row['seconds']:.0f} | {row['l0']:.1f} "
                     f"| {row['alive']} | {row['ce_loss_increase']:.4f} | {row['kl']:.4f} | "
                     f"{row['explained_variance']:.3f} | {reduction} | {same_l0} | {row['seconds'] / e2e['seconds']:.2f} |")
    (RESULTS / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
