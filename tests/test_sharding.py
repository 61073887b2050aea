"""`base_model.shard`: the frozen base model sharded with FSDP2 over 2 real CPU processes (gloo) trains the same SAEs.

* Trainer level: `accelerate launch --multi_gpu --num_processes 2 examples/train.py CFG --base_model.shard true`
  (batch 4 per process, effective 8) must reach the SAE weights and held-out metrics of one unsharded process with
  2 accumulated micro-batches of 4 (same global batches, same averaged gradients), and every rank must report that
  it holds half of every base weight (so a sharding that silently did nothing fails). The 1-process reference runs
  in this pytest process while the launch runs.
* Step level (`sharding_worker.py`, 2 processes): SAE gradients of the local, e2e and e2e+ds fast steps on GPT-2
  (tied head) and Llama (untied head), sharded, against the unsharded whole-batch gradients.
* The launch checks that run before any weights load (one line naming base_model.shard).
About 30-50 s on 2 CPU cores.
"""
from __future__ import annotations

import json
import re
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
from hf_e2e_sae.cli import run_train  # noqa: E402
from hf_e2e_sae.config.arguments import ConfigError  # noqa: E402
from hf_e2e_sae.training.config import load_train_config  # noqa: E402
from hf_e2e_sae.runs.resume_compat import may_change  # noqa: E402
from hf_e2e_sae.training.sharding import check_sharding  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 240
SHARD_LINE = re.compile(r"Sharded the base model over (\d+) processes: process (\d+) holds (\d+) of its (\d+) weights "
                        r"\([\d.]+%\); (\d+) of (\d+) tensors sharded, each ([\d.]+)%-([\d.]+)% here")


def _launch(script: Path, *args: str) -> list:
    accelerate_cli = shutil.which("accelerate")
    if accelerate_cli is not None:
        return [accelerate_cli, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0", str(script), *args]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "0",
            str(script), *args]


def test_sharded_two_processes_match_one_unsharded_process(make_config, tiny_assets):
    common = dict(batch_size=4, effective_batch_size=8, n_samples=32, save_every_samples=16, keep_checkpoints=1)
    path_2, out_2 = make_config("sharded", base_model={"shard": True}, **common)
    path_1, out_1 = make_config("one_proc", **common)

    proc = subprocess.Popen(_launch(REPO / "examples" / "train.py", str(path_2)), cwd=str(REPO),
                            env=subprocess_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    reset_accelerate_state()
    try:
        trainer.train(load_train_config(path_1))
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    finally:
        torch.set_num_threads(threads)
        reset_accelerate_state()
    stdout, stderr = finish_launch(proc, TIMEOUT_S)

    summary = json.loads((out_2 / "final" / "train_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["optimizer_steps"] == 4

    # Each rank really holds half of every base weight (40 tensors of the tiny GPT-2, tied head counted once).
    shards = {int(m.group(2)): m for m in SHARD_LINE.finditer(stdout + stderr)}
    assert sorted(shards) == [0, 1], (stdout + stderr)[-3000:]
    for m in shards.values():
        world, local, total, n_sharded, n_tensors = (int(m.group(i)) for i in (1, 3, 4, 5, 6))
        assert world == 2 and n_sharded == n_tensors == 40 and local * 2 == total
        assert float(m.group(7)) == float(m.group(8)) == 50.0

    # Same SAE weights and held-out metrics as the unsharded single process.
    state_1, state_2 = load_sae_state(out_1 / "final"), load_sae_state(out_2 / "final")
    assert state_1.keys() == state_2.keys()
    for key in state_1:
        torch.testing.assert_close(state_2[key], state_1[key], rtol=1e-5, atol=1e-6)
    metrics_1 = json.loads((out_1 / "final" / "eval_metrics.json").read_text())
    metrics_2 = json.loads((out_2 / "final" / "eval_metrics.json").read_text())
    assert metrics_2 == pytest.approx(metrics_1, rel=1e-5, abs=1e-6)
    # The checkpoint holds the SAEs only, written once.
    ckpt = out_2 / "checkpoints" / "step_00000002"
    assert all(k.startswith("saes." + SITE.replace(".", "__") + ".") for k in load_file(str(ckpt / "model.safetensors")))
    assert stdout.count("Final held-out metrics:") == 1


def test_sharded_fast_steps_give_the_unsharded_gradients(tmp_path):
    finish_launch(subprocess.Popen(_launch(REPO / "tests" / "sharding_worker.py", str(tmp_path)), cwd=str(REPO),
                                   env=subprocess_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE),
                  TIMEOUT_S)
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["rank"] for r in results] == [0, 1]
    for result in results:
        assert set(result["grad_rel_diff"]) == {f"{a}/{p}" for a in ("gpt2", "llama") for p in ("local", "e2e", "e2e+ds")}
        assert max(result["grad_rel_diff"].values()) < 1e-5, result["grad_rel_diff"]
        assert result["head_equal"] == {"gpt2": True, "llama": True}  # the all-gathered LM head is the original
        for report in result["reports"].values():
            assert report["processes"] == 2 and report["sharded_tensors"] == report["tensors"]
            assert report["local_elements"] * 2 == report["elements"]
            assert report["min_fraction"] == report["max_fraction"] == 0.5


def test_sharding_launch_checks(make_config, monkeypatch, capsys):
    check_sharding(False, 1)
    check_sharding(True, 2)
    with pytest.raises(ConfigError, match=r"^base_model\.shard: sharding needs 2 or more processes, this run has 1"):
        check_sharding(True, 1)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # accelerate launch --use_fsdp / distributed_type: FSDP
    with pytest.raises(ConfigError, match=r"^base_model\.shard: launch without accelerate's FSDP"):
        check_sharding(False, 2)
    monkeypatch.delenv("ACCELERATE_USE_FSDP")

    # Through the command line: one line on stderr, exit 2, before any weights load.
    path, out = make_config("single", base_model={"shard": True})
    reset_accelerate_state()
    try:
        assert run_train([str(path)]) == 2
    finally:
        reset_accelerate_state()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "base_model.shard: sharding needs 2 or more processes" in err[0], err
    assert not (out / "final").exists()
    assert load_train_config(path, ["--base_model.shard", "false"]).base_model.shard is False
    assert may_change("base_model.shard")  # a checkpoint resumes sharded or not
