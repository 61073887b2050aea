"""Sparsity sweep: local vs e2e vs e2e+ds SAEs at one site, evaluated on held-out text.

    python examples/sweep.py                                   # examples/configs/sweep-tiny.yaml
    python examples/sweep.py my-sweep.yaml --parallel 12       # train 12 runs at once (subprocesses; a GPU)
    python examples/sweep.py --only e2e                        # train one type's runs; a final plain run collects

The sweep file names a base training config, the run types with their sparsity coefficients, the seeds, optional
variants (named lists of extra overrides, e.g. another learning rate) and where to write. All coefficients of one
type, seed and variant train together as one in-process sweep (`sweep: {loss.sparsity.coeff: [...]}`, see
docs/guides/sweeps.md: one data stream, one clean pass per batch, each SAE exactly as its own run would train it),
into `<runs_dir>/<type>-s<seed>[-<variant>]/variants/coeff-<lambda>/final`; a finished group is skipped when the
sweep is started again (resumable). A run's `minutes` is its group's wall time divided by the group's size.
Writes to `results_dir`:
  sweep.csv                     one row per run (type, lambda, seed, variant, L0, alive, CE loss increase, ...)
  sweep.md                      per type and lambda: the mean over seeds with the min-max spread
  ce_vs_l0.png, ce_vs_alive.png one curve per type (seed means, min-max bars)
  reading.md, reading.json      CE loss increase of e2e / e2e+ds relative to local at equal L0 (interpolated on
                                the seed means), and each seed's own ratio
"""
import argparse
import csv
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from tqdm.auto import tqdm

from hf_e2e_sae.training.config import load_train_config
from hf_e2e_sae.training.sweep import train_sweep

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SWEEP = REPO / "examples" / "configs" / "sweep-tiny.yaml"
COLUMNS = ["type", "lambda", "seed", "variant", "l0", "alive", "ce_loss_increase", "kl", "explained_variance",
           "downstream_mse", "minutes"]


def jobs_of(sweep: dict) -> list:
    """Every run of a sweep: (type, lambda, seed, variant) for each variant x type x lambda x seed."""
    variants = sweep.get("variants") or {"base": []}
    return [(kind, float(lam), int(seed), variant) for variant in variants for kind, lams in sweep["lambdas"].items()
            for lam in lams for seed in sweep.get("seeds", [0])]


def groups_of(sweep: dict) -> list:
    """The in-process sweeps: one (type, seed, variant) each, over all of the type's lambdas."""
    return list(dict.fromkeys((kind, seed, variant) for kind, _, seed, variant in jobs_of(sweep)))


def group_dir(sweep: dict, kind: str, seed: int, variant: str) -> Path:
    return REPO / sweep["runs_dir"] / (f"{kind}-s{seed}" + ("" if variant == "base" else f"-{variant}"))


def run_dir(sweep: dict, kind: str, lam: float, seed: int, variant: str) -> Path:
    return group_dir(sweep, kind, seed, variant) / "variants" / f"coeff-{lam:g}"


def train_group(sweep: dict, kind: str, seed: int = 0, variant: str = "base") -> None:
    """Train the type's lambdas as one sweep (unless every one of them has finished)."""
    lams = [float(lam) for lam in sweep["lambdas"][kind]]
    if all((run_dir(sweep, kind, lam, seed, variant) / "final" / "eval_metrics.json").exists() for lam in lams):
        return
    out_dir = group_dir(sweep, kind, seed, variant)
    overrides = [f"loss.preset={kind}", f"sweep.loss.sparsity.coeff={','.join(map(str, lams))}", f"seed={seed}",
                 f"output_dir={out_dir}", "overwrite_output_dir=true"]
    overrides += sweep.get("overrides", {}).get("all", []) + sweep.get("overrides", {}).get(kind, [])
    overrides += (sweep.get("variants") or {}).get(variant, [])
    config = load_train_config(REPO / sweep["train_config"], overrides)
    start = time.time()
    train_sweep(config)
    for lam in lams:
        (run_dir(sweep, kind, lam, seed, variant) / "final" / "minutes.txt").write_text(
            f"{(time.time() - start) / 60 / len(lams):.2f}\n")


def run_one(sweep: dict, kind: str, lam: float, seed: int = 0, variant: str = "base") -> dict:
    """Train (unless already finished) the run's group and return the run's table row."""
    train_group(sweep, kind, seed, variant)
    out_dir = run_dir(sweep, kind, lam, seed, variant)
    m = json.loads((out_dir / "final" / "eval_metrics.json").read_text())
    site = sweep["site"] if variant == "base" else (sweep.get("variant_sites") or {}).get(variant, sweep["site"])
    downstream = [v for k, v in m.items() if k.startswith("downstream_mse/")]
    return {
        "type": kind, "lambda": lam, "seed": seed, "variant": variant, "l0": m[f"l0/{site}"],
        "alive": m[f"alive/{site}"], "ce_loss_increase": m["ce_loss_increase"], "kl": m["kl"],
        "explained_variance": m[f"explained_variance/{site}"],
        "downstream_mse": float(np.mean(downstream)) if downstream else float("nan"),
        "minutes": float((out_dir / "final" / "minutes.txt").read_text()),
    }


