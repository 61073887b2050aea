"""Markdown tables for docs/results/geometry/README.md from the geometry outputs of one or more budgets.

    python examples/geometry_summary.py steps64=outputs/geo steps128=outputs/geo2048
"""
import json
import sys
from pathlib import Path

RESULTS = Path("docs/results/geometry")
TYPES = [("local", "local"), ("e2e", "e2e"), ("e2e+ds", "e2epds")]


def runs_table(budgets: dict) -> str:
    lines = ["| budget | type | seed | L0 | alive | CE loss increase | mean cos to own init |", "|---|---|---|---|---|---|---|"]
    for budget, folder in budgets.items():
        drift = json.loads((RESULTS / budget / "init_drift.json").read_text())["drift"]
        for kind, name in TYPES:
            for seed in (1, 2):
                run = f"{folder}/{name}-s{seed}/final"
                m = json.loads(Path(run, "eval_metrics.json").read_text())
                lines.append(f"| {budget} | {kind} | {seed} | {m['l0/blocks.2.resid_pre']:.1f} | "
                             f"{m['alive/blocks.2.resid_pre']} | {m['ce_loss_increase']:.4f} | "
                             f"{drift[run]['mean_cos_to_init']:.3f} |")
    return "\n".join(lines)


def results_table(budgets: dict) -> str:
    rows = [("within", f"{k} (seed {s})", f"within {k} s{s}") for k, _ in TYPES for s in (1, 2)]
    rows += [("cross_seed", k, f"cross-seed {k}") for k, _ in TYPES]
    rows += [("cross_type", f"{a} -> {b}{o}", f"{a} -> {b}{o}") for a, _ in TYPES for b, _ in TYPES if a != b
             for o in ("", " (other seed)")]
    header = "| comparison | " + " | ".join(budgets) + " |"
    lines = [header, "|---|" + "---|" * len(budgets)]
    data = {b: json.loads((RESULTS / b / "geometry.json").read_text()) for b in budgets}
    drift = {b: json.loads((RESULTS / b / "init_drift.json").read_text()) for b in budgets}
    for family, key, label in rows:
        lines.append(f"| {label} | " + " | ".join(f"{data[b][family][key]['mean']:.3f}" for b in budgets) + " |")
    lines.append("| init: within (seed 1 / seed 2) | " + " | ".join(
        "/".join(f"{v['mean']:.3f}" for v in drift[b]["init_within"].values()) for b in budgets) + " |")
    lines.append("| init: cross-seed | " + " | ".join(
        f"{next(iter(drift[b]['init_cross_seed'].values()))['mean']:.3f}" for b in budgets) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    budgets = dict(arg.split("=", 1) for arg in sys.argv[1:])
    print(runs_table(budgets) + "\n\n" + results_table(budgets))
