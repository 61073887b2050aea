"""KL(P_orig || P_sae) fused with the unembedding: logits are made chunk by chunk, never tokens x vocab at once.

    kl = fused_unembed_kl(h_sae, h_orig, lm_head.weight, lm_head.bias, weights, chunk_tokens)

`h_sae`, `h_orig` (tokens, d_model) are the inputs of the LM head (after the final norm) in the SAE run and the
clean run. For each chunk of tokens this computes both chunks of logits, the per-token KL, and at once the
gradient w.r.t. `h_sae` (as Liger-Kernel's fused linear cross-entropy does): d KL / d h = ((q - p) * w_t) @ W.
So the forward holds one chunk of logits at a time, the autograd graph keeps only a (tokens, d_model) gradient,
and the backward is a scaling: no logits are recomputed and the target's softmax is taken once. With
`compile=True` (the trainer's default, `loss.kl.compile`) the per-chunk elementwise work (two log-softmaxes, the KL,
q - p) runs as a few loops made by `torch.compile` instead of eight eager passes over (chunk, vocab) tensors.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

# Elements of one (chunk, vocab) float32 temporary: small on CPUs (memory is the constraint and big chunks do not
# run faster there), large on GPUs (many small matmuls and kernel launches cost more than the memory).
_CHUNK_ELEMENTS = {"cpu": 128 * 50257, "cuda": 2048 * 50257}


def auto_chunk_tokens(vocab: int, device: torch.device) -> int:
    """Tokens per KL chunk when `loss.kl.chunk_tokens` is not set: a fixed budget of chunk x vocab elements."""
    return max(16, _CHUNK_ELEMENTS.get(torch.device(device).type, _CHUNK_ELEMENTS["cuda"]) // vocab)


def _matmul_weight(weight: torch.Tensor) -> torch.Tensor:
    """The LM head in the dtype autocast would multiply it in, cast once per call rather than once per chunk."""
    if torch.is_autocast_enabled(weight.device.type):
        return weight.to(torch.get_autocast_dtype(weight.device.type))
    return weight


def _kl_terms(logits_p: torch.Tensor, delta: torch.Tensor, weights: torch.Tensor) -> tuple:
    """`(sum_t w_t KL_t, (q - p) w)` of one chunk `(chunk, V)`, from the clean logits `b` and the logit change
    `delta = a - b` of the SAE run; the form `torch.compile` fuses into a few loops.

    With p = softmax(b) and q = softmax(b + delta): KL(p || q) = log(sum p e^delta) - sum p delta, which never
    subtracts two log-probabilities of size ~log V (the source of most float32 error in the direct form).
    """
    b, delta = logits_p.float(), delta.float()
    p = torch.softmax(b, -1)
    shift = delta.amax(-1, keepdim=True)  # e^(delta - shift) <= 1: no overflow
    p_e = p * (delta - shift).exp()
    z = p_e.sum(-1, keepdim=True)
    kl = (z.log() + shift).squeeze(-1) - (p * delta).sum(-1)
    return (kl * weights).sum(), (p_e / z - p) * weights[:, None]


def _kl_terms_eager(logits_p: torch.Tensor, delta: torch.Tensor, weights: torch.Tensor) -> tuple:
    """`_kl_terms` in eager mode, in place where it can be: at most three (chunk, V) temporaries at once. Consumes
    `delta` (overwritten when it is float32)."""
    p = torch.softmax(logits_p, -1, dtype=torch.float32)
    del logits_p
    delta = delta.float()
    p_delta = torch.linalg.vecdot(p, delta)
    shift = delta.amax(-1, keepdim=True)
    p_e = delta.sub_(shift).exp_().mul_(p)  # in place: delta is not needed again
    z = p_e.sum(-1, keepdim=True)
    kl = (z.log() + shift).squeeze(-1) - p_delta
    return (kl * weights).sum(), p_e.div_(z).sub_(p).mul_(weights[:, None])  # (q - p) w_t, in place


_COMPILED: dict = {}


def _compiled_kl_terms():
    """`torch.compile(_kl_terms)`, made once per process; None where compiling failed before (eager then)."""
    if "fn" not in _COMPILED:
        _COMPILED["fn"] = torch.compile(_kl_terms, dynamic=True)
    return _COMPILED["fn"]


def kl_terms(logits_p: torch.Tensor, delta: torch.Tensor, weights: torch.Tensor, compile: bool) -> tuple:
    """`_kl_terms`, compiled when asked and possible; a compiler that fails (no C++ compiler, an unsupported
    device) is reported once and the eager version is used from then on."""
    fn = _compiled_kl_terms() if compile else None
    if fn is not None:
        try:
            return fn(logits_p, delta, weights)
        except (torch.cuda.OutOfMemoryError, MemoryError):
            raise  # not a compiler failure: eager mode would need the same memory
        except Exception as error:  # noqa: BLE001 - any compiler failure: the eager path gives the same values
            logger.warning("torch.compile of the KL failed (%s); using eager mode (loss.kl.compile=false "
                           "silences this)", str(error).splitlines()[0] if str(error) else type(error).__name__)
            _COMPILED["fn"] = None
    return _kl_terms_eager(logits_p, delta, weights)


def _chunk_kl(h_sae, h_orig, weight, mm_weight, bias, weights, grad_h, compile: bool) -> torch.Tensor:
    """The weighted KL of one chunk of tokens; writes its gradient w.r.t. `h_sae` into `grad_h` (when given).

    The SAE run's logits enter as their change `W (h_sae - h_orig)` (same cost as `W h_sae`; the bias cancels),
    exact to float32 rounding of that change rather than of two logits of size ~10. A function of its own so
    that the chunk's (chunk, V) temporaries are freed on return, before the next chunk makes its own.

    (Vocabulary-major logits, `W h^T`, are made up to twice as fast by oneDNN / MKL on CPUs, but the softmax
    sums then run across rows, accumulated one row at a time: the KL lost a decimal digit of accuracy. Not used.)
    """
    kl, dlogits = kl_terms(F.linear(h_orig, weight, bias), F.linear(h_sae - h_orig, weight), weights, compile)
    if grad_h is not None:
        grad_h.copy_(dlogits.to(mm_weight.dtype) @ mm_weight)
    return kl


class _FusedUnembedKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h_sae, h_orig, weight, bias, weights, chunk_tokens, compile):
        # h_sae, h_orig: (N, d); weight: (V, d); bias: (V,) or None; weights: (N,) summing to 1
        total = torch.zeros((), device=h_sae.device, dtype=torch.float32)
        grad_h = torch.empty_like(h_sae) if ctx.needs_input_grad[0] else None
        mm_weight = _matmul_weight(weight)
        for start in range(0, h_sae.shape[0], chunk_tokens):
            end = start + chunk_tokens
            total += _chunk_kl(h_sae[start:end], h_orig[start:end], weight, mm_weight, bias, weights[start:end],
                               None if grad_h is None else grad_h[start:end], compile)
        ctx.save_for_backward(grad_h)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        (grad_h,) = ctx.saved_tensors
        return grad_h * grad_output.to(grad_h.dtype), None, None, None, None, None, None


def fused_unembed_kl(
    h_sae: torch.Tensor,
    h_orig: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    weights: torch.Tensor,
    chunk_tokens: int = 1024,
    compile: bool = False,
) -> torch.Tensor:
    """sum_t weights_t KL(softmax(W h_orig,t + b) || softmax(W h_sae,t + b)); gradient only w.r.t. `h_sae`.

    Args:
        h_sae (`(N, d)`): LM-head inputs of the run with the SAEs spliced in.
        h_orig (`(N, d)`): LM-head inputs of the clean run (the fixed target; no gradient).
        weight (`(V, d)`), bias (`(V,)` or None): the LM head (frozen; no gradient).
        weights (`(N,)`): per-token weights (e.g. 1 / n_unmasked for unmasked tokens, 0 for padding).
        chunk_tokens: tokens per chunk; memory is about 4 x chunk_tokens x V floats.
        compile: fuse the softmaxes, the KL and its gradient with `torch.compile` (eager if compiling fails).
    """
    return _FusedUnembedKL.apply(h_sae, h_orig.detach(), weight.detach(),
                                 None if bias is None else bias.detach(), weights, chunk_tokens, compile)
