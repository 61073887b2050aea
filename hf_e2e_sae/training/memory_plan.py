"""How much memory a training run needs per device, from shapes alone (no weights loaded): `hf-e2e-sae plan`.

    plan = plan_memory(PlanInputs(base_config, sites, dict_size, batch_size=8, context_length=1024))
    plan["total"], plan["components"]      # bytes per device

Per device = base weights (a 1/N shard plus the gathered root and blocks with `base_model.shard`) + SAE parameters
+ Adam's two states (+ DDP's gradient buckets with 2+ processes) + the larger of one training step and one
evaluation batch. The step's peak is the largest of three phases of the fast e2e step (`training.step`):

* the SAE forward: the encoder's pre-activations (tokens x dict) and the column-normalised decoder (d x dict);
* the KL: the activations the blocks after the first SAE keep for the backward (per block and token about
  10 d + 3 d_ffn values: norms, q/k/v, attention output, MLP in/out/activation; with `recompute_suffix` only each
  block's input, plus one block's worth while it is recomputed), dense latents of non-TopK SAEs, the head inputs
  of both runs and their gradient, and the KL chunk's temporaries (about 3 chunk x vocab float32 tensors);
* the backward into the SAEs: their gradients plus the decoder normalisation's (d x dict) gradient.

Local runs skip the KL phase. The step terms are what the bench measures as a step's peak (`bench.benchmark`:
the peak over the memory held before the step); the constants above were read off saved-tensor counts and
checked against those measurements at the bench's shapes A and B (`tests/test_plan.py`: within 20%).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..patching.architectures import architecture_for, hidden_size, num_blocks
from ..sae.sites import parse_site
from ..sae.activations.registry import ACTIVATION_SPECS
from .fused_kl import auto_chunk_tokens
from .losses import default_downstream_sites

__all__ = ["PlanInputs", "plan_memory", "plan_for_config", "plan_sweep", "shared_pass_bytes", "parse_size",
           "format_plan", "remedy"]

_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_KL_TEMPORARIES = 3  # (chunk, vocab) float32 tensors alive at once in the fused KL
_EVAL_LOGITS = 3  # (tokens, vocab) float32 tensors of one evaluation batch: clean and SAE logits, a log-softmax


@dataclass(frozen=True)
class PlanInputs:
    """The shapes a run's memory depends on."""

    base_config: object
    sites: list
    dict_size: int
    batch_size: int = 8
    context_length: int = 1024
    base_dtype: str = "float32"
    needs_logits: bool = True
    sparse_code: bool = False
    k: int = 32
    chunk_tokens: Optional[int] = None
    recompute_suffix: bool = False
    num_processes: int = 1
    shard: bool = False
    device_type: str = "cuda"
    eval_batch_size: Optional[int] = None
    base_params: dict = field(default_factory=dict)  # {"total", "block"}; counted from a meta model when empty


