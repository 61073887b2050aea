"""What a training run trains: the frozen base model (whole, or empty for sharded loading) and the SAEs, seeded the
same way on every process and in every sweep variant; a fine-tune's starting SAE or a cross-layer transcoder."""
from __future__ import annotations

import torch
from accelerate.utils import set_seed
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..patching.architectures import hidden_size
from ..patching.base_models import portable_base_name, resolve_base_model
from ..patching.patched_model import SAEPatchedModel
from ..sae.config import SAEConfig
from ..sae.model import SparseAutoencoder
from .architecture_config import activation_options
from .config import TrainConfig
from .cross_layer_setup import build_clt_patched_model
from .finetune import load_initial_sae
from .sharded_loading import empty_base_model


def build_patched_model(config: TrainConfig) -> tuple:
    """Load the frozen base model and tokenizer; create seeded SAEs at the configured sites."""
    initial = load_initial_sae(config) if config.init_from else None  # fine-tuning: read and check it first
    base, tokenizer = load_base_model(config)
    if initial is not None:
        return SAEPatchedModel(base, {config.sites[0]: initial}), tokenizer
    if config.cross_layer:
        return build_clt_patched_model(config, base), tokenizer
    return SAEPatchedModel(base, build_saes(config, base)), tokenizer


def load_base_model(config: TrainConfig) -> tuple:
    """The frozen base model and its tokenizer, as `config.base_model` names them."""
    base_cfg = config.base_model
    where = resolve_base_model(base_cfg.name_or_path)
    # trust_remote_code=False: never a stdin prompt, never a model's own code (training/preflight.py says so first)
    tokenizer = AutoTokenizer.from_pretrained(where, revision=base_cfg.revision, trust_remote_code=False)
    if base_cfg.shard:  # empty (meta) here; each process loads its own shards in shard_base_model
        base = empty_base_model(where, base_cfg.revision, getattr(torch, base_cfg.dtype))
    else:
        base = AutoModelForCausalLM.from_pretrained(where, revision=base_cfg.revision,
                                                    dtype=getattr(torch, base_cfg.dtype), trust_remote_code=False)
    return base, tokenizer


def build_saes(config: TrainConfig, base) -> dict:
    """{site: new SAE}, each seeded with `config.seed + i` (the same on every process, in every sweep variant)."""
    base_cfg = config.base_model
    saes = {}
    for i, site in enumerate(config.sites):
        set_seed(config.seed + i)  # identical on every process
        saes[site] = SparseAutoencoder(SAEConfig(
            d_in=hidden_size(base.config), dict_size=config.dict_size, dict_size_ratio=config.dict_size_ratio,
            activation=config.activation, site=site, base_model_name_or_path=portable_base_name(base_cfg.name_or_path),
            base_model_revision=base_cfg.revision, init_decoder_orthogonal=config.init_decoder_orthogonal,
            output_site=config.output_sites[i] if config.output_sites else None,
            skip_connection=config.skip_connection, **activation_options(config)))
    return saes
