"""The loss of one micro-batch: the fast path the trainer uses, and the plain reference path it is tested against.

Reference (`reference_micro_batch_loss`), straight from the paper:
    clean pass under no_grad (SAEs disabled) -> logits (+ downstream activations)
    SAE pass -> logits, latents, reconstructions -> compute_losses (chunked KL on logits)

Fast (`micro_batch_loss`), the same loss and gradients (tests/test_fast_step.py checks 1e-5 relative):
    clean pass under no_grad, recording the output of the last block before the first SAE site and the
        LM head's input (the pass stops there: no clean logits are made)
    SAE pass replaying that recorded output (the blocks before the first site do not run again) and stopping
        before the LM head
    KL fused with the unembedding (`fused_unembed_kl`): logits chunk by chunk, the gradient w.r.t. the final
        hidden state made in the forward, never tokens x vocab logits with a graph.
Local runs (no KL, no downstream term) stop after the last SAE in both paths and need no clean pass.
Matryoshka SAEs add one pass per prefix in both paths, each run the path's own way (`training/matryoshka.py`).
The fast path records TopK codes sparsely (`SAEPatchedModel.sparse_records`): k values and indices per token
instead of two tokens x dict_size tensors (latents, pre-activations) held until the loss.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Optional

import torch

from ..patching.shared_prefix import (
    as_tokens, capturing_head_input, lm_head, prefix_blocks, recomputed_suffix, recording_prefix, replaying_prefix)
from .fused_kl import auto_chunk_tokens, clean_probabilities
from .kl_backends import unembed_kl
from .losses import LossConfig, compute_losses, kl_divergence, token_weights
from .matryoshka import has_matryoshka, matryoshka_pass_losses
from .sharding import full_tensor


def reference_micro_batch_loss(model, raw, input_ids: torch.Tensor, loss: LossConfig, downstream_sites: list,
                               d_in: int, attention_mask: Optional[torch.Tensor] = None) -> tuple:
    """`(total, terms, sae_outputs)` the plain way. `model` is what the optimizer's gradients flow through (the
    DDP-wrapped patched model under Accelerate), `raw` the unwrapped `SAEPatchedModel`."""
    orig_logits = orig_downstream = None
    if loss.needs_logits:
        with torch.no_grad(), raw.saes_disabled():
            clean = raw(input_ids, attention_mask=attention_mask, cache_sites=downstream_sites)
        orig_logits, orig_downstream = clean.logits, clean.cached_activations
    out = model(input_ids=input_ids, attention_mask=attention_mask, cache_sites=downstream_sites,
                stop_early=not loss.needs_logits)
    total, terms = compute_losses(loss, out.sae_outputs, d_in, out.logits, orig_logits, out.cached_activations,
                                  orig_downstream, mask=attention_mask)
    if loss.needs_logits and has_matryoshka(raw):
        def run_pass():
            passed = raw(input_ids=input_ids, attention_mask=attention_mask, cache_sites=downstream_sites)
            kl = kl_divergence(orig_logits, passed.logits, attention_mask, loss.kl.chunk_tokens or auto_chunk_tokens(
                passed.logits.shape[-1], passed.logits.device)) if loss.kl.coeff > 0 else None
            return kl, passed.cached_activations

        total, terms = _add(total, terms, matryoshka_pass_losses(raw, out.sae_outputs, loss, terms, run_pass,
                                                                 orig_downstream, attention_mask))
    return total, terms, out.sae_outputs


def micro_batch_loss(model, raw, input_ids: torch.Tensor, loss: LossConfig, downstream_sites: list, d_in: int,
                     attention_mask: Optional[torch.Tensor] = None, recompute_suffix: bool = False) -> tuple:
    """`(total, terms, sae_outputs)` the fast way (same arguments as `reference_micro_batch_loss`).

    `recompute_suffix`: the blocks after the last SAE recompute their activations in the backward instead of
    keeping them (`patching.shared_prefix.recomputed_suffix`): less memory, one more forward of those blocks."""
    if not loss.needs_logits:
        with raw.sparse_records():
            return reference_micro_batch_loss(model, raw, input_ids, loss, downstream_sites, d_in, attention_mask)
    clean = clean_pass(raw, input_ids, downstream_sites, attention_mask)
    return patched_loss(model, raw, clean, input_ids, loss, downstream_sites, d_in, attention_mask, recompute_suffix)


@dataclasses.dataclass
class CleanPass:
    """What the clean pass of a fast e2e step leaves for the SAE pass: the recorded output of the shared blocks,
    the LM head's input (when the head can be fused), the output (its `cached_activations`: downstream sites)."""
    n_shared: int
    prefix: dict
    head_input: dict
    output: object
    probs: Optional[list] = None
    """The clean run's next-token probabilities, per KL chunk (`fused_kl.clean_probabilities`), when a sweep made
    them once for several variants' KLs; None: each KL makes its own."""
    probs_chunk_tokens: int = 0


