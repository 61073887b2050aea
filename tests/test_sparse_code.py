"""The sparse TopK forward (sae/sparse_code.py) against the dense path it replaces.

`SparseAutoencoder.forward` encodes and decodes a TopK code sparsely (k columns of the decoder, gradients
scattered into k encoder rows per token). The dense path is `encode` + `decode` (latents @ D^T, autograd
through `topk`). Both must give the same latents, reconstructions and gradients for every input, every basis
option, gradients arriving through any output (reconstruction, latents, pre-activations) and codes with fewer
than k positive pre-activations.
"""
import pytest
import torch

from hf_e2e_sae.sae import sparse_code
from hf_e2e_sae.sae.config import SAEConfig
from hf_e2e_sae.sae.model import SparseAutoencoder

BASES = [
    {},
    {"normalize_decoder": False},
    {"apply_b_dec_to_input": True, "input_scale": 2.5, "center_input": True},
]


def make_sae(k: int, **basis) -> SparseAutoencoder:
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=16, dict_size=64, activation="topk", k=k, **basis)).double()
    with torch.no_grad():  # non-zero biases, so their gradients and their part in the outputs are checked
        sae.encoder.bias.normal_(0, 0.3)
        sae.decoder.bias.normal_(0, 0.3)
    return sae


def dense_outputs(sae, x):
    pre = sae.pre_activations(x)
    latents = sae.activation(pre)
    return pre, latents, sae.decode(latents)


def loss_of(pre, latents, reconstruction, weights):
    """Reads all three outputs, like a training step with AuxK (pre), an L1 term (latents) and KL/MSE."""
    return (reconstruction * weights).sum() + latents.abs().sum() * 0.3 + torch.relu(pre).pow(2).sum() * 0.1


@pytest.mark.parametrize("basis", BASES, ids=["paper", "raw_decoder", "saelens_basis"])
@pytest.mark.parametrize("k", [1, 5, 64])
def test_sparse_forward_equals_dense_outputs_and_gradients(basis, k):
    sae = make_sae(k, **basis)
    x = torch.randn(3, 7, 16, dtype=torch.double, requires_grad=True)
    weights = torch.randn(3, 7, 16, dtype=torch.double)
    out = sae(x)
    pre, latents, reconstruction = dense_outputs(sae, x)
    torch.testing.assert_close(out.latents, latents, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.reconstruction, reconstruction, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.pre_activations, pre, rtol=1e-12, atol=1e-12)
    inputs = [x, *sae.parameters()]
    sparse_grads = torch.autograd.grad(loss_of(out.pre_activations, out.latents, out.reconstruction, weights), inputs)
    dense_grads = torch.autograd.grad(loss_of(pre, latents, reconstruction, weights), inputs)
    for name, a, b in zip(["x", *dict(sae.named_parameters())], sparse_grads, dense_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m: f"{name}: {m}")


def test_gradient_through_reconstruction_only_reaches_the_k_selected_encoder_rows():
    sae = make_sae(3)
    x = torch.randn(1, 1, 16, dtype=torch.double)
    out = sae(x)
    out.reconstruction.sum().backward()
    selected = (out.latents[0, 0] > 0).nonzero().flatten()
    touched = (sae.encoder.weight.grad.abs().sum(1) > 0).nonzero().flatten()
    assert len(selected) > 0 and set(touched.tolist()) <= set(selected.tolist())


def test_token_with_no_positive_pre_activation_has_zero_code_and_gradient():
    sae = make_sae(4)
    with torch.no_grad():
        sae.encoder.bias.fill_(-100.0)
    x = torch.randn(2, 16, dtype=torch.double)
    out = sae(x)
    assert int((out.latents != 0).sum()) == 0
    torch.testing.assert_close(out.reconstruction, sae.decoder.bias.expand(2, 16))
    out.reconstruction.pow(2).sum().backward()
    assert float(sae.encoder.weight.grad.abs().sum()) == 0.0


def test_gradients_are_the_same_in_any_number_of_chunks(monkeypatch):
    sae = make_sae(5)
    x = torch.randn(40, 16, dtype=torch.double, requires_grad=True)
    inputs = [x, *sae.parameters()]
    one_chunk = torch.autograd.grad(sae(x).reconstruction.pow(2).sum(), inputs)
    monkeypatch.setattr(sparse_code, "_OUTER_ROWS_PER_CHUNK", 5 * 3)  # 3 tokens per chunk: 14 chunks
    chunked = torch.autograd.grad(sae(x).reconstruction.pow(2).sum(), inputs)
    for a, b in zip(chunked, one_chunk):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_sparse_forward_under_bfloat16_autocast_stays_close_to_the_float32_result():
    sae = make_sae(5).float()
    x = torch.randn(4, 16)
    exact = sae(x).reconstruction
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = sae(x).reconstruction
    assert mixed.dtype == torch.float32  # the decode sums the k columns in the SAE's dtype
    torch.testing.assert_close(mixed, exact, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("basis", BASES[:2], ids=["paper", "raw_decoder"])
def test_sparse_output_in_token_blocks_equals_the_dense_forward(basis, monkeypatch):
    """`sparse_output=True` (the trainer's records): pre-activations made a few tokens at a time and dropped, the
    code returned as values and indices; the reconstruction and every gradient are the dense path's."""
    monkeypatch.setitem(sparse_code._PRE_CHUNK_ELEMENTS, "cpu", 64 * 4)  # 4 tokens per block: 6 blocks
    sae = make_sae(5, **basis)
    x = torch.randn(3, 7, 16, dtype=torch.double, requires_grad=True)
    weights = torch.randn(3, 7, 16, dtype=torch.double)
    out = sae(x, sparse_output=True)
    assert out.latents is None and out.pre_activations is None and out.code_values.shape == (3, 7, 5)
    pre, latents, reconstruction = dense_outputs(sae, x)
    torch.testing.assert_close(sparse_code.scatter_dense(out.code_values, out.code_indices, 64), latents)
    torch.testing.assert_close(out.reconstruction, reconstruction, rtol=1e-10, atol=1e-12)
    inputs = [x, *sae.parameters()]
    loss = lambda rec, values: (rec * weights).sum() + values.abs().sum() * 0.3  # noqa: E731
    sparse_grads = torch.autograd.grad(loss(out.reconstruction, out.code_values), inputs)
    dense_grads = torch.autograd.grad(loss(reconstruction, latents), inputs)
    for a, b in zip(sparse_grads, dense_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
