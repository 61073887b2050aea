"""One rank of tests/test_sharded_loading.py: load a saved base model sharded (meta init + own shards) or unsharded
(a full `from_pretrained`, then FSDP2), and report this process's peak RSS while loading.

    python -m torch.distributed.run --nproc_per_node 2 tests/sharded_loading_worker.py MODEL_DIR OUT_DIR MODE

MODE `sharded`: `empty_base_model` + `shard_base_model(..., checkpoint=MODEL_DIR)`, the trainer's
`base_model.shard: true` path; `unsharded`: `AutoModelForCausalLM.from_pretrained` + `shard_base_model`, the path
before it. Writes OUT_DIR/<mode>_rank<r>.json: ru_maxrss (bytes) before and after loading, the base elements held
here, and (sharded) whether every local shard equals the checkpoint's rows, checked after the measurement.
"""
from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch.distributed.tensor import DTensor
from transformers import AutoConfig, AutoModelForCausalLM

from hf_e2e_sae import SAEConfig, SparseAutoencoder
from hf_e2e_sae.patching.patched_model import SAEPatchedModel
from hf_e2e_sae.training.sharded_loading import _row_range, empty_base_model
from hf_e2e_sae.training.sharding import shard_base_model, shard_report


def max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def shards_match_checkpoint(model, model_dir: str) -> bool:
    saved = load_file(str(Path(model_dir, "model.safetensors")))
    for name, param in model.base_model.named_parameters():
        if isinstance(param, DTensor):
            start, end = _row_range(param)
            if not torch.equal(param.to_local(), saved[name][start:end].to(param.dtype)):
                return False
    return True


def main() -> None:
    model_dir, out_dir, mode = sys.argv[1:4]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, device = dist.get_rank(), torch.device("cpu")
    d_model = AutoConfig.from_pretrained(model_dir).hidden_size
    sae = SparseAutoencoder(SAEConfig(d_in=d_model, dict_size=8, site="blocks.1.resid_pre"))
    dist.barrier()
    before = max_rss()  # imports, process group and a small SAE: the same in both modes
    if mode == "sharded":
        base = empty_base_model(model_dir)
    else:
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = SAEPatchedModel(base, sae)
    shard_base_model(model, device, checkpoint=model_dir if mode == "sharded" else None)
    after = max_rss()
    result = {"rank": rank, "mode": mode, "rss_before": before, "rss_peak": after,
              "report": shard_report(model), "exact": shards_match_checkpoint(model, model_dir)}
    Path(out_dir, f"{mode}_rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
