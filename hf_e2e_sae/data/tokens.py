"""Documents to token ids: the tokenizing step shared by map-style preparation and the streamed workers."""
from __future__ import annotations

from typing import Any, Optional


def tokenize_texts(texts: list[Optional[str]], tokenizer: Any) -> list[list[int]]:
    """Tokenizes documents without special tokens and appends EOS to each; empty/None documents are dropped."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token; documents are joined with EOS when packing")
    texts = [t for t in texts if t]
    if not texts:
        return []
    ids = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
    return [x + [tokenizer.eos_token_id] for x in ids]


def short_row_error(index: int, n: int, context_length: int) -> ValueError:
    return ValueError(f"pre-tokenized row {index} has {n} tokens < context_length={context_length}; pre-tokenized "
                      "rows are used as is (one row = one sample, longer rows truncated): lower context_length or "
                      "provide raw text")
