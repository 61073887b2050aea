"""Local SAE training live vs. from an activation cache (`activation_cache`), timed with the real trainer.

A random GPT-2 (default 6 layers x d512, ctx 128, the tiny Shakespeare LM's 8k-token tokenizer) and a fixed
pre-tokenized training set of `--pass-samples` chunks of Shakespeare (plus held-out eval chunks). Each of `--runs`
local runs (a sweep: sparsity coefficient 1, 2, ...) trains `--epochs` passes over it, once live and once from one
shared cache, interleaved (live run r, cached run r, ...). The first cached run builds the cache; its build time is
reported on its own and in the amortised total. Reported per run: seconds inside optimizer steps, whole `train()`
call (setup, steps, final evaluation, writing final/), and the largest weight difference between the two runs.

    OMP_NUM_THREADS=1 python examples/activation_cache_benchmark.py --epochs 4 --runs 2
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def make_base_model(folder: Path, layers: int, d_model: int, ctx: int, seed: int) -> Path:
    """A seeded random GPT-2 with the builtin tiny LM's tokenizer, saved to `folder`."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from hf_e2e_sae.patching.base_models import TINY_LM_DIR

    tokenizer = AutoTokenizer.from_pretrained(TINY_LM_DIR)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=d_model, n_layer=layers, n_head=max(1, d_model // 64),
                        n_positions=ctx, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_data(folder: Path, model_dir: Path, n_rows: int, ctx: int) -> Path:
    """`n_rows` pre-tokenized chunks of `ctx` tokens of the Shakespeare training plays, saved with save_to_disk."""
    import datasets
    from transformers import AutoTokenizer

    from hf_e2e_sae.data.corpus import load_shakespeare_splits, pack_token_ids

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts, ids = list(load_shakespeare_splits()["train"]["text"]), []
    while texts and sum(len(x) + 1 for x in ids) < n_rows * ctx:  # only as much text as the rows need
        ids += tokenizer(texts[:64], add_special_tokens=False)["input_ids"]
        texts = texts[64:]
    chunks = pack_token_ids(ids, ctx, tokenizer.eos_token_id)[:n_rows]
    if len(chunks) < n_rows:
        raise SystemExit(f"the corpus holds only {len(chunks)} chunks of {ctx} tokens")
    datasets.Dataset.from_dict({"input_ids": chunks.tolist()}).save_to_disk(str(folder))
    return folder


def run_config(args, root: Path, model_dir: Path, data_dir: Path, run: int, cache: bool):
    from hf_e2e_sae.training.config import TrainConfig

    name = f"{'cached' if cache else 'live'}_{run}"
    return TrainConfig.model_validate({
        "base_model": {"name_or_path": str(model_dir)}, "sites": [f"blocks.{args.block}.resid_pre"],
        "dict_size_ratio": args.dict_ratio, "loss": {"preset": "local", "sparsity": {"coeff": 1.0 + run}},
        "data": {"path": str(data_dir), "context_length": args.ctx, "n_eval_samples": args.eval_samples,
                 "max_epochs": args.epochs},
        "n_samples": args.epochs * args.pass_samples, "batch_size": args.batch_size,
        "effective_batch_size": 2 * args.batch_size, "warmup_samples": args.pass_samples // 4, "lr": 1e-3,
        "alive_window_tokens": 64 * args.ctx * args.batch_size, "log_every_steps": 1000,
        "output_dir": str(root / name), "activation_cache": str(root / "cache") if cache else None,
    })


def timed_train(config) -> dict:
    """Train; seconds in the whole call, inside optimizer steps and building the cache."""
    from accelerate.state import AcceleratorState, GradientState

    import hf_e2e_sae.data.activation_cache as activation_cache
    import hf_e2e_sae.training.trainer as trainer

    seconds = {"steps": 0.0, "build": 0.0}
    real_step, real_build = trainer.train_step, activation_cache.build_cache

    def step(*a, **k):
        start = time.perf_counter()
        try:
            return real_step(*a, **k)
        finally:
            seconds["steps"] += time.perf_counter() - start

    def build(*a, **k):
        start = time.perf_counter()
        try:
            return real_build(*a, **k)
        finally:
            seconds["build"] += time.perf_counter() - start

    trainer.train_step, activation_cache.build_cache = step, build
    start = time.perf_counter()
    try:
        trainer.train(config)
    finally:
        seconds["total"] = time.perf_counter() - start
        trainer.train_step, activation_cache.build_cache = real_step, real_build
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    return seconds


def max_weight_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "final" / "model.safetensors")), load_file(str(b / "final" / "model.safetensors"))
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def report(args, rows: list) -> str:
    live_steps, cached_steps = sum(r["live"]["steps"] for r in rows), sum(r["cached"]["steps"] for r in rows)
    live_total, cached_total = sum(r["live"]["total"] for r in rows), sum(r["cached"]["total"] for r in rows)
    build = sum(r["cached"]["build"] for r in rows)
    tokens = args.epochs * args.pass_samples * args.ctx
    lines = [f"GPT-2 {args.layers} x d{args.d_model}, ctx {args.ctx}, SAE at blocks.{args.block}.resid_pre, dict "
             f"{args.dict_ratio}x, batch {args.batch_size} x 2; {args.runs} local run(s) x {args.epochs} epoch(s) of "
             f"{args.pass_samples} samples ({tokens} tokens per run); torch threads {torch.get_num_threads()}, "
             f"load average at start {args.load_before}",
             f"command: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} python {' '.join(sys.argv)}", "",
             "run  live steps s  cached steps s  live train() s  cached train() s  (of which cache build s)  "
             "max |w_live - w_cached|"]
    for r in rows:
        lines.append(f"{r['run']:>3}  {r['live']['steps']:>12.2f}  {r['cached']['steps']:>14.2f}  "
                     f"{r['live']['total']:>14.2f}  {r['cached']['total']:>16.2f}  {r['cached']['build']:>24.2f}  "
                     f"{r['max_weight_difference']:.2e}")
    lines += ["", f"optimizer steps, live / cached: {live_steps / cached_steps:.2f}x "
              f"({tokens * args.runs / live_steps:.0f} vs {tokens * args.runs / cached_steps:.0f} tokens/s)",
              f"cache build: {build:.2f} s (one pass over {args.pass_samples} distinct samples)",
              f"amortised, whole train() calls, live / (cached incl. build): {live_total / cached_total:.2f}x "
              f"({live_total:.1f} s vs {cached_total:.1f} s)",
              f"amortised, steps only, live / (cached + build): {live_steps / (cached_steps + build):.2f}x"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--ctx", type=int, default=128)
    parser.add_argument("--block", type=int, default=3, help="SAE at blocks.BLOCK.resid_pre")
    parser.add_argument("--dict-ratio", type=float, default=8.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--pass-samples", type=int, default=128, help="distinct training samples (one epoch)")
    parser.add_argument("--eval-samples", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--runs", type=int, default=2, help="local runs sharing the cache (a sparsity sweep)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report and JSON here")
    args = parser.parse_args()
    args.load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = make_base_model(root / "model", args.layers, args.d_model, args.ctx, seed=0)
        data_dir = make_data(root / "data", model_dir, args.pass_samples + args.eval_samples, args.ctx)
        warmup = run_config(args, root, model_dir, data_dir, run=0, cache=False)  # untimed: warm the loaders
        timed_train(warmup.model_copy(update={"n_samples": warmup.effective_batch_size,
                                              "output_dir": str(root / "warmup")}))
        rows = []
        for run in range(args.runs):
            live = timed_train(run_config(args, root, model_dir, data_dir, run, cache=False))
            cached = timed_train(run_config(args, root, model_dir, data_dir, run, cache=True))
            rows.append({"run": run, "live": live, "cached": cached,
                         "max_weight_difference": max_weight_difference(root / f"live_{run}", root / f"cached_{run}")})
    text = report(args, rows)
    print(text, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                             "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
