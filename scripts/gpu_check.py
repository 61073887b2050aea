"""The parts of scripts/gpu_check.sh that are not `hf-e2e-sae bench` calls: the Gemma-2-2B-shaped e2e step against
`plan`, and the liger KL backend against ours (parity and speed).

    python scripts/gpu_check.py gemma --device cuda --out OUT     # Gemma-2-2B shape, bf16: tokens/s, peak vs plan
    python scripts/gpu_check.py liger --device cuda --out OUT     # fp32 parity (1e-4 relative) and timings
    python scripts/gpu_check.py ... --device cpu                  # the dry run: tiny shapes, seconds

Each writes OUT/<name>.json and prints one summary line.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, Gemma2Config

from hf_e2e_sae.bench.benchmark import cuda_peak, time_steps
from hf_e2e_sae.patching.patched_model import SAEPatchedModel
from hf_e2e_sae.sae.config import SAEConfig
from hf_e2e_sae.sae.model import SparseAutoencoder
from hf_e2e_sae.training.fused_kl import fused_unembed_kl
from hf_e2e_sae.training.kl_backends import liger_available, liger_unembed_kl, resolve_kl_backend
from hf_e2e_sae.training.losses import LossConfig
from hf_e2e_sae.training.memory_plan import PlanInputs, count_base_parameters, plan_memory
from hf_e2e_sae.training.step import micro_batch_loss
from hf_e2e_sae.training.trainer import make_optimizer

# Gemma-2-2B's shape (vocab 256,000, d 2,304, 26 layers); no logit soft-capping, so the fused KL applies.
GEMMA = dict(vocab_size=256000, hidden_size=2304, num_hidden_layers=26, intermediate_size=9216, num_attention_heads=8,
             num_key_value_heads=4, head_dim=256, final_logit_softcapping=None, max_position_embeddings=8192)
TINY_GEMMA = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=32, final_logit_softcapping=None, max_position_embeddings=64)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemma(device: torch.device, dry: bool) -> dict:
    shape = TINY_GEMMA if dry else GEMMA
    batch, ctx, ratio = (2, 16, 4) if dry else (4, 1024, 16)
    dtype = "float32" if dry else "bfloat16"
    config = Gemma2Config(**shape)
    config._attn_implementation = "eager"  # transformers has no SDPA path for Gemma-2
    torch.manual_seed(0)
    with torch.device(device):
        base = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype)).eval().requires_grad_(False)
    site = f"blocks.{shape['num_hidden_layers'] // 2}.resid_pre"
    d, n = shape["hidden_size"], ratio * shape["hidden_size"]
    model = SAEPatchedModel(base, SparseAutoencoder(SAEConfig(d_in=d, dict_size=n, site=site, activation="topk", k=32)))
    model.to(device)
    optimizer = make_optimizer(model.sae_parameters(), 5e-4)
    loss = LossConfig(preset="e2e", sparsity={"coeff": 0.0})
    ids = torch.randint(0, shape["vocab_size"], (batch, ctx), generator=torch.Generator().manual_seed(1)).to(device)

    def step():
        total = micro_batch_loss(model, model, ids, loss, [], d)[0]
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = time_steps({"gemma": step}, device, repeats=2 if dry else 5, warmup=1)["gemma"]
    plan = plan_memory(PlanInputs(config, [site], n, batch, ctx, base_dtype=dtype, sparse_code=True, k=32,
                                  device_type=device.type, base_params=count_base_parameters(config)))
    result = {"shape": shape, "batch": batch, "ctx": ctx, "dict_size": n, "dtype": dtype, "device": str(device),
              "step_s": seconds, "tokens_per_s": batch * ctx / seconds, "plan_total_bytes": plan["total"],
              "plan_step_bytes": plan["step"], "plan": plan}
    if device.type == "cuda":
        result["measured_step_peak_bytes"] = cuda_peak(step, device)
        result["measured_total_peak_bytes"] = torch.cuda.max_memory_allocated(device)
        result["step_peak / plan_step"] = result["measured_step_peak_bytes"] / plan["step"]
        result["total_peak / plan_total"] = result["measured_total_peak_bytes"] / plan["total"]
    return result


def _kl_and_grad(fn, h_sae: torch.Tensor) -> tuple:
    h = h_sae.detach().clone().requires_grad_(True)
    value = fn(h)
    value.backward()
    return value.detach().float(), h.grad.detach().float()


def _time(fn, h_sae: torch.Tensor, device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        _kl_and_grad(fn, h_sae)
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times[1:])


def liger(device: torch.device, dry: bool) -> dict:
    tokens, d, vocab = (64, 32, 1000) if dry else (8192, 768, 50257)
    g = torch.Generator().manual_seed(0)
    h_orig = torch.randn(tokens, d, generator=g).to(device)
    h_sae = (h_orig + 0.1 * torch.randn(tokens, d, generator=g).to(device))
    weight = (0.05 * torch.randn(vocab, d, generator=g)).to(device)
    weights = torch.full((tokens,), 1.0 / tokens, device=device)
    chunk = 2048 if device.type == "cuda" else 128

    def ours(h):
        return fused_unembed_kl(h, h_orig, weight, None, weights, chunk, compile=device.type == "cuda")

    result = {"device": str(device), "tokens": tokens, "d": d, "vocab": vocab, "liger_installed": liger_available(),
              "selected_for_liger": resolve_kl_backend("liger", device), "ours_s": _time(ours, h_sae, device, 3)}
    if result["selected_for_liger"] != "liger":
        result["liger"] = "not run: " + ("CUDA only" if device.type != "cuda" else "liger-kernel not installed")
        return result

    def theirs(h):
        return liger_unembed_kl(h, h_orig, weight, weights)

    (kl_a, grad_a), (kl_b, grad_b) = _kl_and_grad(ours, h_sae), _kl_and_grad(theirs, h_sae)
    result.update({"kl_ours": kl_a.item(), "kl_liger": kl_b.item(),
                   "kl_rel_diff": ((kl_a - kl_b).abs() / kl_a.abs()).item(),
                   "grad_rel_diff": ((grad_a - grad_b).abs().max() / grad_a.abs().max()).item(),
                   "liger_s": _time(theirs, h_sae, device, 3)})
    result["parity_1e-4"] = result["kl_rel_diff"] <= 1e-4 and result["grad_rel_diff"] <= 1e-4
    result["liger_faster"] = result["liger_s"] < result["ours_s"]
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("check", choices=["gemma", "liger"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=".")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dry = device.type != "cuda"  # the CPU dry run uses tiny shapes
    result = {"gemma": gemma, "liger": liger}[args.check](device, dry)
    result["dry_run"] = dry
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, f"{args.check}.json").write_text(json.dumps(result, indent=2, default=str))
    summary = {k: v for k, v in result.items() if k not in ("plan", "shape")}
    sys.stdout.write(f"{args.check}: {json.dumps(summary, default=str)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
