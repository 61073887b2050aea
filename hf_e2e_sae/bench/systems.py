"""The systems `hf-e2e-sae bench` compares; each `build(...)` returns one training step as a zero-argument callable.

    ours_e2e, ours_e2eds, ours_local   the trainer's fast step (`training.step.micro_batch_loss`) + fused Adam
    ours_e2e_reference                 the plain reference step the fast one is tested against
    ours_e2e_recompute                 ours_e2e with `recompute_suffix=True` (activation checkpointing after the SAE)
    lower_bound                        plain torch on the same model: embeddings + blocks before the site once,
                                       the clean suffix under no_grad, SAE forward, the patched suffix, full-logit
                                       KL + L1, backward w.r.t. the SAE only, Adam
    plain_forward                      one no-grad forward of the base model (the memory yardstick)
    ours_sweep_{e2e,local}_{4,8}       one step of an N-SAE sweep (`bench.sweep_systems`): all N SAEs trained
    sparsify_kl, sparsify_local        EleutherAI sparsify's own Trainer, `loss_fn="kl"` / `"fvu"`, one batch
                                       per call (TopK, its only activation family), when `eai-sparsify` is installed
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import tempfile

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from ..patching.patched_model import SAEPatchedModel
from ..sae.activations import ACTIVATIONS
from ..sae.config import SAEConfig
from ..sae.model import SparseAutoencoder
from ..training.architecture_config import apply_activation_defaults
from ..training.losses import LossConfig, default_downstream_sites
from ..training.step import micro_batch_loss, reference_micro_batch_loss
from ..training.trainer import make_optimizer
from .sweep_systems import SWEEP_SYSTEMS, build_sweep

LR = 5e-4
TOPK = 32


def random_model(shape, device: torch.device, seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=shape.vocab, n_embd=shape.d_model, n_layer=shape.n_layer,
                        n_head=max(1, shape.d_model // 64), n_positions=shape.ctx)
    return GPT2LMHeadModel(config).to(device).eval().requires_grad_(False)


def random_batch(shape, device: torch.device, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed + 1)
    return torch.randint(0, shape.vocab, (shape.batch, shape.ctx), generator=generator).to(device)


def available(name: str) -> bool:
    return not name.startswith("sparsify") or importlib.util.find_spec("sparsify") is not None


def our_activation() -> dict:
    """TopK k=32 (sparsify's architecture) when this library has it, else the paper's ReLU."""
    return {"activation": "topk", "k": TOPK} if "topk" in ACTIVATIONS else {"activation": "relu"}


def _autocast(device: torch.device, dtype: str):
    if dtype == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _ours(shape, device, batch, seed, dtype, preset: str, fast: bool, recompute_suffix: bool = False):
    model = SAEPatchedModel(random_model(shape, device, seed), SparseAutoencoder(SAEConfig(
        d_in=shape.d_model, dict_size=shape.dict_ratio * shape.d_model, site=shape.site, **our_activation())))
    model.to(device)
    optimizer = make_optimizer(model.sae_parameters(), LR)
    # As the trainer configures it (a TopK code gets no sparsity penalty)
    loss = LossConfig(**apply_activation_defaults({**our_activation(), "loss": {"preset": preset}})["loss"])
    downstream = default_downstream_sites(model.sites, shape.n_layer) if loss.downstream.coeff > 0 else []
    compute = functools.partial(micro_batch_loss, recompute_suffix=recompute_suffix) if fast \
        else reference_micro_batch_loss

    def step():
        with _autocast(device, dtype):
            total = compute(model, model, batch, loss, downstream, shape.d_model)[0]
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _lower_bound(shape, device, batch, seed, dtype):
    base = random_model(shape, device, seed)
    blocks, first = base.transformer.h, shape.n_layer // 2
    d, n = shape.d_model, shape.dict_ratio * shape.d_model
    torch.manual_seed(seed)
    enc, dec = torch.nn.Linear(d, n).to(device), torch.nn.Linear(n, d).to(device)
    optimizer = make_optimizer([*enc.parameters(), *dec.parameters()], LR)

    tuple_blocks = _blocks_return_tuples(base, batch)

    def run_from(x):
        """Logits of the model with block `first`'s input replaced by x; blocks before it are skipped."""
        def skip(*_a, **_k):
            return (x,) if tuple_blocks else x  # transformers 4.x blocks return tuples, 5.x tensors
        for block in blocks[:first]:
            block.forward = skip
        try:
            return base(batch, use_cache=False).logits
        finally:
            for block in blocks[:first]:
                del block.forward

    def step():
        with _autocast(device, dtype):
            with torch.no_grad():
                x = _prefix(base, batch, first)
                log_p = F.log_softmax(run_from(x).float(), -1)
            latents = torch.relu(enc(x.float()))
            x_hat = F.linear(latents, F.normalize(dec.weight, dim=0), dec.bias)
            log_q = F.log_softmax(run_from(x_hat.to(x.dtype)).float(), -1)
            kl = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1).mean()
            total = kl + latents.sum(-1).mean() / d
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _prefix(base, batch, first):
    """The input of block `first`: embeddings and blocks [0, first), stopped there."""
    record = {}

    class Stop(Exception):
        pass

    def grab(_module, args, kwargs):
        record["x"] = args[0] if args else kwargs["hidden_states"]
        raise Stop

    handle = base.transformer.h[first].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        base.transformer(batch, use_cache=False)
    except Stop:
        pass
    finally:
        handle.remove()
    return record["x"]


