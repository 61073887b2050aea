"""E2E fine-tuning of an existing SAE (Karvonen 2025, arXiv 2503.17272): starting weights and the balanced KL.

`TrainConfig.init_from` names an SAE in any format `hf_e2e_sae.load_sae` reads (our saves, SAELens, sparsify,
e2e_sae, dictionary_learning; a folder or a Hub repo); training starts from its weights, and its site, width,
activation and basis options are kept.

`loss.preset: finetune` is KL + MSE (+ the sparsity term, whose coefficient should be the one the SAE was
trained with). `loss.kl.balance` rescales the KL every micro-batch so that its contribution keeps a fixed
ratio to the MSE's, whatever the two losses' scales (the KL of a good SAE is orders of magnitude below the
MSE of a wide residual stream, and both change during the run):

    loss = a * MSE + b * (MSE_d / KL_d) * KL + lambda * sparsity        (_d: detached values of this batch)

with a = `loss.reconstruction.coeff`, b = `loss.kl.coeff` (finetune preset: a = b = 0.5). The KL's gradient
contribution is then b / a times the MSE's (equal by default), and the loss *value* is (a + b) * MSE_d +
lambda * sparsity = MSE + lambda * sparsity, as in local training: the local run's lambda transfers unchanged.
"""
from __future__ import annotations

from typing import Mapping

import torch

from .loss_config import check_kl_balance  # noqa: F401  (re-exported: its old home)


def kl_scale(loss_config, terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Factor on `kl.coeff * KL`: MSE_d / KL_d when balancing (see the module docstring), else 1."""
    if not loss_config.kl.balance:
        return torch.ones((), device=terms["kl"].device)
    return terms["reconstruction"].detach() / terms["kl"].detach().clamp_min(1e-12)


def check_init_from(config) -> None:
    """Cheap config checks for `init_from` (the SAE itself is checked against the config once it is read)."""
    if config.init_from is not None and (not isinstance(config.init_from, str) or not config.init_from.strip()):
        raise ValueError(f"init_from must be a folder or Hub repo id, got {config.init_from!r}")
    if config.init_from is not None and len(config.sites) != 1:
        raise ValueError(f"init_from gives one SAE, but sites lists {len(config.sites)}: {config.sites}")


def check_initial_sae(config, sae) -> None:
    """The SAE named by `init_from` must sit where the config trains, and be as wide as it says (if it says)."""
    from ..sae.sites import parse_site

    site = str(parse_site(config.sites[0]))
    if sae.config.site is not None and sae.config.site != site:
        raise ValueError(f"init_from={config.init_from!r} is an SAE for site {sae.config.site!r}, but sites is "
                         f"{config.sites}: set sites=[{sae.config.site}]")
    if config.dict_size is not None and config.dict_size != sae.config.dict_size:
        raise ValueError(f"init_from={config.init_from!r} has {sae.config.dict_size} latents, but dict_size is "
                         f"{config.dict_size}: drop dict_size (the SAE's width is used) or make them equal")


def load_initial_sae(config):
    """The SAE `init_from` names, checked against the config, as the starting point of training."""
    from ..patching.base_models import portable_base_name
    from ..sae.hub_interface import hub_function

    sae = hub_function("load_sae")(config.init_from)
    check_initial_sae(config, sae)
    sae.config.site = sae.config.site or config.sites[0]
    sae.config.base_model_name_or_path = portable_base_name(config.base_model.name_or_path)
    sae.config.base_model_revision = config.base_model.revision
    sae.config.base_model_config_hash = None  # recomputed for this base model when patched
    return sae.train()
