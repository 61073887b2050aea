"""The registry of model families, which resolves a site (`blocks.{i}.{kind}`) to a module to hook.

A model family is one `register_architecture` call that says where the blocks live and which
submodules produce the attention and MLP contributions; nothing else branches on model type.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from torch import nn
from transformers import PretrainedConfig

from ..sae.sites import Site, parse_site

@dataclass(frozen=True)
class ArchitectureSpec:
    """Where a model family keeps its blocks and residual contributions.

    Args:
        layers: dotted path from the `*ForCausalLM` to the `nn.ModuleList` of blocks.
        attn_out: dotted path inside a block to the module whose output is the attention's
            contribution to the residual stream.
        mlp_out: same for the MLP.
    """

    layers: str
    attn_out: str
    mlp_out: str


ARCHITECTURES: dict[str, ArchitectureSpec] = {}


def register_architecture(model_types: Union[str, list], spec: ArchitectureSpec) -> None:
    """Support a model family (by `config.model_type`)."""
    for model_type in [model_types] if isinstance(model_types, str) else model_types:
        ARCHITECTURES[model_type] = spec


register_architecture("gpt2", ArchitectureSpec("transformer.h", "attn", "mlp"))
register_architecture("gpt_neox", ArchitectureSpec("gpt_neox.layers", "attention", "mlp"))
register_architecture(
    ["llama", "mistral", "qwen2", "qwen3", "gemma"], ArchitectureSpec("model.layers", "self_attn", "mlp")
)
# Gemma 2/3 normalise each branch after it and before the residual add: the contribution is the norm's output.
register_architecture(
    ["gemma2", "gemma3_text"],
    ArchitectureSpec("model.layers", "post_attention_layernorm", "post_feedforward_layernorm"),
)


def architecture_for(config: PretrainedConfig) -> ArchitectureSpec:
    """The registered spec for this config's `model_type`, or a clear error."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"Unsupported architecture {model_type!r}; supported model types: {sorted(ARCHITECTURES)}. "
            "Add one with hf_e2e_sae.register_architecture()."
        )
    return ARCHITECTURES[model_type]


def num_blocks(config: PretrainedConfig) -> int:
    return int(config.num_hidden_layers)


def hidden_size(config: PretrainedConfig) -> int:
    return int(config.hidden_size)


def check_site(config: PretrainedConfig, site: Union[str, Site]) -> Site:
    """Parse `site` and check it exists in a model with this config (before touching any module)."""
    parsed = parse_site(site)
    architecture_for(config)
    n_blocks = num_blocks(config)
    if parsed.block >= n_blocks:
        raise ValueError(f"Site {str(parsed)!r}: block index {parsed.block} out of range; the model has {n_blocks} blocks (0..{n_blocks - 1}).")
    return parsed


@dataclass(frozen=True)
class ResolvedSite:
    """The module to hook for a site, and whether to rewrite its input (pre) or its output (post)."""

    module: nn.Module
    rewrite: str  # "input" | "output"


def resolve_site(model: nn.Module, site: Union[str, Site]) -> ResolvedSite:
    """Find the module behind `site` in a causal LM."""
    parsed = check_site(model.config, site)
    spec = architecture_for(model.config)
    block = model.get_submodule(spec.layers)[parsed.block]
    if parsed.kind == "resid_pre":
        return ResolvedSite(block, "input")
    if parsed.kind == "resid_post":
        return ResolvedSite(block, "output")
    return ResolvedSite(block.get_submodule(getattr(spec, parsed.kind)), "output")

