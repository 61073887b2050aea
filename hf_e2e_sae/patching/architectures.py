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
        mlp_in: dotted path inside a block to the module whose *input* is what the MLP reads (after the
            block's pre-MLP norm): the `mlp_in` site, which transcoders read.
    """

    layers: str
    attn_out: str
    mlp_out: str
    mlp_in: str = "mlp"


ARCHITECTURES: dict[str, ArchitectureSpec] = {}


def register_architecture(model_types: Union[str, list], spec: ArchitectureSpec) -> None:
    """Support a model family (by `config.model_type`)."""
    for model_type in [model_types] if isinstance(model_types, str) else model_types:
        ARCHITECTURES[model_type] = spec


# In every registered family the MLP module is called on the normed hidden state (ln_2 / post_attention_layernorm /
# pre_feedforward_layernorm output), so mlp_in is the input of `mlp`.
register_architecture("gpt2", ArchitectureSpec("transformer.h", "attn", "mlp", mlp_in="mlp"))
register_architecture("gpt_neox", ArchitectureSpec("gpt_neox.layers", "attention", "mlp", mlp_in="mlp"))
register_architecture(
    ["llama", "mistral", "qwen2", "qwen3", "gemma"], ArchitectureSpec("model.layers", "self_attn", "mlp", mlp_in="mlp")
)
# Gemma 2/3 normalise each branch after it and before the residual add: the contribution is the norm's output.
register_architecture(
    ["gemma2", "gemma3_text"],
    ArchitectureSpec("model.layers", "post_attention_layernorm", "post_feedforward_layernorm", mlp_in="mlp"),
)

# Site kinds read at a module's input (all others at its output); resid_pre/resid_post are the block itself.
_INPUT_KINDS = frozenset({"mlp_in"})


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
    rewrite = "input" if parsed.kind in _INPUT_KINDS else "output"
    return ResolvedSite(block.get_submodule(getattr(spec, parsed.kind)), rewrite)

