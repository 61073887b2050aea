"""Sweep systems of `hf-e2e-sae bench`: one step of an N-variant sweep (`training.sweep_step`), all N SAEs trained.

    ours_sweep_e2e_4, ours_sweep_e2e_8       N e2e variants: one shared clean pass, each variant's patched suffix
                                             and fused KL, N Adam steps
    ours_sweep_local_4, ours_sweep_local_8   N local variants: one pass stopped at the site, each SAE on it

The variants are TopK k=32 SAEs (sparsify's architecture, as the other systems) differing in learning rate: the
work of a sparsity or k sweep. Compare `step_s / N` (time per SAE) with one `ours_e2e` / `sparsify_kl` step.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch

from ..patching.patched_model import SAEPatchedModel
from ..sae.config import SAEConfig
from ..sae.model import SparseAutoencoder
from ..training.architecture_config import apply_activation_defaults
from ..patching.patch_marker import wrappers_share
from ..training.losses import LossConfig
from ..training.sweep_step import plan_shared, shared_pass, variant_loss
from ..training.trainer import make_optimizer

SWEEP_SYSTEMS = {f"ours_sweep_{preset}_{n}": (preset, n) for preset in ("e2e", "local") for n in (4, 8)}
_NO_WRAP = SimpleNamespace(unwrap_model=lambda model: model)


def _variant(base, shape, preset: str, lr: float, seed: int, our_activation: dict):
    torch.manual_seed(seed)
    sae = SparseAutoencoder(SAEConfig(d_in=shape.d_model, dict_size=shape.dict_ratio * shape.d_model, site=shape.site,
                                      **our_activation))
    with wrappers_share(base):  # the sweep runs one variant's SAE at a time (training/sweep_step.py)
        model = SAEPatchedModel(base, sae).to(base.device)
    loss = LossConfig(**apply_activation_defaults({**our_activation, "loss": {"preset": preset}})["loss"])
    config = SimpleNamespace(loss=loss, recompute_suffix=False, activation_cache=None)
    return SimpleNamespace(config=config, model=model, raw=model, downstream_sites=[], d_in=shape.d_model,
                           loss_terms={}, accelerator=_NO_WRAP, optimizer=make_optimizer(model.sae_parameters(), lr))


def build_sweep(name: str, shape, base, batch: torch.Tensor, seed: int, autocast, our_activation: dict, lr: float):
    """One optimizer step of every variant of the sweep system `name`, as a zero-argument callable."""
    preset, n = SWEEP_SYSTEMS[name]
    variants = [_variant(base, shape, preset, lr * (1 + i / n), seed + i, our_activation) for i in range(n)]
    plan = plan_shared(variants)
    micro_batch = {"input_ids": batch}

    def step():
        with autocast():
            shared = shared_pass(plan, variants, batch)
        for variant in variants:
            with autocast():
                total = variant_loss(variants, variant, micro_batch, shared)[0]
            total.backward()
            variant.optimizer.step()
            variant.optimizer.zero_grad(set_to_none=True)

    return step
