"""Where one training step's GPU time goes: torch.profiler over a few steps of a `hf-e2e-sae bench` system.

    python scripts/profile_step.py ours_e2e gpt2 bfloat16
"""
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from hf_e2e_sae.bench import systems
from hf_e2e_sae.bench.benchmark import SHAPES


def main(system: str = "ours_e2e", shape_name: str = "gpt2", dtype: str = "bfloat16") -> None:
    device, shape = torch.device("cuda"), SHAPES[shape_name]
    step = systems.build(system, shape, device, systems.random_batch(shape, device, 0), 0, dtype)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    print(f"== {system} {shape_name} {dtype}: top CUDA kernels over 3 steps")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60))


if __name__ == "__main__":
    main(*sys.argv[1:])
