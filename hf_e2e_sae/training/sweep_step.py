"""One micro-batch of a sweep: the base model's shared work once, then each variant's own SAE pass and loss.

Every variant is an `SAEPatchedModel` over the same frozen base model (each with its own hooks; only the active
variant's SAEs are enabled at a time). Per micro-batch:

    shared (no_grad, all SAEs disabled), once:
        any e2e / e2e+ds variant: the fast step's clean pass (`training.step.clean_pass`): the output of the blocks
            before the site, the LM head's input, the downstream activations (the union over the variants) and,
            for local variants of a one-site sweep, the activation at the site
        two or more variants with a KL: the clean run's next-token probabilities, per KL chunk
            (`training.step.share_clean_probs`), so each variant's fused KL does two vocabulary matmuls, not three
        local only, one site: a pass stopped at the site, recording its activation
    per variant (with grad):
        e2e / e2e+ds: `training.step.patched_loss` on the shared clean pass (replays the shared blocks)
        local, one site (or from the activation cache): the SAE alone on the shared activation
            (`training.cached_step.cached_micro_batch_loss`)
        local at several sites or a transcoder: its own fast step (later SAEs read earlier reconstructions)

Each path computes what a separate run's step computes, op for op, so a variant's weights equal a separate run's.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
from typing import Iterator, Optional

import torch

from ..patching.shared_prefix import lm_head
from ..sae.sites import parse_site
from .cached_step import cached_micro_batch_loss
from .loss_terms import add_loss_terms
from .losses import LossConfig
from .step import CleanPass, clean_pass, micro_batch_loss, patched_loss, share_clean_probs


@dataclasses.dataclass
class SharedPlan:
    """What the variants share per micro-batch (fixed for the whole sweep)."""
    needs_clean: bool
    """Some variant needs the clean model's logits or later activations."""
    clean_sites: list
    """Sites the clean pass caches: every variant's downstream sites and, for `site_shared`, the SAE site."""
    site: Optional[str]
    """The one SAE site whose activation local variants read from the shared pass (None: they run their own)."""
    kl_loss: Optional[LossConfig] = None
    """The loss config (chunking) of the KLs that share the clean probabilities; None: nothing shared."""


@dataclasses.dataclass
class SharedBatch:
    clean: Optional[CleanPass] = None
    site_input: Optional[dict] = None


def plan_shared(variants: list) -> SharedPlan:
    """The shared work of `variants` (`trainer._Run`s with the same sites)."""
    needs_clean = any(v.config.loss.needs_logits for v in variants)
    sites = variants[0].raw.sites
    transcoder = any(v.raw.output_sites for v in variants)
    site = sites[0] if len(sites) == 1 and not transcoder and not all(v.config.loss.needs_logits for v in variants) \
        else None
    clean_sites = list(dict.fromkeys(s for v in variants for s in v.downstream_sites))
    if needs_clean and site is not None:
        clean_sites.append(site)
    return SharedPlan(needs_clean, clean_sites, site, _shared_kl_loss(variants))


def _shared_kl_loss(variants: list) -> Optional[LossConfig]:
    """The loss config of the largest group (two or more) of variants whose fused KLs can read one set of clean
    probabilities: the same chunking, a fusable LM head, and no explicit `loss.kl.backend=liger` in the sweep
    (liger makes its own clean half; `auto` shares, as the shared half saves a third of every variant's KL)."""
    kls = [v.config.loss for v in variants if v.config.loss.needs_logits and v.config.loss.kl.coeff > 0]
    if lm_head(variants[0].raw) is None or any(loss.kl.backend == "liger" for loss in kls):
        return None
    chunks = collections.Counter(loss.kl.chunk_tokens for loss in kls)
    if not chunks or chunks.most_common(1)[0][1] < 2:
        return None
    chunk = chunks.most_common(1)[0][0]
    return next(loss for loss in kls if loss.kl.chunk_tokens == chunk)


@contextlib.contextmanager
def only_enabled(variants: list, active=None) -> Iterator[None]:
    """SAEs of every variant but `active` disabled (all of them when `active` is None)."""
    with contextlib.ExitStack() as stack:
        for variant in variants:
            if variant is not active:
                stack.enter_context(variant.raw.saes_disabled())
        yield


def shared_pass(plan: SharedPlan, variants: list, input_ids: torch.Tensor) -> SharedBatch:
    """The base model's work the variants share for one micro-batch (no_grad, every SAE disabled)."""
    raw = variants[0].raw
    shared = SharedBatch()
    with only_enabled(variants):
        if plan.needs_clean:
            shared.clean = clean_pass(raw, input_ids, plan.clean_sites)
            if plan.kl_loss is not None:
                share_clean_probs(shared.clean, raw, plan.kl_loss, input_ids.device)
            if plan.site is not None:
                shared.site_input = {plan.site: shared.clean.output.cached_activations[str(parse_site(plan.site))]}
        elif plan.site is not None:
            with torch.no_grad():
                out = raw(input_ids, cache_sites=[plan.site], stop_early=True)
            shared.site_input = {plan.site: out.cached_activations[str(parse_site(plan.site))]}
    return shared


def variant_loss(variants: list, variant, batch: dict, shared: Optional[SharedBatch]) -> tuple:
    """`(total, terms, sae_outputs)` of `variant` on one micro-batch, as its own run's step computes them.

    `batch` is the loader's item: `{"input_ids": ...}`, or `{site: activation}` from an activation cache
    (`shared` is then None)."""
    config = variant.config
    if shared is None:  # activation cache: only the SAE runs
        return cached_micro_batch_loss(variant, batch)
    if not config.loss.needs_logits and shared.site_input is not None:
        return cached_micro_batch_loss(variant, shared.site_input)
    input_ids = batch["input_ids"]
    with only_enabled(variants, variant):
        if config.loss.needs_logits:
            total, terms, outs = patched_loss(variant.model, variant.raw, shared.clean, input_ids, config.loss,
                                              variant.downstream_sites, variant.d_in,
                                              recompute_suffix=config.recompute_suffix)
        else:
            total, terms, outs = micro_batch_loss(variant.model, variant.raw, input_ids, config.loss,
                                                  variant.downstream_sites, variant.d_in)
    total, terms = add_loss_terms(variant.loss_terms, total, terms, outs,
                                  {site: variant.raw.sae(site) for site in outs}, variant.d_in)
    return total, terms, outs
