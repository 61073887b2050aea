"""The pieces of a fast e2e step: run the blocks before the first SAE once, and stop before the LM head.

An e2e step runs the model twice on the same tokens: clean (the KL target) and with the SAEs. Everything before
the first SAE site is identical in both runs, so the clean run records the output of the last block before it
(`recording_prefix`) and the SAE run replays that output instead of running those blocks (`replaying_prefix`):
only the embeddings run twice. `capturing_head_input` records the input of the LM head (the final hidden states,
after the final norm) and stops the forward there, so a fused unembedding + loss can make logits chunk by chunk.

    n = prefix_blocks(model.sites)
    with torch.no_grad(), model.saes_disabled(), recording_prefix(model, n) as prefix, capturing_head_input(model) as h:
        model(ids)
    with replaying_prefix(model, n, prefix), capturing_head_input(model) as h_sae:
        out = model(ids)          # blocks [0, n) are not run; SAE hooks and later blocks run as usual

`recomputed_suffix` (opt-in, `TrainConfig.recompute_suffix`) makes the blocks after the last SAE keep only their
inputs for backward and run again there (activation checkpointing): their activations are most of what an e2e
step holds besides the logits, which the fused KL already never keeps.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..sae.sites import parse_site
from .architectures import architecture_for
from .patched_model import StopForward

# Sites inside or at the input of block i leave blocks [0, i) shared; resid_post of block i leaves [0, i].
_PREFIX_EXTRA = {"resid_post": 1}


def prefix_blocks(sites: list) -> int:
    """How many leading blocks compute the same thing with and without the SAEs at `sites`."""
    return min(parse_site(s).block + _PREFIX_EXTRA.get(parse_site(s).kind, 0) for s in sites)


def _blocks(model) -> nn.ModuleList:
    base = model.base_model
    return base.get_submodule(architecture_for(base.config).layers)


@contextlib.contextmanager
def recording_prefix(model, n_blocks: int) -> Iterator[dict]:
    """Record the output (exactly as the block returned it) of block `n_blocks - 1` into the yielded dict."""
    record: dict = {}
    if n_blocks == 0:
        yield record
        return

    def keep(_module, _args, output):
        record["output"] = output

    handle = _blocks(model)[n_blocks - 1].register_forward_hook(keep)
    try:
        yield record
    finally:
        handle.remove()


@contextlib.contextmanager
def replaying_prefix(model, n_blocks: int, record: dict) -> Iterator[None]:
    """Blocks `[0, n_blocks)` return the recorded output instead of computing; hooks on them still run."""
    if n_blocks == 0:
        yield
        return
    if "output" not in record:
        raise RuntimeError("replaying_prefix needs a record filled by recording_prefix in a previous forward pass")
    output = record["output"]
    blocks = list(_blocks(model))[:n_blocks]

    def replay(*_args, **_kwargs):
        return output  # the input is ignored: only the last replayed block's output reaches the next block

    try:
        for block in blocks:
            block.forward = replay
        yield
    finally:
        for block in blocks:
            block.__dict__.pop("forward", None)


def suffix_start(model) -> int:
    """The first block after every SAE site (and transcoder output site): its forward runs no SAE."""
    return max(parse_site(s).block for s in [*model.sites, *getattr(model, "output_sites", [])]) + 1


@contextlib.contextmanager
def recomputed_suffix(model) -> Iterator[None]:
    """Blocks from `suffix_start(model)` on keep only their inputs for backward and recompute the rest there
    (`torch.utils.checkpoint`, non-reentrant); values and gradients are unchanged (the base runs in eval mode)."""
    blocks = list(_blocks(model))[suffix_start(model):]

    def recomputing(forward):
        def run(*args, **kwargs):
            if not torch.is_grad_enabled():
                return forward(*args, **kwargs)
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return run

    try:
        for block in blocks:
            block.forward = recomputing(block.forward)
        yield
    finally:
        for block in blocks:
            block.__dict__.pop("forward", None)


def lm_head(model) -> Optional[nn.Module]:
    """The LM head if a fused unembedding + loss can replace it: a plain Linear, no logit soft-capping or scaling."""
    base = model.base_model
    head = base.get_output_embeddings()
    config = base.config
    plain = isinstance(head, nn.Linear) and type(head).forward is nn.Linear.forward
    adjusted = any(getattr(config, name, None) not in (None, 1, 1.0)
                   for name in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier"))
    return head if plain and not adjusted else None


@contextlib.contextmanager
def capturing_head_input(model) -> Iterator[dict]:
    """Record the LM head's input `(batch, seq, d_model)` as `record["hidden"]` and stop the forward pass there."""
    record: dict = {}
    head = model.base_model.get_output_embeddings()

    def capture(_module, args):
        record["hidden"] = args[0]
        raise StopForward

    handle = head.register_forward_pre_hook(capture)
    try:
        yield record
    finally:
        handle.remove()


def as_tokens(hidden: torch.Tensor) -> torch.Tensor:
    """`(batch, seq, d)` -> `(batch * seq, d)`."""
    return hidden.reshape(-1, hidden.shape[-1])
