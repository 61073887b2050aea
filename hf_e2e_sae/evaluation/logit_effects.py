"""Direct logit effect of SAE features: each dictionary element through the final norm's scale and the unembedding.

    effects = direct_logit_effects(model, "blocks.2.resid_pre", k=10)
    effects["logit_top_ids"][f]      # the k tokens feature f promotes most, (dict_size, k)

The effect of feature f is `W_U (gamma * d_f)` with d_f its unit-norm dictionary element and gamma the
final norm's elementwise scale (the norm's centring and division by the norm are input-dependent and
left out, as is usual for a "direct" effect). Where each model family keeps its final norm is one
`register_final_norm` call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch
from torch import nn

from ..sae.sites import parse_site


@dataclass(frozen=True)
class FinalNorm:
    """Dotted path from the `*ForCausalLM` to the final norm, and the offset its weight is stored with."""

    path: str
    weight_offset: float = 0.0  # Gemma stores (scale - 1)


FINAL_NORMS: dict = {}


def register_final_norm(model_types: Union[str, list], norm: FinalNorm) -> None:
    for model_type in [model_types] if isinstance(model_types, str) else model_types:
        FINAL_NORMS[model_type] = norm


register_final_norm("gpt2", FinalNorm("transformer.ln_f"))
register_final_norm("gpt_neox", FinalNorm("gpt_neox.final_layer_norm"))
register_final_norm(["llama", "mistral", "qwen2", "qwen3"], FinalNorm("model.norm"))
register_final_norm(["gemma", "gemma2", "gemma3_text"], FinalNorm("model.norm", weight_offset=1.0))


def final_norm_scale(base_model: nn.Module) -> torch.Tensor:
    """The final norm's elementwise scale `(d,)` (ones when the norm has no weight)."""
    model_type = base_model.config.model_type
    if model_type not in FINAL_NORMS:
        raise ValueError(f"No final norm registered for {model_type!r}; known: {sorted(FINAL_NORMS)}. "
                         "Add one with register_final_norm().")
    norm = FINAL_NORMS[model_type]
    module = base_model.get_submodule(norm.path)
    weight = getattr(module, "weight", None)
    if weight is None:
        return torch.ones(base_model.config.hidden_size)
    return weight.detach().float() + norm.weight_offset


@torch.no_grad()
def direct_logit_effects(model, site: str, k: int = 10, chunk: int = 2048) -> dict:
    """Top-k promoted and suppressed tokens per feature of the SAE at `site` of an `SAEPatchedModel`.

    Returns:
        `{"logit_top_ids", "logit_top_values", "logit_bottom_ids", "logit_bottom_values"}`, each `(dict_size, k)`;
        bottom values are the most negative effects, most negative first.
    """
    sae = model.sae(str(parse_site(site)))
    unembed = model.base_model.get_output_embeddings().weight.detach().float().cpu()  # (vocab, d)
    scale = final_norm_scale(model.base_model).cpu()
    directions = sae.dictionary.detach().float().cpu() * scale  # (dict_size, d)
    k = min(k, unembed.shape[0])
    parts: dict = {"logit_top_ids": [], "logit_top_values": [], "logit_bottom_ids": [], "logit_bottom_values": []}
    for start in range(0, directions.shape[0], chunk):
        effect = directions[start:start + chunk] @ unembed.T  # (chunk, vocab)
        top = effect.topk(k, dim=1)
        bottom = effect.topk(k, dim=1, largest=False)
        parts["logit_top_ids"].append(top.indices.to(torch.int32))
        parts["logit_top_values"].append(top.values)
        parts["logit_bottom_ids"].append(bottom.indices.to(torch.int32))
        parts["logit_bottom_values"].append(bottom.values)
    return {name: torch.cat(chunks) for name, chunks in parts.items()}
