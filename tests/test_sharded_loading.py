"""`base_model.shard: true` loads each process's own shards only: meta init, FSDP2, then row ranges of the checkpoint.

* Two gloo processes (`sharded_loading_worker.py`) load a GPT-2-medium-shaped random model (vocab 50,257, d 1,024,
  16 heads; 6 of its 24 layers to keep the test near 30 s: 128M parameters, 512 MB in float32, of which the
  embedding is 40%) once sharded and once the unsharded way (a full `from_pretrained`, then FSDP2). Each process's
  peak RSS added by loading (ru_maxrss after minus before) must be <= 0.6x the unsharded load's, every local shard
  must equal its rows of the checkpoint, and each process must hold half of every tensor.
* The reader: row ranges with a cast (float32 checkpoint into bfloat16), prefix-less checkpoint keys (older Hub
  GPT-2 files say `h.0...` for `transformer.h.0...`).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import GPT2Config

from train_fixtures import finish_launch, subprocess_env  # noqa: E402

from hf_e2e_sae.training.sharded_loading import _checkpoint_key, _SafetensorsFile, checkpoint_files, empty_base_model

REPO = Path(__file__).resolve().parents[1]


def _save_random_model(folder: Path, config: GPT2Config) -> None:
    """A random checkpoint in save_pretrained's layout, written without initialising a model (seconds, not 30 s)."""
    folder.mkdir(parents=True)
    config.save_pretrained(folder)
    model = empty_base_model(str(folder))
    generator = torch.Generator().manual_seed(0)
    state = {name: torch.randn(p.shape, generator=generator) * 0.02 for name, p in model.named_parameters()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(model_dir: Path, out: Path, mode: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
         str(REPO / "tests" / "sharded_loading_worker.py"), str(model_dir), str(out), mode],
        cwd=str(REPO), env=subprocess_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _results(out: Path, mode: str) -> list:
    return [json.loads((out / f"{mode}_rank{rank}.json").read_text()) for rank in (0, 1)]


def test_sharded_load_peaks_at_most_0_6_of_an_unsharded_load(tmp_path):
    model_dir = tmp_path / "gpt2_medium_6_layers"
    _save_random_model(model_dir, GPT2Config(n_embd=1024, n_layer=6, n_head=16, vocab_size=50257, n_positions=1024))
    launches = [_launch(model_dir, tmp_path, mode) for mode in ("sharded", "unsharded")]  # RSS is per process
    for proc in launches:
        finish_launch(proc, 240)
    sharded, unsharded = _results(tmp_path, "sharded"), _results(tmp_path, "unsharded")
    ratios = []
    for mine, full in zip(sharded, unsharded):
        assert mine["exact"] and full["exact"]
        report = mine["report"]
        assert report["processes"] == 2 and report["sharded_tensors"] == report["tensors"] == 76
        assert abs(report["local_elements"] / report["elements"] - 0.5) < 1e-4
        ratios.append((mine["rss_peak"] - mine["rss_before"]) / (full["rss_peak"] - full["rss_before"]))
    assert max(ratios) <= 0.6, ratios
    # The shard itself (256 MB) is most of what the sharded load added: nothing near a full copy (512 MB)
    assert all(m["rss_peak"] - m["rss_before"] < 0.75 * 512e6 for m in sharded), sharded


def test_reader_casts_rows_and_finds_prefix_less_keys(tmp_path):
    weight = torch.randn(7, 3)
    save_file({"h.0.weight": weight, "wte.weight": torch.randn(5, 3)}, str(tmp_path / "model.safetensors"))
    files = checkpoint_files(str(tmp_path))
    assert set(files) == {"h.0.weight", "wte.weight"}
    assert _checkpoint_key("transformer.h.0.weight", files, "transformer") == "h.0.weight"
    with pytest.raises(KeyError, match="lm_head.weight"):
        _checkpoint_key("lm_head.weight", files, "transformer")
    reader = _SafetensorsFile(files["h.0.weight"])
    out = torch.empty(3, 3, dtype=torch.bfloat16)
    assert reader.read_rows("h.0.weight", 4, 7, out) == 3 * 3 * 4
    assert torch.equal(out, weight[4:7].to(torch.bfloat16))
    same = torch.empty(2, 3)
    reader.read_rows("h.0.weight", 0, 2, same)  # same dtype: read straight into the destination
    assert torch.equal(same, weight[:2])
    with pytest.raises(RuntimeError, match="do not fit"):
        reader.read_rows("h.0.weight", 0, 2, torch.empty(3, 3))
    reader.close()
