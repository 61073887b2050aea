"""Sparsity sweep: local vs e2e vs e2e+ds SAEs at one site, evaluated on held-out text.

    python examples/sweep.py                                   # examples/configs/sweep-tiny.yaml
    python examples/sweep.py my-sweep.yaml                     # your own sweep
    python examples/sweep.py --only e2e                        # train one type's runs (e.g. in parallel
                                                               # processes); a final plain run collects

The sweep file names a base training config, the run types with their sparsity coefficients, and
where to write. Each run's output lands in `<runs_dir>/<type>-<lambda>/final`; a finished run is
skipped when the sweep is started again (resumable). Writes to `results_dir`:
  sweep.csv, sweep.md          one row per run (type, lambda, L0, alive, CE loss increase, KL, EV, downstream MSE)
  ce_vs_l0.png, ce_vs_alive.png one curve per type
  reading.md, reading.json     CE loss increase of e2e / e2e+ds relative to local at equal L0 (interpolated)
"""
import argparse
import csv
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from tqdm.auto import tqdm

from hf_e2e_sae.training.config import load_train_config
from hf_e2e_sae.training.trainer import train

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SWEEP = REPO / "examples" / "configs" / "sweep-tiny.yaml"
COLUMNS = ["type", "lambda", "l0", "alive", "ce_loss_increase", "kl", "explained_variance", "downstream_mse", "minutes"]


def run_one(sweep: dict, kind: str, lam: float, out_dir: Path) -> dict:
    """Train (unless already finished) and return the run's table row."""
    metrics_file = out_dir / "final" / "eval_metrics.json"
    if not metrics_file.exists():
        overrides = [f"loss.preset={kind}", f"loss.sparsity.coeff={lam}", f"output_dir={out_dir}"]
        overrides += sweep.get("overrides", {}).get("all", []) + sweep.get("overrides", {}).get(kind, [])
        config = load_train_config(REPO / sweep["train_config"], overrides)
        start = time.time()
        train(config)
        (out_dir / "final" / "minutes.txt").write_text(f"{(time.time() - start) / 60:.2f}\n")
    m = json.loads(metrics_file.read_text())
    site = sweep["site"]
    downstream = [v for k, v in m.items() if k.startswith("downstream_mse/")]
    return {
        "type": kind, "lambda": lam, "l0": m[f"l0/{site}"], "alive": m[f"alive/{site}"],
        "ce_loss_increase": m["ce_loss_increase"], "kl": m["kl"],
        "explained_variance": m[f"explained_variance/{site}"],
        "downstream_mse": float(np.mean(downstream)) if downstream else float("nan"),
        "minutes": float((out_dir / "final" / "minutes.txt").read_text()),
    }


def interpolate_ratio(rows: list, kind: str, n_points: int = 5, reference: str = "local", key: str = "type") -> dict:
    """CE loss increase of `kind` / `reference` at equal L0, interpolated (in log L0) on the common L0 range;
    rows are grouped by `key` ("type" here, "series" in sweep_architectures.py)."""
    def curve(t):
        pts = sorted((r["l0"], r["ce_loss_increase"]) for r in rows if r[key] == t)
        return np.log([p[0] for p in pts]), np.array([p[1] for p in pts])
    (lx, ly), (kx, ky) = curve(reference), curve(kind)
    if len(lx) < 2 or len(kx) < 2 or max(lx.min(), kx.min()) >= min(lx.max(), kx.max()):
        return {"common_l0": None, "l0_points": [], "ratios": [], "mean_ratio": None}
    low, high = max(lx.min(), kx.min()), min(lx.max(), kx.max())
    grid = np.linspace(low, high, n_points)
    ratios = np.interp(grid, kx, ky) / np.interp(grid, lx, ly)
    return {"common_l0": [float(np.exp(low)), float(np.exp(high))], "l0_points": np.exp(grid).round(2).tolist(),
            "ratios": ratios.round(3).tolist(), "mean_ratio": float(ratios.mean())}


