"""The dictionary families, as one registry the parametrised tests run over (a new family is tested by adding it).

Each entry builds a patched tiny model holding that family's dictionary with the given activation:
`FAMILIES[name](base, activation, **options) -> SAEPatchedModel` (a `CLTPatchedModel` is one). `model.saes` holds
exactly the trainable parameters; `model.sites` name the records.
"""
from __future__ import annotations

import torch

from hf_e2e_sae import CLTConfig, CLTPatchedModel, CrossLayerTranscoder, SAEConfig, SAEPatchedModel, SparseAutoencoder
from tiny_models import HIDDEN


def _sae(base, activation: str, seed: int = 0, **options):
    torch.manual_seed(seed)
    return SAEPatchedModel(base, SparseAutoencoder(SAEConfig(d_in=HIDDEN, dict_size=64, activation=activation,
                                                             site="blocks.1.resid_pre", **options)))


def _transcoder(base, activation: str, seed: int = 0, skip: bool = False, **options):
    torch.manual_seed(seed)
    tc = SparseAutoencoder(SAEConfig(d_in=HIDDEN, dict_size=64, activation=activation, site="blocks.1.mlp_in",
                                     output_site="blocks.1.mlp_out", skip_connection=skip, **options))
    if skip:
        with torch.no_grad():
            tc.W_skip.normal_(0, 0.05)  # as after training: the skip term is part of every output
    return SAEPatchedModel(base, tc)


def _clt(base, activation: str, seed: int = 0, **options):
    torch.manual_seed(seed)
    return CLTPatchedModel(base, CrossLayerTranscoder(CLTConfig(d_in=HIDDEN, dict_size=48, layers=[0, 1],
                                                                activation=activation, **options)))


FAMILIES = {
    "sae": _sae,
    "transcoder": _transcoder,
    "skip_transcoder": lambda base, activation, **options: _transcoder(base, activation, skip=True, **options),
    "cross_layer_transcoder": _clt,
}
FAMILY_NAMES = sorted(FAMILIES)
