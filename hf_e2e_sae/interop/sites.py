"""Foreign hook names -> our sites, by rule (no base model needed), and our sites -> TransformerLens names.

    blocks.6.hook_resid_pre      TransformerLens, SAELens              -> blocks.6.resid_pre
    blocks-6-hook_resid_pre      e2e_sae state-dict prefixes           -> blocks.6.resid_pre
    layers.6, transformer.h.6    HF module outputs (sparsify)          -> blocks.6.resid_post
    layers.6.mlp / .self_attn    HF submodule outputs                  -> blocks.6.mlp_out / attn_out
    resid_post_layer_6           dictionary_learning submodule names   -> blocks.6.resid_post

Whether the site exists in a given base model, and has the SAE's width, is checked when the SAE is patched
(`SAEPatchedModel` validates every site before adding a hook).
"""
from __future__ import annotations

import re
from typing import Optional

from ..sae.sites import Site, parse_site

_HF_BLOCK = re.compile(r"^(?:[A-Za-z_][\w]*\.)*(?:layers|h|blocks|layer)\.(\d+)(?:\.([A-Za-z_]+))?$")
_HF_SUBMODULES = {None: "resid_post", "mlp": "mlp_out", "attn": "attn_out", "self_attn": "attn_out",
                  "attention": "attn_out"}
_DICTIONARY_LEARNING = re.compile(r"^(resid_pre|resid_post|attn_out|mlp_out)_layer_(\d+)$")
# TransformerLens short names -> Hub ids, for the base models foreign SAEs most often name.
_TL_TO_HUB = {"gpt2": "openai-community/gpt2", "gpt2-small": "openai-community/gpt2",
              "gpt2-medium": "openai-community/gpt2-medium", "tiny-stories-1M": "roneneldan/TinyStories-1M"}


def site_from_hook_name(name: str) -> Optional[str]:
    """Our canonical site for a foreign hook name, or None when no rule applies (e.g. `hook_z`, `resid_mid`)."""
    name = str(name).strip()
    for candidate in (name, name.replace("-", ".")):
        try:
            return str(parse_site(candidate))
        except ValueError:
            pass
    match = _DICTIONARY_LEARNING.match(name)
    if match:
        return str(Site(int(match.group(2)), match.group(1)))
    match = _HF_BLOCK.match(name)
    if match and match.group(2) in _HF_SUBMODULES:
        return str(Site(int(match.group(1)), _HF_SUBMODULES[match.group(2)]))
    return None


def transformer_lens_hook_name(site: str) -> str:
    """`blocks.6.resid_pre` -> `blocks.6.hook_resid_pre` (the spelling SAELens and Neuronpedia expect)."""
    parsed = parse_site(site)
    return f"blocks.{parsed.block}.hook_{parsed.kind}"


def hub_model_name(name: Optional[str]) -> Optional[str]:
    """A TransformerLens model name as the Hub id its weights come from (unknown names pass through)."""
    return _TL_TO_HUB.get(name, name) if name else None


def transformer_lens_model_name(name: Optional[str]) -> Optional[str]:
    """A Hub id as TransformerLens spells it where it differs (`openai-community/gpt2` -> `gpt2`)."""
    if not name:
        return name
    reverse = {"openai-community/gpt2": "gpt2", "openai-community/gpt2-medium": "gpt2-medium"}
    return reverse.get(name, name)