def train_in_parallel(sweep_file: str, sweep: dict, parallel: int) -> None:
    """Train the unfinished groups as `parallel` subprocesses at a time (each `sweep.py --group ...`)."""
    todo = [g for g in groups_of(sweep)
            if not all((run_dir(sweep, g[0], float(lam), g[1], g[2]) / "final" / "eval_metrics.json").exists()
                       for lam in sweep["lambdas"][g[0]])]
    running = []
    bar = tqdm(total=len(todo), desc="sweep groups")
    while todo or running:
        while todo and len(running) < parallel:
            kind, seed, variant = todo.pop(0)
            cmd = [sys.executable, __file__, sweep_file, "--group", kind, str(seed), variant]
            log = group_dir(sweep, kind, seed, variant).with_suffix(".log")
            log.parent.mkdir(parents=True, exist_ok=True)
            running.append(subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT))
        for proc in [p for p in running if p.poll() is not None]:
            running.remove(proc)
            bar.update(1)
        time.sleep(1)
    bar.close()


def mean_rows(rows: list) -> list:
    """Per (type, lambda, variant): the mean over seeds of each measured column, and its min-max spread."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["type"], r["lambda"], r["variant"]), []).append(r)
    out = []
    for (kind, lam, variant), rs in groups.items():
        row = {"type": kind, "lambda": lam, "variant": variant, "seeds": len(rs)}
        for key in ("l0", "alive", "ce_loss_increase", "kl", "explained_variance", "downstream_mse"):
            values = [r[key] for r in rs]
            row[key], row[f"{key}_min"], row[f"{key}_max"] = float(np.mean(values)), min(values), max(values)
        out.append(row)
    return out


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
    seeds = max(len({r["seed"] for r in rows}), 1)
    lines = [f"Mean over {seeds} seed(s) (min-max in brackets):", "",
             "| type | variant | lambda | L0 | alive | CE loss increase | KL | explained variance | downstream MSE |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in mean_rows(rows):
        def cell(key, fmt):
            spread = f" [{format(r[key + '_min'], fmt)}-{format(r[key + '_max'], fmt)}]" if r["seeds"] > 1 else ""
            return format(r[key], fmt) + spread
        lines.append(f"| {r['type']} | {r['variant']} | {r['lambda']:g} | {cell('l0', '.1f')} | {cell('alive', '.0f')} | "
                     f"{cell('ce_loss_increase', '.4f')} | {cell('kl', '.4f')} | {cell('explained_variance', '.3f')} | "
                     f"{cell('downstream_mse', '.4g')} |")
    (results / "sweep.md").write_text("\n".join(lines) + "\n")


def plot(rows: list, results: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = [r for r in mean_rows(rows) if r["variant"] == "base"]
    for x_key, name, label in [("l0", "ce_vs_l0.png", "L0 (active features per token)"),
                               ("alive", "ce_vs_alive.png", "alive dictionary elements")]:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for kind in dict.fromkeys(r["type"] for r in means):
            pts = sorted((r for r in means if r["type"] == kind), key=lambda r: r[x_key])
            ys = np.array([r["ce_loss_increase"] for r in pts])
            err = np.array([[y - r["ce_loss_increase_min"], r["ce_loss_increase_max"] - y] for y, r in zip(ys, pts)]).T
            ax.errorbar([r[x_key] for r in pts], ys, yerr=err, marker="o", capsize=3, label=kind)
        ax.set_xlabel(label)
        ax.set_yscale("log")  # the increase spans two orders of magnitude over a sweep
        ax.set_ylabel("CE loss increase (nats/token, log scale)")
        ax.set_title(f"{x_key.upper() if x_key == 'l0' else 'Alive'} vs CE loss increase (held-out; seed min-max)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(results / name, dpi=120)
        plt.close(fig)


def sweep_reading(rows: list, kinds: list) -> dict:
    """Per type: the ratio to local at equal L0 on the seed means, and the range of the per-seed ratios."""
    base = [r for r in rows if r["variant"] == "base"]
    reading = {}
    for kind in kinds:
        reading[kind] = interpolate_ratio(mean_rows(base), kind)
        per_seed = [interpolate_ratio([r for r in base if r["seed"] == s], kind)["mean_ratio"]
                    for s in sorted({r["seed"] for r in base})]
        reading[kind]["per_seed_mean_ratio"] = per_seed
    return reading


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_file", nargs="?", default=str(DEFAULT_SWEEP), help="sweep YAML")
    parser.add_argument("--only", help="train only this type's runs; write no results")
    parser.add_argument("--parallel", type=int, default=1, help="train this many sweeps at once (subprocesses)")
    parser.add_argument("--group", nargs=3, metavar=("TYPE", "SEED", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sweep = yaml.safe_load(Path(args.sweep_file).read_text())
    results = REPO / sweep["results_dir"]
    jobs = jobs_of(sweep)
    if args.group:  # one type's sweep, in this process (what --parallel starts)
        kind, seed, variant = args.group
        train_group(sweep, kind, int(seed), variant)
        return
    if args.only:
        for group in tqdm([g for g in groups_of(sweep) if g[0] == args.only], desc=f"sweep {args.only}"):
            train_group(sweep, *group)
        return
    start = time.time()
    if args.parallel > 1:
        train_in_parallel(args.sweep_file, sweep, args.parallel)
    results.mkdir(parents=True, exist_ok=True)
    rows = []
    for job in tqdm(jobs, desc="sweep"):
        rows.append(run_one(sweep, *job))
        write_table(rows, results)  # partial results survive an interruption
    plot(rows, results)
    reading = sweep_reading(rows, [kind for kind in sweep["lambdas"] if kind != "local"])
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
        per_seed = [x for x in r.get("per_seed_mean_ratio", []) if x is not None]
        if len(per_seed) > 1:
            lines.append(f"  Per seed: {', '.join(f'{x:.0%}' for x in per_seed)}.")
    return "\n".join(lines) + "\n"

if __name__ == "__main__":
    main()
