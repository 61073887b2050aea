"""`hf-e2e-sae browse RUN_OR_REPO [MORE_RUNS...] --out DIR [--n-tokens N]`: a static feature browser for saved SAEs.

Streams `N` held-out tokens through each run's patched model once (`compute_feature_stats`), adds each
feature's direct logit effect, links every feature to its nearest feature (decoder cosine) in each other SAE
at the same site, saves all of it under `DIR/stats/` (safetensors + JSON) and writes the site (`DIR/index.html`).
`--from-stats DIR/stats` rebuilds a site from saved statistics without any model.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from ..evaluation.browser import check_browser_folder, claim_browser_folder, write_site
from ..evaluation.feature_stats import FeatureStats, compute_feature_stats, token_strings
from ..evaluation.geometry import nearest_features
from ..evaluation.logit_effects import direct_logit_effects
from .runs import held_out_batches, held_out_config, load_run

logger = logging.getLogger(__name__)

NEAREST_FILE = "nearest.safetensors"
TARGET_LATENTS_PER_BATCH = 1 << 24  # latents (tokens x dict_size) held at once: 64 MiB of float32


def run_label(run: str, train_config: dict, site: str, several_sites: bool) -> str:
    path = Path(run)
    name = path.parent.name if path.name == "final" else path.name
    preset = (train_config.get("loss") or {}).get("preset")
    label = f"{preset} ({name})" if preset else name
    return f"{label} {site}" if several_sites else label


def batch_size_for(dict_size: int, context_length: int) -> int:
    return max(1, min(64, TARGET_LATENTS_PER_BATCH // (dict_size * context_length)))


def run_stats(run: str, n_tokens: int, args: argparse.Namespace, data=None) -> tuple:
    """FeatureStats (with logit effects and token strings) of every SAE of `run`, and the data config used."""
    model, tokenizer, train_config = load_run(run)
    data = data or held_out_config(train_config, n_tokens, args.data, args.split, args.context_length)
    dict_size = max(model.sae(s).config.dict_size for s in model.sites)
    batches = held_out_batches(data, tokenizer, batch_size_for(dict_size, data.context_length))
    stats = compute_feature_stats(model, batches, top_n=args.top_n, max_tokens=n_tokens, total=len(batches))
    for site, s in stats.items():
        s.logits = direct_logit_effects(model, site, k=args.n_logits)
        s.vocab = token_strings(tokenizer, set(s.tokens.tolist()) | set(s.logits["logit_top_ids"].flatten().tolist())
                                | set(s.logits["logit_bottom_ids"].flatten().tolist()))
        s.label = run_label(run, train_config, site, len(stats) > 1)
        s.decoder = model.sae(site).dictionary.detach().float().cpu()
    return list(stats.values()), data


def nearest_links(stats_list: list) -> dict:
    """`{(i, j): (index, cosine)}` between SAEs at the same site."""
    links = {}
    for i, a in enumerate(stats_list):
        for j, b in enumerate(stats_list):
            if i != j and a.site == b.site and a.decoder.shape[1] == b.decoder.shape[1]:
                cosine, index = nearest_features(a.decoder, b.decoder)
                links[(i, j)] = (index, cosine)
    return links


def save_all(stats_list: list, links: dict, stats_dir: Path) -> None:
    for k, s in enumerate(stats_list):
        s.save(stats_dir / f"sae{k}")
    tensors = {f"{i}-{j}.{name}": t.contiguous() for (i, j), pair in links.items() for name, t in zip(("index", "cosine"), pair)}
    save_file(tensors or {"none": torch.zeros(0)}, str(stats_dir / NEAREST_FILE))


def load_all(stats_dir: Path) -> tuple:
    """The saved statistics of `save_all` (ordered as saved) and their nearest-feature links; damaged or incomplete
    statistics are a one-line `ValueError` naming the folder (`OSError` for a missing one)."""
    from safetensors import SafetensorError

    if not Path(stats_dir).is_dir():
        raise FileNotFoundError(f"--from-stats {stats_dir}: no such folder")
    try:
        return _load_all(Path(stats_dir))
    except (SafetensorError, KeyError, IndexError, TypeError, ValueError, StopIteration, AttributeError,
            RuntimeError, OSError) as e:
        detail = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        raise ValueError(f"--from-stats {stats_dir}: damaged or incomplete statistics ({detail}); rebuild them "
                         "with `hf-e2e-sae browse RUN --out DIR`") from None


def _load_all(stats_dir: Path) -> tuple:
    folders = sorted((p for p in stats_dir.glob("sae*") if p.is_dir()), key=lambda p: int(p.name[3:]))
    stats_list = [FeatureStats.load(f, next(f.glob("*.json")).stem) for f in folders]
    raw = load_file(str(stats_dir / NEAREST_FILE))
    links = {}
    for key in raw:
        if key.endswith(".index"):
            i, j = map(int, key[: -len(".index")].split("-"))
            links[(i, j)] = (raw[key], raw[f"{i}-{j}.cosine"])
    return stats_list, links


def browse(runs: list, out_dir, n_tokens: int = 131_072, args: Optional[argparse.Namespace] = None) -> Path:
    """Compute statistics for every SAE of `runs` on the first run's held-out data and write the site."""
    args = args or parse_args([*runs, "--out", str(out_dir), "--n-tokens", str(n_tokens)])
    check_browser_folder(out_dir)  # before any model loads: never the user's own folder
    stats_list, data = [], None
    for run in runs:
        stats, data = run_stats(run, n_tokens, args, data)
        stats_list.extend(stats)
    links = nearest_links(stats_list)
    out = claim_browser_folder(out_dir)  # checked again: it may have changed while statistics were computed
    save_all(stats_list, links, out / "stats")
    return write_site(stats_list, out, nearest=links)


def parse_args(argv: list) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hf-e2e-sae browse", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="*", metavar="RUN_OR_REPO", help="saved run folder(s) or Hub repo(s)")
    parser.add_argument("--out", required=True, help="output folder (open OUT/index.html)")
    parser.add_argument("--n-tokens", type=int, default=131_072, help="held-out tokens to evaluate (default 131072)")
    parser.add_argument("--top-n", type=int, default=20, help="top activating contexts per feature")
    parser.add_argument("--n-logits", type=int, default=10, help="promoted / suppressed tokens per feature")
    parser.add_argument("--data", help="dataset path, when the run has no train_config.yaml (or to override it)")
    parser.add_argument("--split", help="split of --data (default: test)")
    parser.add_argument("--context-length", type=int, help="tokens per sequence (default: the run's)")
    parser.add_argument("--from-stats", help="rebuild the site from a saved OUT/stats folder (no model)")
    args = parser.parse_args(argv)
    if not args.runs and not args.from_stats:
        parser.error("give at least one RUN_OR_REPO (or --from-stats)")
    return args


def browse_main(argv: Optional[list] = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    start = time.time()
    try:
        check_browser_folder(args.out)
        if args.from_stats:
            stats_list, links = load_all(Path(args.from_stats))
            index = write_site(stats_list, args.out, nearest=links)
        else:
            index = browse(args.runs, args.out, args.n_tokens, args)
    except (ValueError, OSError) as error:  # bad run, too little held-out data, ...: one clear line
        sys.stderr.write(f"hf-e2e-sae browse: {error}\n")
        return 2
    sys.stdout.write(f"Feature browser: {Path(index).resolve()} ({time.time() - start:.1f} s)\n")
    return 0
