"""Write a static feature-browser site from saved `FeatureStats` (no model needed).

    write_site([stats_e2e, stats_local], "outputs/browse", nearest=nearest_links(...))

The site opens from disk (`index.html`, no server): every piece of data is a script file that assigns to a
global (`<script src>` works from file://, `fetch()` does not). `data/index-<k>.js` holds one short row per
feature (the list page paginates over it); per-feature details (contexts, histogram, logit effects) live in
shards of `SHARD` features, `data/sae<k>/shard-<n>.js`, loaded only when a feature page shows them. So a
46,080-feature SAE costs the list page a few MB and a feature page one shard.
"""
from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..feature_stats import FeatureStats
from .folder import claim_browser_folder

logger = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "assets"
SHARD = 64
TOP_TOKENS = 3


def _js(target: str, value) -> str:
    """`target=<value as JSON>;` for a script file; `</` inside a string must not end a <script> block."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=True).replace("</", "<\\/")
    return target + "=" + text + ";\n"


def _round(values: torch.Tensor, digits: int = 4) -> torch.Tensor:
    """Values rounded to `digits` decimals, as float64 (short JSON)."""
    scale = 10.0 ** digits
    return (values.double() * scale).round() / scale


def _top_tokens(stats: FeatureStats, feature: int) -> list:
    """The most frequent tokens at the top activations (ties: the stronger activation first)."""
    index = [i for i in stats.top_index[feature].tolist() if i >= 0]
    counts = Counter(int(stats.tokens[i]) for i in index)
    return [tok for tok, _ in counts.most_common(TOP_TOKENS)]


def _index_rows(stats: FeatureStats, links: dict) -> list:
    """One row per feature: [id, density, mean act, max act, top token ids, top logit ids, links]."""
    density, mean, max_act = stats.density, stats.mean_act, stats.max_act
    top_logits = stats.logits.get("logit_top_ids")
    rows = []
    for f in range(stats.dict_size):
        rows.append([
            f, float(f"{density[f].item():.4g}"), float(f"{mean[f].item():.4g}"), float(f"{max_act[f].item():.4g}"),
            _top_tokens(stats, f), top_logits[f, :TOP_TOKENS].tolist() if top_logits is not None else [],
            {str(k): [int(v[0][f]), round(float(v[1][f]), 3)] for k, v in links.items()},
        ])
    return rows


def _shard_details(stats: FeatureStats, features: range, tokens: list) -> list:
    """Per feature: {"h": histogram, "m": top activation, "c": contexts, "lt"/"lb": logit effects}.

    A context is `[token ids, activations in thousandths of "m", index of the activating token]`, cut where its
    sequence ends (integers keep the shards small and quick to write and parse)."""
    left, right = stats.window
    sel = slice(features.start, features.stop)
    top = stats.top_values[sel, :1]
    permille = (stats.top_window[sel] / top.clamp(min=1e-30).unsqueeze(-1) * 1000).round().int().tolist()
    index, hist = stats.top_index[sel].tolist(), stats.hist[sel].tolist()
    tops = _round(top[:, 0], 6).tolist()
    logits = {k: (stats.logits[f"logit_{k}_ids"][sel].tolist(), _round(stats.logits[f"logit_{k}_values"][sel]).tolist())
              for k in ("top", "bottom") if f"logit_{k}_ids" in stats.logits}
    details = []
    for i in range(len(features)):
        contexts = []
        for j, at in enumerate(index[i]):
            if at < 0:
                continue
            row_start = at - at % stats.seq_len
            lo, hi = max(row_start, at - left), min(row_start + stats.seq_len, at + right + 1)
            contexts.append([tokens[lo:hi], permille[i][j][lo - (at - left): hi - (at - left)], at - lo])
        detail = {"h": hist[i], "m": tops[i], "c": contexts}
        if logits:
            detail["lt"] = [logits["top"][0][i], logits["top"][1][i]]
            detail["lb"] = [logits["bottom"][0][i], logits["bottom"][1][i]]
        details.append(detail)
    return details


def _write_shards(stats: FeatureStats, k: int, data: Path) -> None:
    folder = data / f"sae{k}"
    folder.mkdir(parents=True, exist_ok=True)
    tokens = stats.tokens.tolist()
    for shard, start in enumerate(range(0, stats.dict_size, SHARD)):
        details = _shard_details(stats, range(start, min(start + SHARD, stats.dict_size)), tokens)
        (folder / f"shard-{shard}.js").write_text(f"BROWSER.addShard({k},{shard},{json.dumps(details, separators=(',', ':'))});\n")


def _used_token_ids(stats: FeatureStats) -> set:
    used = set(stats.tokens.tolist())
    for name in ("logit_top_ids", "logit_bottom_ids"):
        if name in stats.logits:
            used |= set(stats.logits[name].flatten().tolist())
    return used


def write_site(stats_list: Sequence[FeatureStats], out_dir, nearest: Optional[dict] = None,
               title: str = "SAE feature browser") -> Path:
    """Write the site for one or more SAEs (several: best at one site, shown side by side).

    Args:
        stats_list: one `FeatureStats` per SAE, each with `vocab` filled (token id -> text).
        nearest: `{(i, j): (index (F_i,), cosine (F_i,))}`: for each feature of SAE i, its nearest feature of SAE j
            by decoder cosine similarity (see `evaluation.geometry.nearest_features`).
    Returns:
        The path of `index.html`.
    Raises:
        BrowserFolderError: `out_dir` exists, is not empty and was not written by the browser (left untouched).
    """
    out = claim_browser_folder(out_dir)  # new, empty or the browser's own: never the user's files
    data = out / "data"
    if data.exists():
        shutil.rmtree(data)  # a stale shard of another run must never be shown
    data.mkdir(parents=True)
    nearest = nearest or {}
    vocab: dict = {}
    meta = []
    for k, stats in enumerate(stats_list):
        missing = _used_token_ids(stats) - set(stats.vocab)
        if missing:
            raise ValueError(f"FeatureStats for {stats.site!r} lacks the text of {len(missing)} token ids (vocab)")
        vocab.update({i: stats.vocab[i] for i in _used_token_ids(stats)})
        links = {j: v for (i, j), v in nearest.items() if i == k}
        (data / f"index-{k}.js").write_text(_js(f"BROWSER_INDEX[{k}]", _index_rows(stats, links)))
        _write_shards(stats, k, data)
        meta.append({"label": stats.label or f"SAE {k}", "site": stats.site, "dict_size": stats.dict_size,
                     "n_tokens": stats.n_tokens, "dead": int((stats.fire_count == 0).sum()),
                     "hist_range": list(stats.hist_range), "shard": SHARD})
    (data / "meta.js").write_text(_js("var BROWSER_META", {"title": title, "saes": meta}) + "var BROWSER_INDEX=[];\n")
    (data / "vocab.js").write_text(_js("var BROWSER_VOCAB", {str(i): vocab[i] for i in sorted(vocab)}))
    for name in ("index.html", "feature.html", "browser.js", "style.css"):
        shutil.copyfile(ASSETS / name, out / name)
    logger.info("Feature browser written to %s", out / "index.html")
    return out / "index.html"
