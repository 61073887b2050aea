"""Build the offline code corpus and its BPE tokenizer, and count its tokens (the stand-in model's data).

    python examples/build_code_corpus.py --out data/code_corpus                 # everything installed + stdlib
    python examples/build_code_corpus.py --out /tmp/cc --no-distributions       # the standard library only

Writes OUT/train.jsonl and OUT/heldout.jsonl ({"text", "package"} per source file), OUT/manifest.json (every
package with its version, licence, whether it was kept, its split, files and bytes; the splits' sizes and
sha256), OUT/tokenizer/ (a byte-level BPE trained on the train split only; --vocab-size) and OUT/tokens.json (the
token count of each split). See hf_e2e_sae/pretraining/code_corpus.py for the rules.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path

from hf_e2e_sae.data.corpus import train_bpe_tokenizer
from hf_e2e_sae.pretraining.code_corpus import build_corpus, collect_sources

logger = logging.getLogger("build_code_corpus")


def _texts(path: Path, fraction: float = 1.0, seed: int = 0):
    rng = random.Random(seed)
    with open(path, encoding="utf-8") as f:
        for line in f:
            if fraction >= 1.0 or rng.random() < fraction:
                yield json.loads(line)["text"]


def count_tokens(tokenizer, path: Path, batch: int = 256) -> int:
    total, texts = 0, []
    for text in _texts(path):
        texts.append(text)
        if len(texts) == batch:
            total += sum(len(ids) for ids in tokenizer(texts)["input_ids"])
            texts = []
    return total + (sum(len(ids) for ids in tokenizer(texts)["input_ids"]) if texts else 0)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-stdlib", action="store_true", help="leave out the standard library")
    p.add_argument("--no-distributions", action="store_true", help="leave out the installed distributions")
    p.add_argument("--vocab-size", type=int, default=16384, help="BPE vocabulary size (default 16,384)")
    p.add_argument("--tokenizer-fraction", type=float, default=0.25,
                   help="fraction of the train files the tokenizer is trained on (seeded; default 0.25)")
    p.add_argument("--skip-count", action="store_true", help="do not tokenize the whole corpus to count tokens")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    manifest = build_corpus(collect_sources(stdlib=not args.no_stdlib, distributions=not args.no_distributions), out)
    kept = [pkg for pkg in manifest["packages"] if pkg["permissive"]]
    logger.info("%d packages kept of %d; train %.1f MB, held-out %.1f MB", len(kept), len(manifest["packages"]),
                manifest["splits"]["train"]["bytes"] / 1e6, manifest["splits"]["heldout"]["bytes"] / 1e6)
    tokenizer = train_bpe_tokenizer(_texts(out / "train.jsonl", args.tokenizer_fraction), args.vocab_size)
    tokenizer.save_pretrained(out / "tokenizer")
    if not args.skip_count:
        tokens = {split: count_tokens(tokenizer, out / f"{split}.jsonl") for split in ("train", "heldout")}
        (out / "tokens.json").write_text(json.dumps(tokens, indent=1))
        logger.info("tokens: %s", tokens)


if __name__ == "__main__":
    main()
