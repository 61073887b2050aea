"""The SAE forward for activations that keep a fixed number of latents per token (TopK), done sparsely.

A TopK code has k non-zeros per token out of dict_size (k = 32 of 30,720-46,080 in the benchmarks), so
the dense way (`decode(latents)` as `latents @ D^T`, and autograd's dense gradients through `topk`) spends
three of its four dictionary-sized matmuls multiplying zeros. Here only the encoder's forward matmul stays
dense (every pre-activation is needed to pick the top k):

    pre      = W_enc x + b_enc                               (T, n)   dense matmul
    values,  = top-k of pre, then ReLU                       (T, k)   (= topk(ReLU(pre)) wherever it matters)
    indices
    x_hat    = sum_j values_j / ||d_j|| d_j + b_dec           (T, d)   `embedding_bag` over the k columns

Backward (`_TopKEncode`): the gradient w.r.t. W_enc and b_enc is scattered into the k selected rows per token
(an index_add of outer products, in chunks of tokens), and the one w.r.t. x is an `embedding_bag` over the
same rows; a gradient arriving through the dense `pre` output (AuxK reads it) is added the dense way. When the
caller does not want `pre` (the trainer's sparse records) it is made a block of tokens at a time and dropped.
`_SparseDecode` keeps no copy of the dictionary for its backward: it gathers the k columns again, and writes
the (normalised) decoder's gradient into the k columns per token. `tests/test_sparse_code.py` checks outputs
and gradients against the dense path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# Rows of (tokens * k, d) outer products or gathered dictionary rows materialised at once in a backward.
_OUTER_ROWS_PER_CHUNK = 1 << 14
# Elements of one (tokens, dict_size) block of pre-activations when they are not kept (sparse outputs): small on
# CPUs, where memory is the constraint, large on GPUs, where many small matmuls cost more than the memory.
_PRE_CHUNK_ELEMENTS = {"cpu": 1 << 23, "cuda": 1 << 28}


def _token_chunks(n_tokens: int, per_token: int, budget: int) -> list:
    """`[(start, end), ...]` blocks of tokens of at most `budget` elements (`per_token` each), at least one token."""
    step = max(1, budget // max(1, per_token))
    return [(start, min(start + step, n_tokens)) for start in range(0, n_tokens, step)]


class _TopKEncode(torch.autograd.Function):
    """`(x (T, d), weight (n, d), bias (n,), k, keep_pre) -> (pre (T, n) or empty, values (T, k), indices (T, k))`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, k: int, keep_pre: bool):
        if keep_pre:
            pre = F.linear(x, weight, bias)
            values, indices = pre.topk(k, dim=-1, sorted=False)
        else:  # pre-activations a block of tokens at a time: never (T, n) at once
            pre = x.new_empty(0)
            budget = _PRE_CHUNK_ELEMENTS.get(x.device.type, _PRE_CHUNK_ELEMENTS["cuda"])
            parts = [F.linear(x[a:b], weight, bias).topk(k, dim=-1, sorted=False)
                     for a, b in _token_chunks(x.shape[0], weight.shape[0], budget)]
            values, indices = torch.cat([v for v, _ in parts]), torch.cat([i for _, i in parts])
        # ReLU after the selection: where fewer than k pre-activations are positive, the extra slots hold 0
        # (topk of ReLU(pre) would pick other zeros); latents, reconstruction and gradients are the same.
        values = values.clamp_min(0)
        ctx.save_for_backward(x, weight, values, indices)
        ctx.mark_non_differentiable(indices)
        ctx.set_materialize_grads(False)
        return pre, values, indices

    @staticmethod
    def backward(ctx, grad_pre, grad_values, _grad_indices):
        x, weight, values, indices = ctx.saved_tensors
        dtype = weight.dtype
        g = None if grad_values is None else (grad_values * (values > 0)).to(dtype)  # ReLU's gradient
        dense = None if grad_pre is None or grad_pre.numel() == 0 else grad_pre.to(dtype)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = _sum_rows(weight, indices, g, dense, lambda d: d @ weight)
            grad_x = grad_x.to(x.dtype)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.zeros_like(weight) if dense is None else dense.T @ x.to(dtype)
            if g is not None:
                _index_add_outer(grad_weight, indices, g, x.to(dtype))
        if ctx.needs_input_grad[2]:
            grad_bias = torch.zeros(weight.shape[0], device=weight.device, dtype=dtype)
            if dense is not None:
                grad_bias += dense.sum(0)
            if g is not None:
                grad_bias.index_add_(0, indices.reshape(-1), g.reshape(-1))
        return grad_x, grad_weight, grad_bias, None, None


def _sum_rows(weight, indices, coeffs, dense, dense_fn):
    """`sum_j coeffs[t, j] * weight[indices[t, j]]` (+ `dense_fn(dense)` when a dense gradient came too)."""
    out = None if dense is None else dense_fn(dense)
    if coeffs is not None:
        rows = F.embedding_bag(indices, weight, per_sample_weights=coeffs, mode="sum")
        out = rows if out is None else out + rows
    return out if out is not None else torch.zeros(indices.shape[0], weight.shape[1], device=weight.device,
                                                   dtype=weight.dtype)


def _index_add_outer(target: torch.Tensor, indices: torch.Tensor, coeffs: torch.Tensor, x: torch.Tensor) -> None:
    """`target[indices[t, j]] += coeffs[t, j] * x[t]` for all t, j, in chunks of tokens (bounded memory)."""
    for a, b in _token_chunks(indices.shape[0], indices.shape[1], _OUTER_ROWS_PER_CHUNK):
        outer = coeffs[a:b, :, None] * x[a:b, None, :]  # (chunk, k, d)
        target.index_add_(0, indices[a:b].reshape(-1), outer.reshape(-1, x.shape[1]))


