"""Pretrain the stand-in base model: a GPT-2 (default 6 layers x 256, 16k BPE) on the offline code corpus.

    python examples/build_code_corpus.py --out data/code_corpus           # the corpus and its tokenizer, once
    python examples/pretrain_code_lm.py --corpus data/code_corpus --out outputs/code_lm --tokens 200_000_000
    python examples/pretrain_code_lm.py ... --resume                      # continue an interrupted run

On a GPU it takes minutes; on a CPU it is a background job: it checkpoints every --checkpoint-every steps
(safetensors: weights and Adam state, plus the step and the data order's seed; no pickle) and `--resume` continues
bit for bit. The result (`--out`) holds config.json, model.safetensors (bf16), the tokenizer and metrics.json:
held-out cross-entropy next to the uniform, unigram and bigram baselines (held-out packages only).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from hf_e2e_sae.pretraining.token_store import tokenize_to_file, unigram_bigram_cross_entropy

logger = logging.getLogger("pretrain_code_lm")


def token_file(corpus: Path, split: str, tokenizer) -> np.memmap:
    """The split's tokens (built once, beside the corpus)."""
    path = corpus / f"{split}.u16"
    if not path.exists():
        texts = (json.loads(line)["text"] for line in open(corpus / f"{split}.jsonl", encoding="utf-8"))
        logger.info("Tokenizing %s: %d tokens", split, tokenize_to_file(tokenizer, texts, path))
    return np.memmap(path, dtype=np.uint16, mode="r")


def batch_at(tokens: np.memmap, step: int, args) -> torch.Tensor:
    """Batch `step`: random windows, a pure function of (seed, step), so a resumed run reads what it would have."""
    rng = np.random.default_rng([args.seed, step])
    starts = rng.integers(0, len(tokens) - args.context, size=args.batch_size)
    return torch.from_numpy(np.stack([tokens[s:s + args.context] for s in starts]).astype(np.int64))


def lr_at(step: int, args) -> float:
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = min(1.0, (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps))
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * progress))


def build(args, vocab_size: int, eos: int):
    config = GPT2Config(vocab_size=vocab_size, n_positions=args.context, n_embd=args.n_embd, n_layer=args.n_layer,
                        n_head=args.n_head, n_inner=4 * args.n_embd, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        tie_word_embeddings=True, bos_token_id=eos, eos_token_id=eos)
    torch.manual_seed(args.seed)
    model = GPT2LMHeadModel(config)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.95))
    return model, optimizer


def save_checkpoint(folder: Path, model, optimizer, step: int) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"},
              tmp / "model.safetensors")
    state = optimizer.state_dict()
    tensors = {f"{i}.{k}": v for i, s in state["state"].items() for k, v in s.items() if torch.is_tensor(v)}
    save_file(tensors, tmp / "optimizer.safetensors")
    (tmp / "state.json").write_text(json.dumps({"step": step}))
    if folder.exists():
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    tmp.replace(folder)


def load_checkpoint(folder: Path, model, optimizer) -> int:
    model.load_state_dict(load_file(folder / "model.safetensors"), strict=False)  # lm_head is tied to wte
    tensors = load_file(folder / "optimizer.safetensors")
    state = optimizer.state_dict()
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state["state"].setdefault(int(index), {})[name] = value
    optimizer.load_state_dict(state)
    return json.loads((folder / "state.json").read_text())["step"]


@torch.no_grad()
def held_out_ce(model, tokens: np.memmap, args, n_windows: int) -> float:
    model.eval()
    starts = np.linspace(0, len(tokens) - args.context - 1, n_windows).astype(np.int64)
    losses = [model(input_ids=(b := torch.from_numpy(np.stack([tokens[s:s + args.context] for s in chunk])
                                              .astype(np.int64))), labels=b).loss.item()
              for chunk in np.array_split(starts, max(1, n_windows // args.batch_size))]
    model.train()
    return float(np.mean(losses))


def train(args) -> dict:
    torch.set_num_threads(args.threads)
    corpus, out = Path(args.corpus), Path(args.out)
    tokenizer = AutoTokenizer.from_pretrained(corpus / "tokenizer", trust_remote_code=False)
    train_tokens, eval_tokens = token_file(corpus, "train", tokenizer), token_file(corpus, "heldout", tokenizer)
    args.steps = args.steps or args.tokens // (args.batch_size * args.context)
    model, optimizer = build(args, len(tokenizer), tokenizer.eos_token_id)
    ckpt, step = out / "checkpoint", 0
    if args.resume and (ckpt / "state.json").exists():
        step = load_checkpoint(ckpt, model, optimizer)
        logger.info("Resumed at step %d", step)
    start = time.time()
    for step in tqdm(range(step, args.steps), initial=step, total=args.steps, desc="pretrain", disable=args.quiet):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args)
        batch = batch_at(train_tokens, step, args)
        model(input_ids=batch, labels=batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % args.checkpoint_every == 0 or step + 1 == args.steps:
            save_checkpoint(ckpt, model, optimizer, step + 1)
    ce = held_out_ce(model, eval_tokens, args, args.eval_windows)
    metrics = {"held_out_ce": round(ce, 4), **{k: round(v, 4) for k, v in unigram_bigram_cross_entropy(
        train_tokens, eval_tokens, len(tokenizer)).items()}, "steps": args.steps,
        "tokens_seen": args.steps * args.batch_size * args.context, "train_tokens": len(train_tokens),
        "held_out_tokens": len(eval_tokens), "seconds_this_session": round(time.time() - start, 1),
        "n_params": sum(p.numel() for p in model.parameters()), "settings": vars(args)}
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    logger.info("held-out CE %.3f (bigram %.3f, unigram %.3f)", ce, metrics["bigram_ce"], metrics["unigram_ce"])
    return metrics


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", required=True, help="folder written by examples/build_code_corpus.py")
    p.add_argument("--out", required=True, help="where the model, its checkpoint and metrics.json go")
    p.add_argument("--n-layer", type=int, default=6)
    p.add_argument("--n-embd", type=int, default=256)
    p.add_argument("--n-head", type=int, default=8)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--tokens", type=int, default=200_000_000, help="training tokens (sets --steps when it is 0)")
    p.add_argument("--steps", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr", type=float, default=1e-4)
    p.add_argument("--warmup-steps", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: bitwise reproducible on CPU)")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--eval-windows", type=int, default=2048, help="held-out windows of --context tokens")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    train(parse_args())
