"""Training LoRA adapters around SAEs (`TrainConfig.lora`; Chen, Engels & Tegmark 2025, arXiv 2501.19406).

    setup_lora(model, config)            # inject the adapters, freeze the SAEs unless lora.train_sae
    lora_micro_batch_loss(...)           # the loss of one micro-batch

Per micro-batch (the plain reference path of `training.step`; the fast step's shared prefix and fused KL assume
that the base model is the same in the clean and the SAE pass, which an adapter breaks):
    clean pass under no_grad with the SAEs AND the adapter disabled (the original model) -> logits (+ downstream)
    SAE + LoRA pass -> logits, SAE outputs
    train_sae false: loss = KL(P_orig || P_sae+lora) (objective kl) or next-token CE (objective ce); the SAEs'
        terms (sparsity, MSE) are logged, not trained: a frozen SAE's sparsity would otherwise pull the adapters
        in earlier blocks towards inputs it encodes sparsely
    train_sae true: loss = the run's `loss` config (e.g. the finetune preset), plus the objective when that config
        does not already hold it (CE always; KL when loss.kl.coeff is 0)
"""
from __future__ import annotations

from typing import Optional

import torch

from ..patching.adapters import adapter_parameters, apply_lora
from .fused_kl import auto_chunk_tokens
from .losses import compute_losses, kl_divergence


def peft_config(lora):
    """The `peft.LoraConfig` of a `LoRAConfig` (task CAUSAL_LM)."""
    from peft import LoraConfig, TaskType

    return LoraConfig(task_type=TaskType.CAUSAL_LM, r=lora.r, lora_alpha=lora.alpha, lora_dropout=0.0,  # the base runs in eval mode
                      target_modules=list(lora.target_modules) if lora.target_modules else None,
                      layers_to_transform=list(lora.layers) if lora.layers else None)


def setup_lora(model, lora) -> list:
    """Inject adapters into the patched model's base; freeze the SAEs unless `lora.train_sae`. Returns the
    parameters to optimise (the adapters', then the SAEs' when they train)."""
    try:
        apply_lora(model, peft_config(lora))
    except ValueError as e:  # PEFT: a target module that does not exist, an unsupported layer type, ...
        raise ValueError(f"lora: {e}") from e
    model.saes.requires_grad_(lora.train_sae)
    return adapter_parameters(model) + (list(model.sae_parameters()) if lora.train_sae else [])


def lora_micro_batch_loss(model, raw, input_ids: torch.Tensor, config, downstream_sites: list, d_in: int,
                          attention_mask: Optional[torch.Tensor] = None) -> tuple:
    """`(total, terms, sae_outputs)` of one micro-batch of a LoRA run (`model`: what gradients flow through, the
    prepared patched model; `raw`: the unwrapped `SAEPatchedModel`; `config`: the `TrainConfig`)."""
    lora, loss = config.lora, config.loss
    with torch.no_grad(), raw.saes_disabled():  # no SAE, no adapter: the original model
        clean = raw(input_ids, attention_mask=attention_mask, cache_sites=downstream_sites)
    labels = input_ids if lora.objective == "ce" else None
    if labels is not None and attention_mask is not None:
        labels = input_ids.masked_fill(attention_mask == 0, -100)
    out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, cache_sites=downstream_sites)
    chunk = loss.kl.chunk_tokens or auto_chunk_tokens(out.logits.shape[-1], out.logits.device)
    kl = kl_divergence(clean.logits, out.logits, attention_mask, chunk)
    if lora.train_sae:
        total, terms = compute_losses(loss, out.sae_outputs, d_in, out.logits, clean.logits, out.cached_activations,
                                      clean.cached_activations, mask=attention_mask)
        if lora.objective == "ce":
            total = total + out.loss
        elif loss.kl.coeff == 0:
            total = total + kl
    else:
        with torch.no_grad():
            _, terms = compute_losses(loss.model_copy(update={"kl": loss.kl.model_copy(update={"coeff": 0.0})}),
                                      out.sae_outputs, d_in, sae_downstream=out.cached_activations,
                                      orig_downstream=clean.cached_activations, mask=attention_mask)
        total = kl if lora.objective == "kl" else out.loss
    terms = {**terms, "kl": kl.detach()}
    if out.loss is not None:
        terms["ce"] = out.loss.detach()
    return total, terms, out.sae_outputs