def clean_pass(raw, input_ids: torch.Tensor, cache_sites: list, attention_mask: Optional[torch.Tensor] = None
               ) -> CleanPass:
    """The clean half of the fast step (under no_grad, SAEs disabled): stops before the LM head when it is fused.
    Several SAE passes may share it (`training.sweep_step`): `patched_loss` only reads it."""
    capture = capturing_head_input if lm_head(raw) is not None else _no_capture
    n_shared = prefix_blocks(raw.sites)
    with torch.no_grad(), raw.saes_disabled(), recording_prefix(raw, n_shared) as prefix, capture(raw) as h_orig:
        clean = raw(input_ids, attention_mask=attention_mask, cache_sites=cache_sites)
    return CleanPass(n_shared, prefix, h_orig, clean)


def patched_loss(model, raw, clean: CleanPass, input_ids: torch.Tensor, loss: LossConfig, downstream_sites: list,
                 d_in: int, attention_mask: Optional[torch.Tensor] = None, recompute_suffix: bool = False) -> tuple:
    """The SAE half of the fast step: replay the shared blocks, run the patched suffix, fused KL + the terms."""
    head = lm_head(raw)  # None: soft-capped or otherwise unusual heads get their logits made as usual
    capture = capturing_head_input if head is not None else _no_capture

    def sae_pass(module):
        recompute = recomputed_suffix(raw) if recompute_suffix else contextlib.nullcontext()
        with replaying_prefix(raw, clean.n_shared, clean.prefix), capture(raw) as h, raw.sparse_records(), recompute:
            return module(input_ids=input_ids, attention_mask=attention_mask, cache_sites=downstream_sites), h

    def fused_kl(h):
        if head is None or loss.kl.coeff == 0:
            return None
        weights = token_weights(attention_mask, input_ids.shape, input_ids.device)
        chunk = kl_chunk_tokens(loss, head, input_ids.device)
        probs = clean.probs if clean.probs_chunk_tokens == chunk else None
        return unembed_kl(loss.kl.backend, as_tokens(h["hidden"]), as_tokens(clean.head_input["hidden"]),
                          full_tensor(head.weight), full_tensor(head.bias), weights, chunk,  # whole if sharded
                          compile=loss.kl.compile, clean_probs=probs)

    out, h_sae = sae_pass(model)
    orig_downstream = {site: clean.output.cached_activations[site] for site in out.cached_activations}
    total, terms = compute_losses(loss, out.sae_outputs, d_in, out.logits, clean.output.logits, out.cached_activations,
                                  orig_downstream, mask=attention_mask, kl_term=fused_kl(h_sae))
    if has_matryoshka(raw):  # one more pass per prefix, the same way (training/matryoshka.py)
        def run_pass():
            passed, h_pass = sae_pass(raw)
            kl = fused_kl(h_pass) if head is not None else None if loss.kl.coeff == 0 else kl_divergence(
                clean.output.logits, passed.logits, attention_mask, loss.kl.chunk_tokens or auto_chunk_tokens(
                    passed.logits.shape[-1], passed.logits.device))
            return kl, passed.cached_activations

        total, terms = _add(total, terms, matryoshka_pass_losses(raw, out.sae_outputs, loss, terms, run_pass,
                                                                 orig_downstream, attention_mask))
    return total, terms, out.sae_outputs


def kl_chunk_tokens(loss: LossConfig, head, device) -> int:
    """Tokens per chunk of the fused KL: `loss.kl.chunk_tokens`, or a budget of chunk x vocab elements."""
    return loss.kl.chunk_tokens or auto_chunk_tokens(head.out_features, device)


def share_clean_probs(clean: CleanPass, raw, loss: LossConfig, device) -> None:
    """Make the clean run's probabilities once (`clean.probs`) for the fused KLs of `loss` that will read `clean`:
    each then does two vocabulary matmuls instead of three. Only a sweep calls it (it holds tokens x vocab floats,
    worth it for two or more KLs)."""
    head = lm_head(raw)
    chunk = kl_chunk_tokens(loss, head, device)
    clean.probs = clean_probabilities(as_tokens(clean.head_input["hidden"]), full_tensor(head.weight),
                                      full_tensor(head.bias), chunk)
    clean.probs_chunk_tokens = chunk


def _add(total: torch.Tensor, terms: dict, extra: tuple) -> tuple:
    """`(total + extra loss, terms with the extra logged values)`."""
    loss, logged = extra
    return total + loss, {**terms, **logged}


@contextlib.contextmanager
def _no_capture(_model):
    yield {}