def _row_dots(rows: torch.Tensor, indices: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """`(T, k)`: `<rows[indices[t, j]], g[t]>`, gathering k rows per token in chunks of tokens."""
    out = torch.empty(indices.shape, device=g.device, dtype=g.dtype)
    for a, b in _token_chunks(indices.shape[0], indices.shape[1], _OUTER_ROWS_PER_CHUNK):
        out[a:b] = torch.bmm(rows[indices[a:b]], g[a:b, :, None]).squeeze(-1)
    return out


class _SparseDecode(torch.autograd.Function):
    """`(values (T, k), indices (T, k), weight (d, n), normalize) -> sum_j coeff_j * weight[:, indices_j]`, with
    `coeff = values / ||weight[:, indices]||` when `normalize`. Saves no copy of the dictionary: the backward
    rebuilds the `(n, d)` transpose it gathers from."""

    @staticmethod
    def forward(ctx, values: torch.Tensor, indices: torch.Tensor, weight: torch.Tensor, normalize: bool):
        columns = weight.t().contiguous()  # (n, d): one copy, so each token reads k contiguous rows
        norms = columns.norm(dim=1).clamp_min(1e-12) if normalize else None  # (n,), as F.normalize
        coeffs = values.to(weight.dtype)
        if normalize:
            coeffs = coeffs / norms[indices]
        ctx.save_for_backward(values, indices, weight, norms)
        ctx.normalize = normalize
        return F.embedding_bag(indices, columns, per_sample_weights=coeffs, mode="sum")

    @staticmethod
    def backward(ctx, grad_out):
        values, indices, weight, norms = ctx.saved_tensors
        g = grad_out.to(weight.dtype)
        columns = weight.t().contiguous()
        dots = _row_dots(columns, indices, g)  # <d_j, g_t> with the stored (unnormalised) d_j
        scale = norms[indices] if ctx.normalize else None
        coeffs = values.to(weight.dtype) if scale is None else values.to(weight.dtype) / scale
        grad_values = (dots if scale is None else dots / scale).to(values.dtype) if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[2]:
            grad_columns = torch.zeros_like(columns)
            _index_add_outer(grad_columns, indices, coeffs, g)  # sum_t coeff_tj g_t
            if ctx.normalize:  # minus the part along d_j: d(d / ||d||) = (I - u u^T) / ||d||
                along = torch.zeros(norms.shape, device=g.device, dtype=g.dtype).index_add_(
                    0, indices.reshape(-1), (coeffs * dots).reshape(-1))
                grad_columns.sub_(columns.mul_((along / norms.square())[:, None]))
            del columns
            grad_weight = grad_columns.t().contiguous()
        return grad_values, None, grad_weight, None


def topk_encode(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, k: int, keep_pre: bool = True) -> tuple:
    """Encoder + TopK with a sparse backward. `x`: `(..., d)` (already through the basis options).

    Returns `(pre_activations (..., n), values (..., k), indices (..., k))`; `values` are after ReLU. With
    `keep_pre=False` the pre-activations are made a block of tokens at a time and not returned (None).
    """
    lead = x.shape[:-1]
    pre, values, indices = _TopKEncode.apply(x.reshape(-1, x.shape[-1]), weight, bias, k, keep_pre)
    return (pre.reshape(*lead, -1) if keep_pre else None), values.reshape(*lead, k), indices.reshape(*lead, k)


def sparse_decode(values: torch.Tensor, indices: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                  normalize: bool) -> torch.Tensor:
    """`sum_j values_j * d_{indices_j} + bias`, `(..., k) -> (..., d)`; `weight` is the decoder's `(d, n)`,
    its columns divided by their L2 norms when `normalize` (the paper's reparametrisation)."""
    lead, k = values.shape[:-1], values.shape[-1]
    out = _SparseDecode.apply(values.reshape(-1, k), indices.reshape(-1, k), weight, normalize) + bias
    return out.reshape(*lead, weight.shape[0])


def scatter_dense(values: torch.Tensor, indices: torch.Tensor, dict_size: int) -> torch.Tensor:
    """The dense `(..., dict_size)` latents of a sparse code (gradients flow to `values`)."""
    zeros = torch.zeros(*values.shape[:-1], dict_size, device=values.device, dtype=values.dtype)
    return zeros.scatter(-1, indices, values)


def code_values(out) -> torch.Tensor:
    """What a sparsity norm over the last dim reads: the dense `latents`, or the k `code_values` of a sparse
    output (the latents' other entries are zeros, so every Lp norm and the L0 count are the same)."""
    return out.latents if out.latents is not None else out.code_values


def firing(out, dict_size: int) -> tuple:
    """`(l0 (...,), fired (dict_size,) bool)` of an SAE output, dense or sparse: the active latents per token and
    which latents were active on any token."""
    if out.latents is not None:
        active = out.latents.detach() > 0
        return active.sum(-1), active.reshape(-1, dict_size).any(0)
    active = out.code_values.detach() > 0
    # counts, not fired[indices[active]] = True: boolean indexing would wait for the device (a host sync)
    counts = torch.zeros(dict_size, dtype=torch.int32, device=active.device)
    counts.index_add_(0, out.code_indices.reshape(-1), active.reshape(-1).to(torch.int32))
    return active.sum(-1), counts > 0