def write_table(rows: list, results: Path) -> None:
    with open(results / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| type | lambda | L0 | alive | CE loss increase | KL | explained variance | downstream MSE |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['type']} | {r['lambda']:g} | {r['l0']:.1f} | {r['alive']} | {r['ce_loss_increase']:.4f} "
                     f"| {r['kl']:.4f} | {r['explained_variance']:.3f} | {r['downstream_mse']:.4g} |")
    (results / "sweep.md").write_text("\n".join(lines) + "\n")


def plot(rows: list, results: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for x_key, name, label in [("l0", "ce_vs_l0.png", "L0 (active features per token)"),
                               ("alive", "ce_vs_alive.png", "alive dictionary elements")]:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for kind in dict.fromkeys(r["type"] for r in rows):
            pts = sorted((r[x_key], r["ce_loss_increase"]) for r in rows if r["type"] == kind)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=kind)
        ax.set_xlabel(label)
        ax.set_yscale("log")  # the increase spans two orders of magnitude over a sweep
        ax.set_ylabel("CE loss increase (nats/token, log scale)")
        ax.set_title(f"{x_key.upper() if x_key == 'l0' else 'Alive'} vs CE loss increase (held-out)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(results / name, dpi=120)
        plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_file", nargs="?", default=str(DEFAULT_SWEEP), help="sweep YAML")
    parser.add_argument("--only", help="train only this type's runs; write no results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sweep = yaml.safe_load(Path(args.sweep_file).read_text())
    runs_dir, results = REPO / sweep["runs_dir"], REPO / sweep["results_dir"]
    jobs = [(kind, float(lam)) for kind, lams in sweep["lambdas"].items() for lam in lams]
    if args.only:
        for kind, lam in tqdm([j for j in jobs if j[0] == args.only], desc=f"sweep {args.only}"):
            run_one(sweep, kind, lam, runs_dir / f"{kind}-{lam:g}")
        return
    results.mkdir(parents=True, exist_ok=True)
    start = time.time()
    rows = []
    for kind, lam in tqdm(jobs, desc="sweep"):
        rows.append(run_one(sweep, kind, lam, runs_dir / f"{kind}-{lam:g}"))
        write_table(rows, results)  # partial results survive an interruption
    plot(rows, results)
    reading = {kind: interpolate_ratio(rows, kind) for kind in sweep["lambdas"] if kind != "local"}
    total = sum(r["minutes"] for r in rows)
    reading["_timing"] = {"runs": len(rows), "training_minutes_summed": round(total, 1),
                          "this_invocation_minutes": round((time.time() - start) / 60, 1)}
    (results / "reading.json").write_text(json.dumps(reading, indent=2) + "\n")
    (results / "reading.md").write_text(reading_text(reading))
    print((results / "sweep.md").read_text())
    print((results / "reading.md").read_text())
    print(f"{len(rows)} runs, {total:.1f} minutes of training summed over runs; results in {results}")


def reading_text(reading: dict) -> str:
    """The measured comparison in words: CE loss increase relative to local at equal L0."""
    lines = ["CE loss increase relative to local SAEs at equal L0 (linear interpolation in log L0 over the",
             "L0 range both curves cover; the paper reports < 45% for e2e at GPT-2 small layer 6):", ""]
    for kind, r in reading.items():
        if kind.startswith("_"):
            continue
        if r["mean_ratio"] is None:
            lines.append(f"- {kind}: no common L0 range with local; no comparison possible.")
            continue
        low, high = r["common_l0"]
        points = ", ".join(f"{ratio:.0%} at L0 {l0:g}" for l0, ratio in zip(r["l0_points"], r["ratios"]))
        lines.append(f"- {kind}: {r['mean_ratio']:.0%} of local's on average over L0 {low:.1f}-{high:.1f} ({points}).")
    return "\n".join(lines) + "\n"

if __name__ == "__main__":
    main()
