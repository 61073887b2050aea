"""Feeding `SAEPatchedModel` runs to the `evaluate` fidelity module that ships in the package.

    metric = evaluate.load(FIDELITY_METRIC_PATH)
    metric.add_batch(**fidelity_inputs(model, input_ids))
    metric.compute()
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

FIDELITY_METRIC_PATH = str(Path(__file__).resolve().parent / "fidelity_metric")
"""Pass to `evaluate.load` (a local folder: no network)."""


@torch.no_grad()
def fidelity_inputs(model, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                    site: Optional[str] = None) -> dict:
    """The `add_batch` columns for one batch through an `SAEPatchedModel` (clean and patched run)."""
    site = site or model.sites[0]
    device = model.device
    input_ids = input_ids.to(device)
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
    was_training = model.training
    model.eval()
    with model.saes_disabled():
        clean = model(input_ids, attention_mask=mask).logits
    patched = model(input_ids, attention_mask=mask)
    model.train(was_training)
    out = patched.sae_outputs[site]
    columns = {"input_ids": input_ids, "attention_mask": mask, "logits_orig": clean, "logits_sae": patched.logits,
               "sae_input": out.target, "latents": out.latents, "reconstruction": out.reconstruction}
    return {name: t.detach().cpu().float().numpy() if t.is_floating_point() else t.cpu().numpy()
            for name, t in columns.items()}
