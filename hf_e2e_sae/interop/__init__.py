"""Other libraries' SAE formats: `load_sae` (SAELens, sparsify, e2e_sae, dictionary_learning, ours),
`export_sae` (SAELens), `convert`. One module per foreign format, each registered in `registry.FORMATS`.

Importing it lets `SAEPatchedModel.from_pretrained` and `TrainConfig.init_from` take foreign formats too
(through `hf_e2e_sae.sae.hub_interface`, as the lower layers may not import this one).
"""
from ..sae.hub_interface import register_hub_functions
from .registry import FORMATS, load_sae, register_format
from . import native, saelens, sparsify, e2e_sae, dictionary_learning  # noqa: F401,E402  (register, in detection order)
from .conversion import convert, export_sae, load_foreign_patched_model
from .sites import site_from_hook_name, transformer_lens_hook_name

register_hub_functions(load_sae=load_sae, load_foreign_patched_model=load_foreign_patched_model)

__all__ = ["FORMATS", "convert", "export_sae", "load_foreign_patched_model", "load_sae", "register_format",
           "site_from_hook_name", "transformer_lens_hook_name"]