def count_base_parameters(base_config) -> dict:
    """`{"total", "block"}` parameter counts of the causal LM `base_config` describes (tied weights once), from a
    model built on the meta device: no memory, no weights."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(base_config)
    model.tie_weights()
    blocks = model.get_submodule(architecture_for(base_config).layers)
    return {"total": sum(p.numel() for p in model.parameters()), "block": sum(p.numel() for p in blocks[0].parameters())}


def _ffn(base_config, d: int) -> int:
    for key in ("intermediate_size", "n_inner", "ffn_dim", "d_ff"):
        if getattr(base_config, key, None):
            return int(getattr(base_config, key))
    return 4 * d


def _vocab(base_config) -> int:
    return int(getattr(base_config, "vocab_size"))


def plan_memory(inputs: PlanInputs) -> dict:
    """Bytes per device: `{"total", "components": {name: bytes}, "step_phases": {...}, "step", "eval"}`."""
    cfg = inputs.base_config
    d, n, vocab, layers = hidden_size(cfg), inputs.dict_size, _vocab(cfg), num_blocks(cfg)
    tokens, b = inputs.batch_size * inputs.context_length, _BYTES[inputs.base_dtype]
    counts = inputs.base_params or count_base_parameters(cfg)
    n_saes = len(inputs.sites)
    sae_params = n_saes * (2 * d * n + n + d) * 4

    base = counts["total"] * b
    if inputs.shard and inputs.num_processes > 1:  # 1/N of everything + the root (embeddings, head) and 2 blocks whole
        root = counts["total"] - layers * counts["block"]
        base = base / inputs.num_processes + (root + 2 * counts["block"]) * b * (1 - 1 / inputs.num_processes)
    comps = {"base_weights": int(base), "sae_parameters": sae_params, "adam_states": 2 * sae_params}
    if inputs.num_processes > 1:
        comps["ddp_buckets"] = sae_params

    first = min(parse_site(site).block for site in inputs.sites)
    suffix = max(0, layers - first)
    per_block = (10 * d + 3 * _ffn(cfg, d)) * tokens * b
    kept = suffix * tokens * d * b + per_block if inputs.recompute_suffix else suffix * per_block
    latents = n_saes * tokens * (inputs.k * 8 if inputs.sparse_code else 2 * n * 4)
    head = 3 * tokens * d * 4
    chunk = min(tokens, inputs.chunk_tokens or auto_chunk_tokens(vocab, torch.device(inputs.device_type)))
    kl_temporaries = _KL_TEMPORARIES * chunk * vocab * 4
    phases = {"sae_forward": n_saes * (tokens * n + d * n) * 4,
              "kl": (kept + latents + head + kl_temporaries) if inputs.needs_logits else 0,
              "backward": sae_params + n_saes * d * n * 4}
    step = max(phases.values())
    eval_tokens = (inputs.eval_batch_size or inputs.batch_size) * inputs.context_length
    evaluation = _EVAL_LOGITS * eval_tokens * vocab * 4 + per_block
    comps.update({"step_peak": step, "evaluation_peak": evaluation})
    details = {"activations_kept": kept + latents, "kl_chunk_temporaries": kl_temporaries if inputs.needs_logits else 0,
               "kl_chunk_tokens": chunk}
    total = sum(v for k, v in comps.items() if not k.endswith("_peak")) + max(step, evaluation)
    return {"total": int(total), "components": comps, "step_phases": phases, "details": details,
            "step": step, "eval": evaluation}


def plan_for_config(config, base_config, num_processes: int = 1, device_type: str = "cuda") -> dict:
    """`plan_memory` for a `TrainConfig` (its base model's config read separately, e.g. by preflight); a config
    with a `sweep` is planned as all its variants trained together (`plan_sweep`)."""
    if config.sweep:
        from .sweep_config import expand_sweep

        variants = [variant for _, variant in expand_sweep(config)]
        plans = [_plan_one(variant, base_config, num_processes, device_type) for variant in variants]
        return plan_sweep(plans, _sweep_shared_bytes(variants, base_config))
    return _plan_one(config, base_config, num_processes, device_type)


def _plan_one(config, base_config, num_processes: int, device_type: str) -> dict:
    spec = ACTIVATION_SPECS.get(config.activation)
    d = hidden_size(base_config)
    dict_size = config.dict_size or int(config.dict_size_ratio * d)
    return plan_memory(PlanInputs(
        base_config=base_config, sites=list(config.sites), dict_size=dict_size, batch_size=config.batch_size,
        context_length=config.data.context_length, base_dtype=config.base_model.dtype,
        needs_logits=config.loss.needs_logits, sparse_code=bool(spec and spec.sparse_code),
        k=getattr(config, "k", None) or 32, chunk_tokens=config.loss.kl.chunk_tokens,
        recompute_suffix=config.recompute_suffix, num_processes=num_processes, shard=config.base_model.shard,
        device_type=device_type, eval_batch_size=config.eval_batch_size))


def shared_pass_bytes(tokens: int, d_model: int, vocab: int, downstream_sites: int, kls: int) -> int:
    """What a sweep's shared clean pass keeps through the variants' steps (`training.sweep_step`): the LM head's
    input and the site's activation, the downstream activations and, when two or more variants have a KL, the
    clean next-token probabilities (tokens x vocab float32)."""
    return (2 + downstream_sites) * tokens * d_model * 4 + (tokens * vocab * 4 if kls >= 2 else 0)


def _sweep_shared_bytes(variants: list, base_config) -> int:
    config = variants[0]
    ds_sites = {site for v in variants if v.loss.downstream.coeff > 0
                for site in v.loss.downstream.sites or default_downstream_sites(v.sites, num_blocks(base_config))}
    return shared_pass_bytes(config.batch_size * config.data.context_length, hidden_size(base_config),
                             _vocab(base_config), len(ds_sites), sum(v.loss.kl.coeff > 0 for v in variants))


def plan_sweep(plans: list, shared_bytes: int) -> dict:
    """One device's memory for N variants trained together, one after the other within each step: the base
    weights once; every variant's SAEs, Adam states, DDP buckets and gradients (a variant's gradients live from
    its backward to the optimizer step that ends the step); the shared pass; the largest variant's step or
    evaluation on top."""
    comps = dict(plans[0]["components"])
    for name in ("sae_parameters", "adam_states", "ddp_buckets"):
        if name in comps:
            comps[name] = sum(plan["components"][name] for plan in plans)
    comps["sweep_gradients"] = sum(plan["components"]["sae_parameters"] for plan in plans[1:])
    comps["shared_pass"] = shared_bytes
    step = max(plan["step"] for plan in plans)
    evaluation = max(plan["eval"] for plan in plans)
    comps.update({"step_peak": step, "evaluation_peak": evaluation})
    largest = max(plans, key=lambda plan: plan["step"])
    total = sum(v for k, v in comps.items() if not k.endswith("_peak")) + max(step, evaluation)
    return {"total": int(total), "components": comps, "step_phases": largest["step_phases"],
            "details": {**largest["details"], "variants": len(plans)}, "step": step, "eval": evaluation}


def remedy(plan: dict, config) -> str:
    """The one change that saves the most memory in `plan` for `config`, as a config override to try."""
    comps, details = plan["components"], plan["details"]
    options = [(details["kl_chunk_temporaries"] * 0.75,
                f"loss.kl.chunk_tokens={max(1, details['kl_chunk_tokens'] // 4)}"),
               (plan["step"] / 2, f"batch_size={max(1, config.batch_size // 2)} (gradient accumulation keeps "
                                  "effective_batch_size)")]
    if not config.base_model.shard:
        options.append((comps["base_weights"] / 2, "base_model.shard=true with 2+ processes"))
    if not config.recompute_suffix:
        options.append((details["activations_kept"] * 0.8, "recompute_suffix=true"))
    if details.get("variants", 0) > 1:
        per_variant = comps["sae_parameters"] + comps["adam_states"] + comps["sweep_gradients"]
        options.append((per_variant / 2, f"fewer sweep variants per run (this sweep has {details['variants']})"))
    return max(options, key=lambda option: option[0])[1]


_UNITS = {"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30,
          "TIB": 2**40}


def parse_size(text: str) -> int:
    """'80GB', '79.6GiB', '512MB', '1000' -> bytes."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", str(text))
    if not match or match.group(2).upper() not in _UNITS:
        raise ValueError(f"cannot read a memory size from {text!r}; write e.g. 80GB, 79.6GiB or 512MB")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def format_plan(plan: dict, device_memory: Optional[int] = None) -> str:
    """The plan as a small table (GiB)."""
    def gib(value) -> str:
        return f"{value / 2**30:10.3f} GiB"

    variants = plan["details"].get("variants")
    of_what = f" of a {variants}-variant sweep" if variants else ""
    lines = [f"memory per device{of_what} (from shapes; no weights loaded):"]
    lines += [f"  {name:<22}{gib(value)}" for name, value in plan["components"].items()]
    lines += [f"    step phase {name:<11}{gib(value)}" for name, value in plan["step_phases"].items()]
    lines.append(f"  {'total':<22}{gib(plan['total'])}")
    if device_memory:
        verdict = "fits" if plan["total"] <= device_memory else "does NOT fit"
        lines.append(f"  {verdict} in {device_memory / 2**30:.1f} GiB ({100 * plan['total'] / device_memory:.0f}%)")
    return "\n".join(lines)


def _gib(value: float) -> str:
    return f"{value / 2**30:.2f} GiB" if value >= 2**28 else f"{value / 2**20:.0f} MiB"


def fit_message(plan: dict, device_memory: int, config) -> str:
    """One line: what the run needs, what the device has, and the remedy."""
    return (f"this run needs about {_gib(plan['total'])} per device (plan: hf-e2e-sae plan CONFIG) but the device has "
            f"{_gib(device_memory)}: try {remedy(plan, config)}")

