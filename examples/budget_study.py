"""Budget study: do e2e SAEs catch up with local ones when trained longer?

Local and e2e SAEs at blocks.2.resid_pre of the tiny Shakespeare GPT-2 (the demo config), two sparsity
coefficients each (near L0 20 and 50 at the demo's budget), trained at 1x, 4x and 16x the demo's 2,048 samples x
256 tokens, with the optimiser recipe scaled to the run (warmup 6.25% of the samples, cosine to 10%). 16x is 5.7
passes over the training plays (`data.max_epochs`). The coefficients of one type and budget train together as one
sweep (`sweep.loss.sparsity.coeff`, docs/guides/sweeps.md: one data stream and one clean pass per batch, each SAE
as its own run would train it), a `hf-e2e-sae train` subprocess; several run at once (a GPU holds them all). A
row's `seconds` is its sweep's wall time divided by the number of coefficients.

    python examples/budget_study.py run --out docs/results/budget --parallel 6      # train, write budget.json
    python examples/budget_study.py report --out docs/results/budget               # table, plots, ratios
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "examples" / "configs" / "tiny-e2e.yaml"
SITE = "blocks.2.resid_pre"
COEFFS = {"local": [2.0, 6.0], "e2e": [0.5, 2.0]}
BASE_SAMPLES = 2048  # the demo's run; warmup is 1/16 of the samples, as in the demo (128 of 2,048)


def _overrides(kind: str, budget: int, out: Path, base: int) -> list:
    return [f"loss.preset={kind}", f"sweep.loss.sparsity.coeff={','.join(map(str, COEFFS[kind]))}",
            f"n_samples={base * budget}",
            f"warmup_samples={base * budget // 16}", "data.max_epochs=8", "eval_every_samples=null",
            "log_every_steps=64", f"output_dir={out}", "overwrite_output_dir=true"]


def run(out: Path, runs_dir: Path, budgets: list, parallel: int, base: int = BASE_SAMPLES) -> None:
    jobs = [(kind, budget) for budget in budgets for kind in COEFFS]
    jobs.sort(key=lambda job: -job[1])  # longest first, so the last wave is short
    running, rows, start = [], [], time.time()
    while jobs or running:
        while jobs and len(running) < parallel:
            kind, budget = jobs.pop(0)
            run_dir = runs_dir / f"{kind}-x{budget}"
            cmd = [sys.executable, "-m", "hf_e2e_sae.cli", "train", str(CONFIG),
                   *_overrides(kind, budget, run_dir, base)]
            log = open(runs_dir / f"{run_dir.name}.log", "w")
            env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
            proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)  # this checkout's hf_e2e_sae
            running.append(((kind, budget, run_dir), proc, log))
        for item in list(running):
            (kind, budget, run_dir), proc, log = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            if proc.returncode != 0:
                print(f"{run_dir.name}: exit {proc.returncode}", flush=True)
                continue
            rows += [_row(kind, lam, budget, run_dir) for lam in COEFFS[kind]]
            _write(out, rows, start)  # after every sweep: a stopped study keeps what finished
        time.sleep(1)
    _write(out, rows, start)


def _row(kind: str, lam: float, budget: int, sweep_dir: Path) -> dict:
    final = sweep_dir / "variants" / f"coeff-{lam:g}" / "final"
    m = json.loads((final / "eval_metrics.json").read_text())
    summary = json.loads((final / "train_summary.json").read_text())
    row = {"type": kind, "lambda": lam, "budget": budget, "train_tokens": summary["train_tokens"],
           "seconds": round(summary["seconds"] / len(COEFFS[kind]), 1), "l0": m[f"l0/{SITE}"],
           "alive": m[f"alive/{SITE}"], "ce_loss_increase": m["ce_loss_increase"], "kl": m["kl"],
           "explained_variance": m[f"explained_variance/{SITE}"]}
    print(f"{kind}-{lam}-x{budget}: L0 {row['l0']:.1f} CE+ {row['ce_loss_increase']:.4f} ({row['seconds']:.0f} s)",
          flush=True)
    return row


def _write(out: Path, rows: list, start: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "budget.json").write_text(json.dumps({"rows": rows, "wall_seconds": round(time.time() - start, 1)},
                                                indent=2) + "\n")


def report(out: Path) -> None:
    sys.path.insert(0, str(REPO / "examples"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sweep import interpolate_ratio

    data = json.loads((out / "budget.json").read_text())
    rows = sorted(data["rows"], key=lambda r: (r["type"], r["lambda"], r["budget"]))
    lines = ["| type | lambda | budget | train tokens | L0 | alive | CE loss increase | KL | explained variance |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['type']} | {r['lambda']:g} | {r['budget']}x | {r['train_tokens']:,} | {r['l0']:.1f} | "
              f"{r['alive']} | {r['ce_loss_increase']:.4f} | {r['kl']:.4f} | {r['explained_variance']:.3f} |"
              for r in rows]
    ratios = {}
    for budget in sorted({r["budget"] for r in rows}):
        reading = interpolate_ratio([r for r in rows if r["budget"] == budget], "e2e", n_points=5)
        ratios[budget] = reading["mean_ratio"]
    lines += ["", "e2e / local CE loss increase at equal L0 (interpolated in log L0 over the common range):", ""]
    lines += [f"- {b}x: " + (f"{v:.2f}" if v is not None else "no common L0 range") for b, v in ratios.items()]
    (out / "budget.md").write_text("\n".join(lines) + "\n")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for kind, lams in COEFFS.items():
        for lam in lams:
            pts = [r for r in rows if r["type"] == kind and r["lambda"] == lam]
            tokens = [r["train_tokens"] for r in pts]
            axes[0].plot(tokens, [r["ce_loss_increase"] for r in pts], "o-", label=f"{kind} lambda {lam:g}")
            axes[1].plot(tokens, [r["l0"] for r in pts], "o-", label=f"{kind} lambda {lam:g}")
    for ax, name in zip(axes, ["CE loss increase", "L0"]):
        ax.set_xscale("log")
        ax.set_xlabel("training tokens")
        ax.set_ylabel(name)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "budget.png", dpi=110)
    (out / "ratios.json").write_text(json.dumps(ratios, indent=2) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["run", "report"])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "budget")
    parser.add_argument("--runs-dir", type=Path, default=REPO / "outputs" / "budget")
    parser.add_argument("--budgets", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--base-samples", type=int, default=BASE_SAMPLES, help="samples of the 1x budget")
    args = parser.parse_args()
    if args.mode == "run":
        args.runs_dir.mkdir(parents=True, exist_ok=True)
        run(args.out, args.runs_dir, args.budgets, args.parallel, args.base_samples)
    else:
        report(args.out)


if __name__ == "__main__":
    main()
