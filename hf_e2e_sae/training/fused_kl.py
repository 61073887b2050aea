"""KL(P_orig || P_sae) fused with the unembedding: logits are made chunk by chunk, never tokens x vocab at once.

    kl = fused_unembed_kl(h_sae, h_orig, lm_head.weight, lm_head.bias, weights, chunk_tokens)

`h_sae`, `h_orig` (tokens, d_model) are the inputs of the LM head (after the final norm) in the SAE run and the
clean run. For each chunk of tokens this computes both chunks of logits, the per-token KL, and at once the
gradient w.r.t. `h_sae` (as Liger-Kernel's fused linear cross-entropy does): d KL / d h = ((q - p) * w_t) @ W.
So the forward holds one chunk of logits at a time, the autograd graph keeps only a (tokens, d_model) gradient,
and the backward is a scaling: no logits are recomputed and the target's softmax is taken once. With
`compile=True` (the trainer's default, `loss.kl.compile`) the per-chunk elementwise work (two log-softmaxes, the KL,
q - p) runs as a few loops made by `torch.compile` instead of eight eager passes over (chunk, vocab) tensors.

A sweep trains several SAEs on one clean run: `clean_probabilities` makes its per-chunk softmax once and each
variant passes it as `clean_probs`, so a variant's KL does two vocabulary matmuls (its logits and the gradient),
not three.
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
    return _kl_terms_from_probs(torch.softmax(logits_p.float(), -1), delta, weights)


def _kl_terms_from_probs(p: torch.Tensor, delta: torch.Tensor, weights: torch.Tensor) -> tuple:
    """`_kl_terms` given the clean probabilities `p` (float32) instead of the clean logits (`p` is not changed)."""
    delta = delta.float()
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
    return _kl_terms_from_probs_eager(p, delta, weights)


def _kl_terms_from_probs_eager(p: torch.Tensor, delta: torch.Tensor, weights: torch.Tensor) -> tuple:
    """`_kl_terms_from_probs` in eager mode, in place on `delta` (never on `p`, which a sweep's variants share)."""
    delta = delta.float()
    p_delta = torch.linalg.vecdot(p, delta)
    shift = delta.amax(-1, keepdim=True)
    p_e = delta.sub_(shift).exp_().mul_(p)  # in place: delta is not needed again
    z = p_e.sum(-1, keepdim=True)
    kl = (z.log() + shift).squeeze(-1) - p_delta
    return (kl * weights).sum(), p_e.div_(z).sub_(p).mul_(weights[:, None])  # (q - p) w_t, in place


_COMPILED: dict = {}
_EAGER = {"logits": _kl_terms_eager, "probs": _kl_terms_from_probs_eager}
_FUSED = {"logits": _kl_terms, "probs": _kl_terms_from_probs}


def _compiled_kl_terms(form: str):
    """`torch.compile` of `_FUSED[form]`, made once per process; None where compiling failed before (eager then)."""
    if form not in _COMPILED:
        _COMPILED[form] = torch.compile(_FUSED[form], dynamic=True)
    return _COMPILED[form]


def kl_terms(clean: torch.Tensor, delta: torch.Tensor, weights: torch.Tensor, compile: bool,
             form: str = "logits") -> tuple:
    """`_kl_terms` (`form="logits"`: `clean` is the clean logits) or `_kl_terms_from_probs` (`form="probs"`: its
    softmax), compiled when asked and possible; a compiler that fails (no C++ compiler, an unsupported device) is
    reported once and the eager version is used from then on."""
    fn = _compiled_kl_terms(form) if compile else None
    if fn is not None:
        try:
            return fn(clean, delta, weights)
        except (torch.cuda.OutOfMemoryError, MemoryError):
            raise  # not a compiler failure: eager mode would need the same memory
        except Exception as error:  # noqa: BLE001 - any compiler failure: the eager path gives the same values
            logger.warning("torch.compile of the KL failed (%s); using eager mode (loss.kl.compile=false "
                           "silences this)", str(error).splitlines()[0] if str(error) else type(error).__name__)
            _COMPILED[form] = None
    return _EAGER[form](clean, delta, weights)


def clean_probabilities(h_orig: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                        chunk_tokens: int) -> list:
    """softmax(W h_orig + b) in float32, one `(chunk, V)` tensor per chunk of `chunk_tokens` tokens, no graph.

    The clean half of the KL: `fused_unembed_kl(..., clean_probs=...)` reads it instead of making it, so several
    SAE runs against the same clean run (the variants of a sweep) pay its matmul and softmax once. Holds tokens x
    vocab floats: worth it only when two or more KLs read it."""
    with torch.no_grad():
        return [torch.softmax(F.linear(h_orig[start:start + chunk_tokens], weight, bias).float(), -1)
                for start in range(0, h_orig.shape[0], chunk_tokens)]


def _chunk_kl(h_sae, h_orig, weight, mm_weight, bias, weights, grad_h, compile: bool, probs=None) -> torch.Tensor:
    """The weighted KL of one chunk of tokens; writes its gradient w.r.t. `h_sae` into `grad_h` (when given).

    The SAE run's logits enter as their change `W (h_sae - h_orig)` (same cost as `W h_sae`; the bias cancels),
    exact to float32 rounding of that change rather than of two logits of size ~10. A function of its own so
    that the chunk's (chunk, V) temporaries are freed on return, before the next chunk makes its own.

    (Vocabulary-major logits, `W h^T`, are made up to twice as fast by oneDNN / MKL on CPUs, but the softmax
    sums then run across rows, accumulated one row at a time: the KL lost a decimal digit of accuracy. Not used.)

    `probs`: the chunk's clean probabilities when made once for several KLs (`clean_probabilities`).
    """
    delta = F.linear(h_sae - h_orig, weight)
    if probs is None:
        kl, dlogits = kl_terms(F.linear(h_orig, weight, bias), delta, weights, compile)
    else:
        kl, dlogits = kl_terms(probs, delta, weights, compile, form="probs")
    if grad_h is not None:
        grad_h.copy_(dlogits.to(mm_weight.dtype) @ mm_weight)
    return kl


class _FusedUnembedKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h_sae, h_orig, weight, bias, weights, chunk_tokens, compile, clean_probs):
        # h_sae, h_orig: (N, d); weight: (V, d); bias: (V,) or None; weights: (N,) summing to 1
        total = torch.zeros((), device=h_sae.device, dtype=torch.float32)
        grad_h = torch.empty_like(h_sae) if ctx.needs_input_grad[0] else None
        mm_weight = _matmul_weight(weight)
        for i, start in enumerate(range(0, h_sae.shape[0], chunk_tokens)):
            end = start + chunk_tokens
            total += _chunk_kl(h_sae[start:end], h_orig[start:end], weight, mm_weight, bias, weights[start:end],
                               None if grad_h is None else grad_h[start:end], compile,
                               None if clean_probs is None else clean_probs[i])
        ctx.save_for_backward(grad_h)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        (grad_h,) = ctx.saved_tensors
        return grad_h * grad_output.to(grad_h.dtype), None, None, None, None, None, None, None


