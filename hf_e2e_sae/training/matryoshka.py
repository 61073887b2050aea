"""The Matryoshka losses: each proper prefix of a Matryoshka SAE's dictionary (`sae/activations/matryoshka.py`)
pays the reconstruction-side loss of the run as if it alone were spliced in, times its weight.

    total += sum over Matryoshka SAEs s, prefixes m of  w_m * ( reconstruction.coeff * MSE(x_hat_m, x)       local
                                                               + kl.coeff * KL(P_orig || P_{x_hat_m})       e2e
                                                               + downstream.coeff * downstream MSE_m )     e2e+ds

where x_hat_m decodes only the first m latents of s's code (the whole dictionary keeps the usual terms). The local
part needs nothing but the recorded code: it is the registered loss term `matryoshka_reconstruction`
(`training/loss_terms.py`, so the activation-cache step has it too). The KL and downstream parts need one more pass of the model per prefix, from the prefix's site
on: `matryoshka_pass_losses`, which both steps (`training/step.py`, the fast and the reference one) call with their
own way of running a pass. In a prefix pass the SAEs before s splice in the reconstructions they made in the main
pass (their inputs are the same), s splices in x_hat_m, and later SAEs run on what reaches them (without updating
running statistics). Logged, unweighted by the coefficients: `matryoshka_reconstruction`, `matryoshka_kl`,
`matryoshka_downstream` (sums over prefixes of w_m times the prefix's term).
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional

import torch

from ..sae.activations.matryoshka import matryoshka_levels, prefix_reconstruction
from ..sae.sites import parse_site
from .finetune import kl_scale
from .losses import mse_loss


def has_matryoshka(raw) -> bool:
    """Whether any SAE of a patched model has Matryoshka prefixes."""
    return any(matryoshka_levels(sae) for sae in raw.saes.values())


def matryoshka_pass_losses(raw, sae_outputs: Mapping, loss, terms: Mapping, run_pass: Callable,
                           orig_downstream: Optional[Mapping], mask: Optional[torch.Tensor]) -> tuple:
    """`(loss to add, {logged name: value})` of the KL / downstream parts, one pass per Matryoshka prefix.

    Args:
        raw: the `SAEPatchedModel` of the main pass; `sae_outputs` its records.
        terms: the main pass's terms (the KL balance of the finetune preset reads them).
        run_pass: `run_pass() -> (kl or None, {downstream site: activation})`, a forward of the step's own kind
            (fast or reference) whose KL is against the clean pass.
        orig_downstream: the clean pass's downstream activations (e2e+ds).
    """
    sites = sorted(sae_outputs, key=lambda s: parse_site(s).position)
    total, kl_sum, ds_sum = 0.0, 0.0, 0.0
    for site in sites:
        sae = raw.sae(site)
        levels = matryoshka_levels(sae)
        if levels and getattr(sae.config, "output_site", None) is not None:
            raise NotImplementedError(f"Matryoshka transcoder at {site!r}: prefix passes need an SAE (local "
                                      "training of Matryoshka transcoders works).")
        before = {s: sae_outputs[s].reconstruction for s in sites if parse_site(s).position < parse_site(site).position}
        for size, weight in levels:
            with raw.splicing({**before, site: prefix_reconstruction(sae, sae_outputs[site], size)}):
                kl, downstream = run_pass()
            if kl is not None:
                kl_sum = kl_sum + weight * kl
                total = total + weight * loss.kl.coeff * kl_scale(loss, terms) * kl
            if loss.downstream.coeff > 0:
                per_site = [mse_loss(downstream[s], orig_downstream[s], mask) for s in orig_downstream]
                ds = sum(per_site) / len(per_site)
                ds_sum = ds_sum + weight * ds
                total = total + weight * loss.downstream.coeff * ds
    logged = {}
    if loss.kl.coeff > 0:
        logged["matryoshka_kl"] = torch.as_tensor(kl_sum).detach()
    if loss.downstream.coeff > 0:
        logged["matryoshka_downstream"] = torch.as_tensor(ds_sum).detach()
    return total, logged
