"""A real 2-process data-parallel run (gloo on CPU) matches a 1-process run with gradient accumulation.

`accelerate launch --multi_gpu --num_processes 2 examples/train.py CFG` with batch_size 4 / effective 8 (one
micro-batch per process per step) must reach the same SAE weights as one process with batch_size 4 /
effective 8 (two accumulated micro-batches per step): same global batches, same averaged gradients. The
1-process reference runs in this pytest process (1 thread) while the launch runs, to save wall time.
Part of the normal suite; about 25-40 s on 2 CPU cores.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import torch  # a README-installed dependency: missing fails, never skips
import accelerate  # noqa: F401

from safetensors.torch import load_file  # noqa: E402
from train_fixtures import (  # noqa: E402,F401  (fixtures are used by name)
    SITE, finish_launch, load_sae_state, make_config, reset_accelerate_state, subprocess_env, tiny_assets,
)

import hf_e2e_sae.training.trainer as trainer  # noqa: E402
from hf_e2e_sae.training.config import load_train_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 180


def _launch_command(config_path: Path) -> list:
    accelerate_cli = shutil.which("accelerate")
    if accelerate_cli is not None:
        return [accelerate_cli, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
                str(REPO / "examples" / "train.py"), str(config_path)]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "0",
            str(REPO / "examples" / "train.py"), str(config_path)]


def test_two_processes_match_one_process_with_accumulation(make_config, tiny_assets):
    common = dict(batch_size=4, effective_batch_size=8, n_samples=64, save_every_samples=32, keep_checkpoints=2)
    path_2, out_2 = make_config("two_procs", **common)
    path_1, out_1 = make_config("one_proc", **common)

    proc = subprocess.Popen(_launch_command(path_2), cwd=str(REPO), env=subprocess_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    reset_accelerate_state()
    try:
        config_1 = load_train_config(path_1)
        metrics_1 = trainer.train(config_1)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    finally:
        torch.set_num_threads(threads)
        reset_accelerate_state()
    stdout, stderr = finish_launch(proc, TIMEOUT_S)

    # It really ran 2 processes, one data-parallel job (not 2 independent single-process runs).
    summary_2 = json.loads((out_2 / "final" / "train_summary.json").read_text())
    assert summary_2["num_processes"] == 2
    assert summary_2["optimizer_steps"] == 8 and summary_2["train_samples"] == 64
    assert json.loads((out_1 / "final" / "train_summary.json").read_text())["num_processes"] == 1

    # Same global batches and averaged gradients: same SAE weights and held-out metrics.
    state_1, state_2 = load_sae_state(out_1 / "final"), load_sae_state(out_2 / "final")
    assert state_1.keys() == state_2.keys()
    for key in state_1:
        torch.testing.assert_close(state_2[key], state_1[key], rtol=0, atol=1e-5)
    metrics_2 = json.loads((out_2 / "final" / "eval_metrics.json").read_text())
    assert metrics_2 == pytest.approx(metrics_1, rel=1e-4, abs=1e-5)

    # Only the main process wrote the outputs: one final/, one checkpoint (RNG state of each rank inside it).
    assert sorted(p.name for p in out_2.iterdir()) == [".lock", "checkpoints", "final"]  # .lock: one run per dir
    assert sorted(p.name for p in (out_2 / "checkpoints").iterdir()) == ["step_00000004"]
    ckpt = out_2 / "checkpoints" / "step_00000004"
    assert {"rng_state_0.safetensors", "rng_state_1.safetensors", "train_config.yaml"} <= {p.name for p in ckpt.iterdir()}
    sae_prefix = "saes." + SITE.replace(".", "__") + "."
    assert all(k.startswith(sae_prefix) for k in load_file(str(ckpt / "model.safetensors")))
    assert {p.name for p in (out_2 / "final").iterdir()} == {p.name for p in (out_1 / "final").iterdir()}
    # ... and logged / reported once.
    logs = stdout + stderr
    assert stdout.count("Final held-out metrics:") == 1, stdout[-3000:]
    assert logs.count("Final SAEs and metrics written to") == 1
    assert logs.count("hf_e2e_sae.runs.checkpointing: Saved checkpoint") == 1
