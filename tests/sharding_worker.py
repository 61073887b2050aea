"""One rank of the step-level sharding check in tests/test_sharding.py (run under `accelerate launch`, 2 processes).

For each tiny model family (GPT-2: tied embedding and head; Llama: untied head, rotary buffers) and each loss preset
(local: the forward stops inside a sharded block; e2e: shared prefix replay + LM-head capture + fused KL; e2e+ds:
plus cached downstream sites), every rank:

1. computes the reference SAE gradients of the whole batch on an unsharded copy of the model;
2. shards another copy's base model with `shard_base_model`, prepares it with Accelerate (DDP on the SAEs) and
   runs two fast steps on its half of the batch (the second checks that FSDP's state survives a step);
3. writes `OUT_DIR/rank<r>.json`: the largest relative gradient difference per family and preset, what this rank
   holds of the base model (`shard_report`), and whether the all-gathered LM head equals the original.

    accelerate launch --multi_gpu --num_processes 2 tests/sharding_worker.py OUT_DIR
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_models import HIDDEN, random_ids, tiny_model  # noqa: E402

from hf_e2e_sae import SAEConfig, SparseAutoencoder  # noqa: E402
from hf_e2e_sae.patching.patched_model import SAEPatchedModel  # noqa: E402
from hf_e2e_sae.training.losses import LossConfig  # noqa: E402
from hf_e2e_sae.training.sharding import full_tensor, shard_base_model, shard_report  # noqa: E402
from hf_e2e_sae.training.step import micro_batch_loss  # noqa: E402

SITES = ["blocks.1.resid_pre", "blocks.1.mlp_out"]
DOWNSTREAM = ["blocks.2.resid_pre"]
PRESETS = ["local", "e2e", "e2e+ds"]
ARCHS = ["gpt2", "llama"]


def build(arch: str) -> SAEPatchedModel:
    """The same seeded base model and SAEs on every call."""
    base = tiny_model(arch)
    saes = {}
    for i, site in enumerate(SITES):
        torch.manual_seed(100 + i)
        saes[site] = SparseAutoencoder(SAEConfig(d_in=HIDDEN, dict_size=4 * HIDDEN, site=site))
    return SAEPatchedModel(base, saes)


def sae_grads(model: SAEPatchedModel) -> dict:
    return {name: p.grad.detach().clone() for name, p in model.saes.named_parameters()}


def max_rel_diff(got: dict, want: dict) -> float:
    return max(((got[k] - want[k]).abs().max() / want[k].abs().max().clamp_min(1e-12)).item() for k in want)


def check(accelerator: Accelerator, arch: str, preset: str) -> tuple:
    loss = LossConfig(preset=preset)
    downstream = DOWNSTREAM if loss.downstream.coeff > 0 else []
    ids = random_ids(batch=4, seq=16, seed=3)
    reference = build(arch)
    total, _, _ = micro_batch_loss(reference, reference, ids, loss, downstream, HIDDEN)
    total.backward()
    want = sae_grads(reference)

    model = build(arch)
    shard_base_model(model, accelerator.device)
    wrapped = accelerator.prepare(model)
    rank = accelerator.process_index
    mine = ids[2 * rank:2 * rank + 2]  # DDP averages the two halves: the whole batch's mean gradient
    diffs = []
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        total, _, _ = micro_batch_loss(wrapped, model, mine, loss, downstream, HIDDEN)
        total.backward()
        diffs.append(max_rel_diff(sae_grads(model), want))
    head = model.base_model.get_output_embeddings().weight
    head_equal = torch.equal(full_tensor(head), reference.base_model.get_output_embeddings().weight)
    return max(diffs), shard_report(model), head_equal


def main() -> None:
    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True, kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)])
    assert accelerator.num_processes == 2, accelerator.num_processes
    result: dict = {"rank": accelerator.process_index, "grad_rel_diff": {}, "reports": {}, "head_equal": {}}
    for arch in ARCHS:
        for preset in PRESETS:
            diff, report, head_equal = check(accelerator, arch, preset)
            result["grad_rel_diff"][f"{arch}/{preset}"] = diff
            result["reports"][arch] = report
            result["head_equal"][arch] = head_equal
    Path(sys.argv[1], f"rank{accelerator.process_index}.json").write_text(json.dumps(result))
    accelerator.end_training()


if __name__ == "__main__":
    main()