def fused_unembed_kl(
    h_sae: torch.Tensor,
    h_orig: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    weights: torch.Tensor,
    chunk_tokens: int = 1024,
    compile: bool = False,
    clean_probs: Optional[list] = None,
) -> torch.Tensor:
    """sum_t weights_t KL(softmax(W h_orig,t + b) || softmax(W h_sae,t + b)); gradient only w.r.t. `h_sae`.

    Args:
        h_sae (`(N, d)`): LM-head inputs of the run with the SAEs spliced in.
        h_orig (`(N, d)`): LM-head inputs of the clean run (the fixed target; no gradient).
        weight (`(V, d)`), bias (`(V,)` or None): the LM head (frozen; no gradient).
        weights (`(N,)`): per-token weights (e.g. 1 / n_unmasked for unmasked tokens, 0 for padding).
        chunk_tokens: tokens per chunk; memory is about 4 x chunk_tokens x V floats.
        compile: fuse the softmaxes, the KL and its gradient with `torch.compile` (eager if compiling fails).
        clean_probs: `clean_probabilities(h_orig, weight, bias, chunk_tokens)` when already made (a sweep makes it
            once for all its variants); None makes each chunk's on the way.
    """
    if clean_probs is not None and len(clean_probs) != -(-h_sae.shape[0] // chunk_tokens):
        raise ValueError(f"clean_probs has {len(clean_probs)} chunks; {h_sae.shape[0]} tokens in chunks of "
                         f"{chunk_tokens} need {-(-h_sae.shape[0] // chunk_tokens)}")
    return _FusedUnembedKL.apply(h_sae, h_orig.detach(), weight.detach(),
                                 None if bias is None else bias.detach(), weights, chunk_tokens, compile, clean_probs)
