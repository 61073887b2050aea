"""The end of a sweep: one table row per variant and the Pareto plot, written to the sweep's output_dir.

    sweep.csv    variant, the swept values, L0, alive latents, CE loss increase, KL, explained variance, MSE
    sweep.md     the same as a Markdown table, and which variants are on the Pareto front
    pareto.png   CE loss increase against L0, the front joined (when matplotlib is installed)
"""
from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

METRICS = ["l0", "alive", "ce_loss_increase", "kl", "explained_variance", "mse"]


def _mean(metrics: dict, prefix: str) -> float:
    values = [v for k, v in metrics.items() if k.startswith(prefix + "/") and isinstance(v, (int, float))]
    return sum(values) / len(values) if values else float("nan")


def _get(config, field: str) -> Any:
    value = config
    for part in field.split("."):
        value = getattr(value, part)
    return value


def sweep_rows(sweep: dict, variants: list, metrics: dict) -> list:
    """One dict per variant: name, the swept fields' values, the headline metrics (per-site ones averaged)."""
    rows = []
    for name, config in variants:
        m = metrics.get(name, {})
        row = {"variant": name, **{field: _get(config, field) for field in sweep}}
        row.update({"l0": _mean(m, "l0"), "alive": _mean(m, "alive"), "ce_loss_increase": m.get("ce_loss_increase"),
                    "kl": m.get("kl"), "explained_variance": _mean(m, "explained_variance"), "mse": _mean(m, "mse")})
        rows.append(row)
    return rows


def pareto_front(rows: list, x: str = "l0", y: str = "ce_loss_increase") -> list:
    """Names of the rows no other row beats in both `x` and `y` (lower is better), by increasing `x`."""
    usable = [r for r in rows if all(isinstance(r[k], (int, float)) and math.isfinite(r[k]) for k in (x, y))]
    front, best = [], math.inf
    for row in sorted(usable, key=lambda r: (r[x], r[y])):
        if row[y] < best:
            front.append(row["variant"])
            best = row[y]
    return front


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_sweep_report(config, variants: list, metrics: dict) -> Path:
    """Write sweep.csv, sweep.md and (with matplotlib) pareto.png to `config.output_dir`; returns sweep.csv."""
    out = Path(config.output_dir)
    rows = sweep_rows(config.sweep, variants, metrics)
    front = pareto_front(rows)
    columns = list(rows[0])
    with open(out / "sweep.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns + ["pareto"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "pareto": row["variant"] in front})
    lines = ["| " + " | ".join(columns + ["Pareto"]) + " |", "|" + "---|" * (len(columns) + 1)]
    lines += ["| " + " | ".join(_fmt(row[c]) for c in columns) + f" | {'yes' if row['variant'] in front else ''} |"
              for row in rows]
    (out / "sweep.md").write_text(f"# Sweep of {len(rows)} variants ({', '.join(config.sweep)})\n\n"
                                  + "\n".join(lines) + "\n")
    _plot(rows, front, out / "pareto.png")
    return out / "sweep.csv"


def _plot(rows: list, front: list, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed: no %s (pip install matplotlib)", path.name)
        return
    usable = [r for r in rows if isinstance(r["ce_loss_increase"], (int, float))]
    if not usable:
        return
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter([r["l0"] for r in usable], [r["ce_loss_increase"] for r in usable])
    for r in usable:
        ax.annotate(r["variant"], (r["l0"], r["ce_loss_increase"]), fontsize=6)
    on_front = [r for r in sorted(usable, key=lambda r: r["l0"]) if r["variant"] in front]
    ax.plot([r["l0"] for r in on_front], [r["ce_loss_increase"] for r in on_front], "--", label="Pareto front")
    ax.set_xlabel("L0 (latents per token)")
    ax.set_ylabel("CE loss increase (nats)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
