"""The Hub layer: the save/load format, publishing in one commit, and model cards.

Importing it registers its functions with `hf_e2e_sae.sae.hub_interface`, through which the models and the
trainer reach it without importing it.
"""
from ..sae.hub_interface import register_hub_functions
from .card import render_model_card
from .cross_layer_format import FAMILY, load_clt_patched_model, save_clt_patched_model
from .format import FAMILY_LOADERS, MANIFEST_NAME, load_patched_model, read_manifest, save_patched_model
from .push import push_run_to_hub, push_to_hub, require_token

register_hub_functions(save_patched_model=save_patched_model, load_patched_model=load_patched_model,
                       push_to_hub=push_to_hub, push_run_to_hub=push_run_to_hub, require_token=require_token,
                       save_clt_patched_model=save_clt_patched_model)
FAMILY_LOADERS[FAMILY] = load_clt_patched_model

__all__ = ["MANIFEST_NAME", "load_patched_model", "push_run_to_hub", "push_to_hub", "read_manifest",
           "render_model_card", "require_token", "save_patched_model"]
