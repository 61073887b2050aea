"""Architecture sweep: series of runs that each vary one config key (TopK's k, JumpReLU's coefficient, ...).

    python examples/sweep_architectures.py                          # examples/configs/sweep-architectures.yaml
    python examples/sweep_architectures.py --only topk-local        # train one series (e.g. in a parallel process)
    python examples/sweep_architectures.py --finished               # results from the runs finished so far

Each run is the sweep's `train_config` plus the sweep-wide overrides, the series' overrides and `<vary>=<value>`;
its output lands in `<runs_dir>/<series>-<value>/final` and a finished run is skipped when started again. A
plain run (no --only) writes to `results_dir`: sweep.csv, sweep.md (one row per run), ce_vs_l0.png (one curve
per series) and reading.md / reading.json (CE loss increase of series a relative to b at equal L0 for each
listed comparison, interpolated in log L0 over the L0 range both cover).
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

from hf_e2e_sae.training.config import load_train_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep import interpolate_ratio  # noqa: E402  (examples/sweep.py: the same reading at equal L0)
from hf_e2e_sae.training.trainer import train

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SWEEP = REPO / "examples" / "configs" / "sweep-architectures.yaml"
COLUMNS = ["series", "vary", "value", "l0", "alive", "ce_loss_increase", "kl", "explained_variance", "minutes"]


def run_one(sweep: dict, series: str, value, out_dir: Path) -> dict:
    """Train (unless already finished) and return the run's table row."""
    spec = sweep["series"][series]
    metrics_file = out_dir / "final" / "eval_metrics.json"
    if not metrics_file.exists():
        overrides = [*sweep.get("overrides", []), *spec.get("overrides", []), f"{spec['vary']}={value}",
                     f"output_dir={out_dir}"]
        config = load_train_config(REPO / sweep["train_config"], overrides)
        start = time.time()
        train(config)
        (out_dir / "final" / "minutes.txt").write_text(f"{(time.time() - start) / 60:.2f}\n")
    m = json.loads(metrics_file.read_text())
    site = sweep["site"]
    return {"series": series, "vary": spec["vary"], "value": value, "l0": m[f"l0/{site}"], "alive": m[f"alive/{site}"],
            "ce_loss_increase": m["ce_loss_increase"], "kl": m["kl"],
            "explained_variance": m[f"explained_variance/{site}"],
            "minutes": float((out_dir / "final" / "minutes.txt").read_text())}


def ratio_at_equal_l0(rows: list, a: str, b: str, n_points: int = 5) -> dict:
    """CE loss increase of series `a` / series `b` at equal L0, interpolated in log L0 on the common range."""
    return interpolate_ratio(rows, a, n_points, reference=b, key="series")


def write_table(rows: list, results: Path) -> None:
    with open(results / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| series | varied | L0 | alive | CE loss increase | KL | explained variance | minutes |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['series']} | {r['vary']}={r['value']:g} | {r['l0']:.1f} | {r['alive']} | "
                     f"{r['ce_loss_increase']:.4f} | {r['kl']:.4f} | {r['explained_variance']:.3f} | {r['minutes']:.1f} |")
    (results / "sweep.md").write_text("\n".join(lines) + "\n")


def plot(rows: list, results: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for series in dict.fromkeys(r["series"] for r in rows):
        pts = sorted((r["l0"], r["ce_loss_increase"], r["value"]) for r in rows if r["series"] == series)
        style = "-" if "local" in series else ("-." if "e2e+ds" in series else "--")  # by objective
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", linestyle=style, label=series)
        for l0, ce, value in pts:
            ax.annotate(f"{value:g}", (l0, ce), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("L0 (active latents per token, held-out)")
    ax.set_ylabel("CE loss increase (nats/token)")
    ax.set_title("CE loss increase vs L0 by architecture and objective")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(results / "ce_vs_l0.png", dpi=120)
    plt.close(fig)


def reading_text(reading: dict) -> str:
    lines = ["CE loss increase of one series relative to another at equal L0 (linear interpolation in log L0",
             "over the L0 range both cover):", ""]
    for name, r in reading.items():
        if r["mean_ratio"] is None:
            lines.append(f"- {name}: no common L0 range; no comparison possible.")
            continue
        points = ", ".join(f"{ratio:.0%} at L0 {l0:g}" for l0, ratio in zip(r["l0_points"], r["ratios"]))
        lines.append(f"- {name}: {r['mean_ratio']:.0%} on average over L0 {r['common_l0'][0]:.1f}-"
                     f"{r['common_l0'][1]:.1f} ({points}).")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_file", nargs="?", default=str(DEFAULT_SWEEP), help="sweep YAML")
    parser.add_argument("--only", help="train only this series' runs; write no results")
    parser.add_argument("--finished", action="store_true", help="tabulate the finished runs only; train nothing")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sweep = yaml.safe_load(Path(args.sweep_file).read_text())
    runs_dir, results = REPO / sweep["runs_dir"], REPO / sweep["results_dir"]
    jobs = [(series, value) for series, spec in sweep["series"].items() for value in spec["values"]
            if args.only in (None, series)]
    if args.only:
        for series, value in jobs:
            run_one(sweep, series, value, runs_dir / f"{series}-{value:g}")
        return
    results.mkdir(parents=True, exist_ok=True)
    rows = []
    for series, value in jobs:
        out_dir = runs_dir / f"{series}-{value:g}"
        if args.finished and not (out_dir / "final" / "minutes.txt").exists():
            continue
        rows.append(run_one(sweep, series, value, out_dir))
        write_table(rows, results)  # partial results survive an interruption
    plot(rows, results)
    reading = {f"{a} vs {b}": ratio_at_equal_l0(rows, a, b) for a, b in sweep.get("comparisons", [])}
    reading["_timing"] = {"runs": len(rows), "training_minutes_summed": round(sum(r["minutes"] for r in rows), 1)}
    (results / "reading.json").write_text(json.dumps(reading, indent=2) + "\n")
    (results / "reading.md").write_text(reading_text({k: v for k, v in reading.items() if not k.startswith("_")}))
    sys.stdout.write((results / "sweep.md").read_text() + "\n" + (results / "reading.md").read_text())


if __name__ == "__main__":
    main()
