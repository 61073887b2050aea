"""Tiny random causal LMs of every supported family, for fast offline tests."""
from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM
from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, MistralConfig, Qwen2Config, GemmaConfig, Gemma2Config

VOCAB = 256
HIDDEN = 32
LAYERS = 3

_COMMON_DECODER = dict(
    vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=LAYERS,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    bos_token_id=0, eos_token_id=1, pad_token_id=None,
)

CONFIGS = {
    "gpt2": lambda: GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_positions=128,
                               bos_token_id=0, eos_token_id=1),
    "gpt_neox": lambda: GPTNeoXConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64,
                                      num_hidden_layers=LAYERS, num_attention_heads=4,
                                      max_position_embeddings=128, bos_token_id=0, eos_token_id=1),
    "llama": lambda: LlamaConfig(**_COMMON_DECODER),
    "mistral": lambda: MistralConfig(**_COMMON_DECODER),
    "qwen2": lambda: Qwen2Config(**_COMMON_DECODER),
    "gemma": lambda: GemmaConfig(**_COMMON_DECODER, head_dim=8),
    "gemma2": lambda: Gemma2Config(**_COMMON_DECODER, head_dim=8),
}
ARCHS = sorted(CONFIGS)


def tiny_model(arch: str, seed: int = 0):
    """A seeded random model in eval mode, fp32, eager attention (exact comparisons)."""
    torch.manual_seed(seed)
    config = CONFIGS[arch]()
    config._attn_implementation = "eager"
    return AutoModelForCausalLM.from_config(config).eval()


def random_ids(batch: int = 2, seq: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(2, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))