def _blocks_return_tuples(base, batch) -> bool:
    seen = {}
    handle = base.transformer.h[0].register_forward_hook(lambda _m, _a, out: seen.setdefault("out", out))
    with torch.no_grad():
        base(batch[:1, :2], use_cache=False)
    handle.remove()
    return isinstance(seen["out"], tuple)


def _plain_forward(shape, device, batch, seed, dtype):
    base = random_model(shape, device, seed)

    def step():
        with torch.no_grad(), _autocast(device, dtype):
            base(batch, use_cache=False)

    return step


def _sparsify(shape, device, batch, seed, dtype, loss_fn: str):
    from datasets import Dataset
    from sparsify import SparseCoderConfig, Trainer, TrainConfig

    base = random_model(shape, device, seed)
    if dtype == "bfloat16":
        base = base.to(torch.bfloat16)
    data = Dataset.from_dict({"input_ids": batch.cpu().tolist()}).with_format("torch")
    # sparsify hooks module outputs: the output of block first-1 is the input (resid_pre) of block first
    config = TrainConfig(SparseCoderConfig(k=TOPK, expansion_factor=shape.dict_ratio), batch_size=shape.batch,
                         loss_fn=loss_fn, optimizer="adam", lr=LR, hookpoints=[f"h.{shape.n_layer // 2 - 1}"],
                         log_to_wandb=False, save_dir=tempfile.mkdtemp(prefix="sparsify_bench_"), save_every=10**9)
    trainer = Trainer(config, data, base)
    trainer.save = lambda: None  # no checkpoint writing inside the timed step
    trainer.cfg.finetune = "bench"  # skip its first-step bias initialisation (done once, not per step)

    def step():
        trainer.global_step = 0  # one batch per fit(): the whole dataset, every call
        with contextlib.redirect_stdout(None):
            trainer.fit()

    return step


def _sweep(name: str, shape, device, batch, seed, dtype):
    return build_sweep(name, shape, random_model(shape, device, seed), batch, seed,
                       functools.partial(_autocast, device, dtype), our_activation(), LR)


def build(name: str, shape, device: torch.device, batch: torch.Tensor, seed: int, dtype: str):
    builders = {
        "ours_e2e": lambda: _ours(shape, device, batch, seed, dtype, "e2e", fast=True),
        "ours_e2e_reference": lambda: _ours(shape, device, batch, seed, dtype, "e2e", fast=False),
        "ours_e2e_recompute": lambda: _ours(shape, device, batch, seed, dtype, "e2e", fast=True, recompute_suffix=True),
        "ours_e2eds": lambda: _ours(shape, device, batch, seed, dtype, "e2e+ds", fast=True),
        "ours_local": lambda: _ours(shape, device, batch, seed, dtype, "local", fast=True),
        "lower_bound": lambda: _lower_bound(shape, device, batch, seed, dtype),
        "plain_forward": lambda: _plain_forward(shape, device, batch, seed, dtype),
        "sparsify_kl": lambda: _sparsify(shape, device, batch, seed, dtype, "kl"),
        "sparsify_local": lambda: _sparsify(shape, device, batch, seed, dtype, "fvu"),
        **{sweep: functools.partial(_sweep, sweep, shape, device, batch, seed, dtype) for sweep in SWEEP_SYSTEMS},
    }
    return builders[name]()
