"""Which fused unembedding + KL computes KL(P_orig || P_sae): ours (`fused_kl`) or Liger-Kernel's (`loss.kl.backend`).

    kl = unembed_kl("auto", h_sae, h_orig, weight, bias, weights, chunk_tokens, compile)

* `ours`: `fused_kl.fused_unembed_kl`, on every device.
* `liger`: Liger-Kernel's `LigerFusedLinearJSD` with `jsd_beta=0` (its forward KL: sum_v p_teacher (log p_teacher -
  log q_student), the clean run as the teacher), imported only when used. Triton kernels: CUDA only. Where it
  cannot run (not CUDA, the package missing, an LM head with a bias) it falls back to ours with one warning.
* `auto` (default): ours, except on CUDA with liger-kernel installed and a bias-free head, where the first call
  times both on the run's own shapes (forward + backward, a few repetitions) and keeps the faster for the process.

Liger averages over the tokens whose label is not ignored; the per-token `weights` of the step (1 / n for kept
tokens, 0 for padding, `losses.token_weights`) become labels 0 / -100, which gives the same mean.
"""
from __future__ import annotations

import importlib.util
import logging
import time
from typing import Optional

import torch

from .fused_kl import fused_unembed_kl

logger = logging.getLogger(__name__)

KL_BACKENDS = ("auto", "ours", "liger")
_IGNORE = -100
_WARNED: set = set()
_AUTO_CHOICE: dict = {}


def liger_available() -> bool:
    """Whether liger-kernel is installed (not imported here: it pulls Triton)."""
    return importlib.util.find_spec("liger_kernel") is not None


def _warn_once(reason: str) -> None:
    if reason not in _WARNED:
        _WARNED.add(reason)
        logger.warning("loss.kl.backend=liger: %s; using ours (the fused KL of hf_e2e_sae)", reason)


def resolve_kl_backend(requested: str, device: torch.device, has_bias: bool = False) -> str:
    """`"ours"` or `"liger"` for a requested backend on `device`; `"auto"` answers `"liger?"` where liger may run and
    only timing can decide (see `unembed_kl`). A `liger` request that cannot be honoured warns once and gives ours."""
    if requested not in KL_BACKENDS:
        raise ValueError(f"loss.kl.backend: unknown backend {requested!r}; valid choices: {list(KL_BACKENDS)}")
    if requested == "ours":
        return "ours"
    reason = None
    if torch.device(device).type != "cuda":
        reason = f"liger-kernel runs on CUDA only (this is {torch.device(device).type})"
    elif not liger_available():
        reason = "liger-kernel is not installed (pip install liger-kernel)"
    elif has_bias:
        reason = "the LM head has a bias, which liger's fused linear JSD does not take"
    if reason is not None:
        if requested == "liger":
            _warn_once(reason)
        return "ours"
    return "liger" if requested == "liger" else "liger?"


def liger_unembed_kl(h_sae: torch.Tensor, h_orig: torch.Tensor, weight: torch.Tensor,
                     weights: torch.Tensor) -> torch.Tensor:
    """Liger-Kernel's fused linear forward KL (jsd_beta=0); gradient w.r.t. `h_sae` only."""
    from liger_kernel.transformers.fused_linear_jsd import LigerFusedLinearJSD

    labels = torch.where(weights > 0, 0, _IGNORE).long()
    loss = LigerFusedLinearJSD(jsd_beta=0.0)
    mm_weight = weight.detach().to(h_sae.dtype)
    return loss(h_sae, mm_weight, h_orig.detach().to(h_sae.dtype), mm_weight, labels).float()


def _seconds(fn, h_sae: torch.Tensor, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats + 1):
        probe = h_sae.detach().clone().requires_grad_(True)
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn(probe).backward()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times[1:])  # the first call compiles / autotunes


def _auto_choice(h_sae, h_orig, weight, bias, weights, chunk_tokens, compile) -> str:
    key = (tuple(weight.shape), h_sae.shape[0], h_sae.dtype, weight.dtype)
    if key not in _AUTO_CHOICE:
        ours = _seconds(lambda h: fused_unembed_kl(h, h_orig, weight, bias, weights, chunk_tokens, compile), h_sae)
        try:
            liger = _seconds(lambda h: liger_unembed_kl(h, h_orig, weight, weights), h_sae)
        except Exception as error:  # noqa: BLE001 - any failure of the optional kernel: ours is always right
            logger.warning("loss.kl.backend=auto: liger-kernel failed (%s); using ours", str(error).splitlines()[0])
            liger = float("inf")
        _AUTO_CHOICE[key] = "liger" if liger < ours else "ours"
        logger.info("loss.kl.backend=auto: ours %.2f ms, liger %.2f ms per KL step; using %s", 1e3 * ours,
                    1e3 * liger, _AUTO_CHOICE[key])
    return _AUTO_CHOICE[key]


def unembed_kl(backend: str, h_sae: torch.Tensor, h_orig: torch.Tensor, weight: torch.Tensor,
               bias: Optional[torch.Tensor], weights: torch.Tensor, chunk_tokens: int, compile: bool,
               clean_probs: Optional[list] = None) -> torch.Tensor:
    """sum_t weights_t KL(softmax(W h_orig,t + b) || softmax(W h_sae,t + b)) through the chosen backend.

    Args:
        backend: `loss.kl.backend` (`auto`, `ours`, `liger`).
        h_sae, h_orig, weight, bias, weights, chunk_tokens, compile, clean_probs: as `fused_kl.fused_unembed_kl`.
            Given `clean_probs` (a sweep's variants share them, `training.sweep_step`) ours is used: the clean
            half is then already paid for, which liger cannot reuse.
    """
    if clean_probs is not None:
        return fused_unembed_kl(h_sae, h_orig, weight, bias, weights, chunk_tokens, compile, clean_probs)
    choice = resolve_kl_backend(backend, h_sae.device, bias is not None)
    if choice == "liger?":
        choice = _auto_choice(h_sae, h_orig, weight, bias, weights, chunk_tokens, compile)
    if choice == "liger":
        return liger_unembed_kl(h_sae, h_orig, weight, weights)
    return fused_unembed_kl(h_sae, h_orig, weight, bias, weights, chunk_tokens, compile=compile)
