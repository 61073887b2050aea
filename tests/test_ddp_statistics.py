"""Data-parallel statistics are those of the global batch (2 real processes, gloo on CPU; tests/ddp_statistics_worker.py).

* TopK + AuxK, 2 processes x 4 sequences, equals 1 process x 8 sequences to float rounding after 25 Adam steps in
  which latents go dead, while per-process statistics (what DDP did before) end far from it.
* BatchTopK: every process holds the same threshold, the smallest kept value over the whole global batch.
* A Matryoshka SAE trained e2e (extra prefix passes per step) on 2 processes equals the 1-process run.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from ddp_statistics_worker import train_matryoshka_e2e, train_topk_auxk
from train_fixtures import finish_launch, subprocess_env

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 180


def _max_rel_diff(got: dict, want: dict) -> float:
    return max(float((got[k] - want[k]).abs().max() / want[k].abs().max()) for k in want)


def test_two_processes_reduce_auxk_and_batchtopk_statistics_over_the_global_batch(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "tests" / "ddp_statistics_worker.py"), str(tmp_path)]
    proc = subprocess.Popen(command, cwd=str(REPO), env=subprocess_env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # the 1-process references run here while the launch runs
        one_process, auxk_1 = train_topk_auxk()
        per_process_stats, _ = train_topk_auxk(halves_without_reduction=True)
        matryoshka_1 = train_matryoshka_e2e()
    finally:
        torch.set_num_threads(threads)
        if proc.poll() is None and sys.exc_info()[0] is not None:
            proc.kill()
    finish_launch(proc, TIMEOUT_S)

    # TopK + AuxK: latents went dead (the AuxK loss was on) and the 2-process run is the 1-process run.
    assert sum(a > 0 for a in auxk_1) >= 10, auxk_1
    ranks = [load_file(str(tmp_path / f"topk_rank{r}.safetensors")) for r in (0, 1)]
    assert _max_rel_diff(ranks[1], ranks[0]) == 0.0  # DDP keeps the processes identical
    assert _max_rel_diff(ranks[0], one_process) < 1e-5
    reports = [json.loads((tmp_path / f"batchtopk_rank{r}.json").read_text()) for r in (0, 1)]
    torch.testing.assert_close(torch.tensor(reports[0]["auxk"]), torch.tensor(auxk_1), rtol=1e-4, atol=1e-6)
    # ... which per-process dead counts and residual statistics do not give
    assert _max_rel_diff(per_process_stats, one_process) > 1e-3

    # Matryoshka e2e (prefix passes): the 2-process run is the 1-process run too.
    matryoshka = [load_file(str(tmp_path / f"matryoshka_rank{r}.safetensors")) for r in (0, 1)]
    assert _max_rel_diff(matryoshka[1], matryoshka[0]) == 0.0
    assert _max_rel_diff(matryoshka[0], matryoshka_1) < 1e-5

    # BatchTopK: one threshold on every process, from the global batch (the smaller of the two processes' own).
    smallest = [r["smallest_kept"] for r in reports]
    assert smallest[0] != smallest[1]  # the processes' own estimates differ ...
    assert reports[0]["first_threshold"] == reports[1]["first_threshold"] == min(smallest)  # ... one is kept
    assert reports[0]["threshold"] == reports[1]["threshold"] > 0
    states = [load_file(str(tmp_path / f"batchtopk_rank{r}.safetensors")) for r in (0, 1)]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
