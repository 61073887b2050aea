"""`hf-e2e-sae bench`: our e2e, e2e+ds and local steps against a plain-torch lower bound and EleutherAI sparsify.

Every system trains an SAE at the middle block of the same random GPT-2 on the same tokens. Step times are
measured in one process with repetitions interleaved (system A, B, C, A, B, C, ...), so that a busy machine
slows all of them alike; the median is reported. Peak memory of one step, after a first step has made the
optimizer states: on CUDA the max allocated over the allocated memory before the step; on CPU the peak RSS of a
fresh subprocess over its RSS before the step (the kernel's high-water mark, reset with /proc/self/clear_refs,
with glibc unmapping every freed block of 64 KiB or more). On CPU the table and JSON also give the RSS the first step
added and kept (`state_bytes`: the optimizer states, the same for every system training the same SAE, plus
whatever the first call loads).

    hf-e2e-sae bench --shape A --shape B --device cpu --out bench.json
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch

from . import systems

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shape:
    n_layer: int
    d_model: int
    ctx: int
    batch: int
    dict_ratio: int = 60
    vocab: int = 50257

    @property
    def site(self) -> str:
        return f"blocks.{self.n_layer // 2}.resid_pre"

    @property
    def tokens(self) -> int:
        return self.ctx * self.batch


SHAPES = {
    "A": Shape(n_layer=4, d_model=128, ctx=128, batch=8),
    "B": Shape(n_layer=6, d_model=512, ctx=128, batch=8),
    "gpt2": Shape(n_layer=12, d_model=768, ctx=1024, batch=8),  # GPT-2 small, dict 46,080: for GPUs
    "tiny": Shape(n_layer=3, d_model=64, ctx=16, batch=2, dict_ratio=4, vocab=1000),  # a smoke test in seconds
}
SYSTEMS = ["ours_e2e", "ours_e2e_reference", "ours_e2e_recompute", "ours_e2eds", "ours_local", "lower_bound",
           "plain_forward", "sparsify_kl", "sparsify_local", "ours_sweep_e2e_4", "ours_sweep_e2e_8",
           "ours_sweep_local_4", "ours_sweep_local_8"]
DEFAULT_SYSTEMS = SYSTEMS[:9]
"""Without --systems: the single-SAE systems (the sweeps train 4 or 8 SAEs per step; ask for them by name)."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(steps: dict, device: torch.device, repeats: int, warmup: int) -> dict:
    """Median seconds per call of each step function, calls interleaved across systems."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def cuda_peak(step: Callable, device: torch.device) -> int:
    """Bytes allocated at the peak of one step beyond what was allocated before it."""
    step()  # optimizer states exist from here on
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def cpu_peak_in_this_process(step: Callable) -> tuple:
    """`(state, peak)` bytes: the RSS that a first step adds and keeps (optimizer states), and the peak RSS of the
    next step over the RSS before it: what the step itself needs, as `cuda_peak` measures on a GPU. Run in a fresh
    process with glibc returning freed blocks at once (see `cpu_peak`), so RSS follows live memory."""
    start = _rss_bytes("VmRSS")
    step()  # optimizer states exist from here on
    before = _rss_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset the high-water mark to the current RSS
    step()
    return before - start, _rss_bytes("VmHWM") - before


def cpu_peak(system: str, shape_name: str, seed: int, dtype: str) -> tuple:
    """Run `cpu_peak_in_this_process` for one system in a fresh interpreter (nothing cached from others);
    `(state, peak)` bytes, or `(None, None)` when the probe failed."""
    cmd = [sys.executable, "-m", "hf_e2e_sae.bench.benchmark", "--memory-probe", system, "--shape", shape_name,
           "--seed", str(seed), "--dtype", dtype]
    # Every block of 64 KiB or more is its own mmap, unmapped when freed: glibc would otherwise keep freed blocks
    # below its (adaptive, up to 32 MiB) threshold resident, and RSS would not fall back between steps.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
    if done.returncode != 0:
        logger.warning("memory probe of %s failed: %s", system, done.stderr.strip().splitlines()[-1:])
        return None, None
    state, peak = done.stdout.strip().splitlines()[-1].split()
    return int(state), int(peak)


def run(shape_name: str, device: str, repeats: int, warmup: int, names: list, seed: int = 0,
        dtype: str = "float32", memory: bool = True) -> dict:
    """Times, memory and ratios for one shape."""
    shape, dev = SHAPES[shape_name], torch.device(device)
    batch = systems.random_batch(shape, dev, seed)
    available = [n for n in names if systems.available(n)]
    steps = {name: systems.build(name, shape, dev, batch, seed, dtype) for name in available}
    seconds = time_steps(steps, dev, repeats, warmup)
    states: dict = {name: None for name in available}
    if dev.type == "cuda":
        peaks = {name: cuda_peak(step, dev) for name, step in steps.items()}
    elif not memory:
        peaks = dict.fromkeys(available)
    else:
        del steps  # free this process's copies before the probes start
        probes = {name: cpu_peak(name, shape_name, seed, dtype) for name in available}
        states, peaks = {n: p[0] for n, p in probes.items()}, {n: p[1] for n, p in probes.items()}
    result = {"shape": asdict(shape), "shape_name": shape_name, "device": str(dev), "dtype": dtype,
              "torch": torch.__version__, "repeats": repeats, "missing": [n for n in names if n not in available],
              "systems": {name: {"step_s": seconds[name], "tokens_per_s": shape.tokens / seconds[name],
                                 "peak_bytes": peaks[name], "state_bytes": states[name]} for name in available}}
    result["ratios"] = ratios(result["systems"])
    return result


def ratios(results: dict) -> dict:
    """The ratios the performance targets are stated in (only those whose systems ran)."""
    def ratio(a: str, b: str, key: str) -> Optional[float]:
        if a in results and b in results and results[a][key] and results[b][key]:
            return results[a][key] / results[b][key]
        return None

    out = {
        "e2e_time / lower_bound": ratio("ours_e2e", "lower_bound", "step_s"),
        "e2e_time / sparsify_kl": ratio("ours_e2e", "sparsify_kl", "step_s"),
        "e2e_time / e2e_reference": ratio("ours_e2e", "ours_e2e_reference", "step_s"),
        "local_time / sparsify_local": ratio("ours_local", "sparsify_local", "step_s"),
        "e2e_peak / plain_forward_peak": ratio("ours_e2e", "plain_forward", "peak_bytes"),
        "e2e_reference_peak / plain_forward_peak": ratio("ours_e2e_reference", "plain_forward", "peak_bytes"),
        "e2e_recompute_time / sparsify_kl": ratio("ours_e2e_recompute", "sparsify_kl", "step_s"),
        "e2e_recompute_peak / plain_forward_peak": ratio("ours_e2e_recompute", "plain_forward", "peak_bytes"),
        "sparsify_kl_peak / plain_forward_peak": ratio("sparsify_kl", "plain_forward", "peak_bytes"),
    }
    for n in (4, 8):  # a sweep's time per SAE against one step of a separate run (targets: docs/guides/sweeps.md)
        for sweep, single in ((f"ours_sweep_e2e_{n}", "ours_e2e"), (f"ours_sweep_e2e_{n}", "sparsify_kl"),
                              (f"ours_sweep_local_{n}", "ours_local"), (f"ours_sweep_local_{n}", "sparsify_local")):
            value = ratio(sweep, single, "step_s")
            out[f"{sweep}_time_per_sae / {single}"] = value / n if value is not None else None
    return {k: v for k, v in out.items() if v is not None}


def format_table(result: dict) -> str:
    shape = result["shape"]
    lines = [f"shape {result['shape_name']}: {shape['n_layer']} layers x d{shape['d_model']}, vocab {shape['vocab']}, "
             f"ctx {shape['ctx']}, batch {shape['batch']}, dict {shape['dict_ratio']}x at {SHAPES[result['shape_name']].site}"
             f" on {result['device']} ({result['dtype']})",
             f"  {'system':<22}{'step ms':>10}{'tokens/s':>12}{'peak MB':>10}{'state MB':>10}"]
    for name, r in result["systems"].items():
        peak = f"{r['peak_bytes'] / 2**20:.0f}" if r["peak_bytes"] is not None else "n/a"
        state = f"{r['state_bytes'] / 2**20:.0f}" if r.get("state_bytes") is not None else "n/a"
        lines.append(f"  {name:<22}{r['step_s'] * 1e3:>10.1f}{r['tokens_per_s']:>12.0f}{peak:>10}{state:>10}")
    width = max([40, *(len(name) + 2 for name in result["ratios"])])
    lines += [f"  {name:<{width}}{value:.3f}" for name, value in result["ratios"].items()]
    if result["missing"]:
        lines.append(f"  not measured (package missing): {', '.join(result['missing'])}")
    return "\n".join(lines)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="hf-e2e-sae bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", action="append", choices=sorted(SHAPES), help="model shape (repeatable); default A and B")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="bfloat16: the base model runs under bf16 autocast (SAEs and losses stay float32)")
    parser.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS), help=f"comma-separated subset of {SYSTEMS}")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench.json", help="where to write the JSON results")
    parser.add_argument("--no-memory", action="store_true", help="time only (no peak-memory probes)")
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe:  # internal: one system's CPU memory, in a fresh process
        shape = SHAPES[args.shape[0]]
        dev = torch.device("cpu")
        step = systems.build(args.memory_probe, shape, dev, systems.random_batch(shape, dev, args.seed), args.seed,
                             args.dtype)
        sys.stdout.write("%d %d\n" % cpu_peak_in_this_process(step))
        return 0
    torch.manual_seed(args.seed)
    names = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(names) - set(SYSTEMS))
    if unknown:
        sys.stderr.write(f"hf-e2e-sae bench: error: unknown systems {unknown}; choices: {SYSTEMS}\n")
        return 2
    results = []
    for shape_name in args.shape or ["A", "B"]:
        result = run(shape_name, args.device, args.repeats, args.warmup, names, args.seed, args.dtype,
                     memory=not args.no_memory)
        sys.stdout.write(format_table(result) + "\n\n")
        results.append(result)
    with open(args.out, "w") as handle:
        json.dump(results, handle, indent=2)
    sys.stdout.write(f"wrote {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
