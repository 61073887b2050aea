"""Per-feature statistics of an SAE over held-out text, in one streaming pass with bounded memory.

    stats = compute_feature_stats(model, batches, tokenizer=tokenizer)   # {site: FeatureStats}
    stats["blocks.2.resid_pre"].save("outputs/browse/data")            # safetensors + JSON
    FeatureStats.load("outputs/browse/data", "blocks.2.resid_pre")     # no model needed

Per feature: firing count (density = count / tokens), activation sum (mean over all tokens and over the
tokens where it fires), max activation, a histogram of log10(activation) over the tokens where it fires,
and the `top_n` strongest activations with the activations of a window of tokens around each (for
highlighting). Memory is O(dict_size x top_n x window) plus one batch of latents: each batch's top
activations are merged into the running top-n tensors (a vectorised per-feature heap) and the batch is
dropped. The evaluated token ids are kept (4 bytes per token) so contexts can be shown later.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

HIST_LOG10_RANGE = (-4.0, 3.0)  # activations outside are counted in the first / last bin
HIST_BINS = 56

_TENSORS = ("fire_count", "act_sum", "max_act", "hist", "top_values", "top_index", "top_window", "tokens")
_OPTIONAL = ("logit_top_ids", "logit_top_values", "logit_bottom_ids", "logit_bottom_values")


@dataclass
class FeatureStats:
    """Statistics of one SAE's features (see the module docstring); tensors are indexed by feature first.

    `top_index` holds global token positions (into `tokens`, -1 where the feature fired fewer than `top_n`
    times); `top_window[f, j]` holds the feature's activations at positions `top_index - left .. + right`
    (0 outside the sequence); sequences are `seq_len` tokens long and windows never cross them.
    """

    site: str
    n_tokens: int
    seq_len: int
    window: tuple
    fire_count: torch.Tensor
    act_sum: torch.Tensor
    max_act: torch.Tensor
    hist: torch.Tensor
    top_values: torch.Tensor
    top_index: torch.Tensor
    top_window: torch.Tensor
    tokens: torch.Tensor
    hist_range: tuple = HIST_LOG10_RANGE
    vocab: dict = field(default_factory=dict)
    logits: dict = field(default_factory=dict)
    label: str = ""
    decoder: Optional[torch.Tensor] = None  # unit-norm dictionary (dict_size, d_in), for nearest-feature links; not saved

    @property
    def dict_size(self) -> int:
        return int(self.fire_count.shape[0])

    @property
    def density(self) -> torch.Tensor:
        return self.fire_count.double() / max(self.n_tokens, 1)

    @property
    def mean_act(self) -> torch.Tensor:
        """Mean activation over the tokens where the feature fires (0 for dead features)."""
        return torch.where(self.fire_count > 0, self.act_sum / self.fire_count.clamp(min=1).double(), 0.0)

    def save(self, directory) -> Path:
        """Write `<site>.safetensors` and `<site>.json` under `directory`; returns the safetensors path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {name: getattr(self, name).contiguous() for name in _TENSORS}
        tensors.update({name: t.contiguous() for name, t in self.logits.items()})
        for name, t in tensors.items():
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise ValueError(f"FeatureStats.{name} has non-finite values; refusing to save")
        path = directory / f"{self.site}.safetensors"
        save_file(tensors, str(path))
        meta = {"site": self.site, "n_tokens": self.n_tokens, "seq_len": self.seq_len, "window": list(self.window),
                "hist_range": list(self.hist_range), "label": self.label,
                "vocab": {str(k): v for k, v in sorted(self.vocab.items())}}
        (directory / f"{self.site}.json").write_text(json.dumps(meta) + "\n")
        return path

    @classmethod
    def load(cls, directory, site: str) -> "FeatureStats":
        directory = Path(directory)
        tensors = load_file(str(directory / f"{site}.safetensors"))
        meta = json.loads((directory / f"{site}.json").read_text())
        return cls(site=meta["site"], n_tokens=meta["n_tokens"], seq_len=meta["seq_len"], window=tuple(meta["window"]),
                   hist_range=tuple(meta["hist_range"]), vocab={int(k): v for k, v in meta["vocab"].items()},
                   logits={k: tensors[k] for k in _OPTIONAL if k in tensors}, label=meta.get("label", ""),
                   **{k: tensors[k] for k in _TENSORS})


class _Accumulator:
    """Running statistics of one site; `add` takes one batch of latents `(batch, seq, dict_size)`."""

    def __init__(self, dict_size: int, top_n: int, window: tuple, n_bins: int, hist_range: tuple):
        self.top_n, self.window, self.n_bins, self.hist_range = top_n, window, n_bins, hist_range
        self.width = window[0] + 1 + window[1]
        self.fire_count = torch.zeros(dict_size, dtype=torch.int64)
        self.act_sum = torch.zeros(dict_size, dtype=torch.float64)
        self.max_act = torch.zeros(dict_size)
        self.hist = torch.zeros(dict_size * n_bins, dtype=torch.int64)
        self.top_values = torch.full((dict_size, 0), float("-inf"))
        self.top_index = torch.zeros((dict_size, 0), dtype=torch.int64)
        self.top_window = torch.zeros((dict_size, 0, self.width))

    def add(self, latents: torch.Tensor, mask: torch.Tensor, offset: int) -> None:
        latents = latents.detach().float().cpu()
        batch, seq, dict_size = latents.shape
        mask = mask.cpu().bool()
        latents = latents * mask.unsqueeze(-1)  # padding never counts, nor shows in a window
        flat = latents.reshape(-1, dict_size)
        fired = flat > 0
        self.fire_count += fired.sum(0)
        self.act_sum += flat.sum(0, dtype=torch.float64)
        self.max_act = torch.maximum(self.max_act, flat.max(0).values)
        self._add_hist(flat, fired)
        ranked = flat.masked_fill(~mask.reshape(-1, 1), float("-inf"))
        k = min(self.top_n, ranked.shape[0])
        values, index = ranked.topk(k, dim=0)  # (k, dict_size)
        windows = self._windows(latents, index, seq)  # (k, dict_size, width)
        self._merge(values.T, index.T + offset, windows.transpose(0, 1))

    def _add_hist(self, flat: torch.Tensor, fired: torch.Tensor) -> None:
        token, feature = fired.nonzero(as_tuple=True)
        lo, hi = self.hist_range
        bins = ((flat[token, feature].log10() - lo) / (hi - lo) * self.n_bins).floor().long().clamp(0, self.n_bins - 1)
        self.hist.index_add_(0, feature * self.n_bins + bins, torch.ones_like(bins))

    def _windows(self, latents: torch.Tensor, index: torch.Tensor, seq: int) -> torch.Tensor:
        """Activations of each selected (token, feature) pair's feature over its context window."""
        row, pos = index // seq, index % seq  # (k, F)
        offsets = torch.arange(-self.window[0], self.window[1] + 1)
        where = pos.unsqueeze(-1) + offsets  # (k, F, width)
        inside = (where >= 0) & (where < seq)
        feature = torch.arange(latents.shape[-1]).view(1, -1, 1)
        values = latents[row.unsqueeze(-1), where.clamp(0, seq - 1), feature]
        return values * inside

    def _merge(self, values: torch.Tensor, index: torch.Tensor, windows: torch.Tensor) -> None:
        all_values = torch.cat([self.top_values, values], 1)
        keep = all_values.topk(min(self.top_n, all_values.shape[1]), dim=1).indices
        self.top_values = all_values.gather(1, keep)
        self.top_index = torch.cat([self.top_index, index], 1).gather(1, keep)
        all_windows = torch.cat([self.top_window, windows], 1)
        self.top_window = all_windows.gather(1, keep.unsqueeze(-1).expand(-1, -1, self.width))

    def finish(self, site: str, n_tokens: int, seq_len: int, tokens: torch.Tensor) -> FeatureStats:
        missing = self.top_n - self.top_values.shape[1]  # fewer tokens than top_n in total
        values = torch.nn.functional.pad(self.top_values, (0, missing), value=0.0)
        index = torch.nn.functional.pad(self.top_index, (0, missing), value=-1)
        windows = torch.nn.functional.pad(self.top_window, (0, 0, 0, missing))
        fired = values > 0
        return FeatureStats(
            site=site, n_tokens=n_tokens, seq_len=seq_len, window=tuple(self.window), fire_count=self.fire_count,
            act_sum=self.act_sum, max_act=self.max_act, hist=self.hist.view(-1, self.n_bins),
            top_values=torch.where(fired, values, 0.0), top_index=torch.where(fired, index, -1),
            top_window=windows * fired.unsqueeze(-1), tokens=tokens, hist_range=tuple(self.hist_range))


def _as_batch(batch) -> tuple:
    if isinstance(batch, torch.Tensor):
        batch = {"input_ids": batch}
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    return ids, torch.ones_like(ids) if mask is None else mask


def token_strings(tokenizer, ids: Iterable[int]) -> dict:
    """`{id: text}` for each id, decoded one token at a time (what the browser shows)."""
    return {int(i): tokenizer.decode([int(i)]) for i in sorted(set(int(i) for i in ids))}


@torch.no_grad()
def compute_feature_stats(
    model,
    batches: Iterable,
    top_n: int = 20,
    window: tuple = (12, 4),
    n_bins: int = HIST_BINS,
    max_tokens: Optional[int] = None,
    tokenizer=None,
    progress: bool = True,
    total: Optional[int] = None,
) -> dict:
    """One pass of `batches` through `model` (an `SAEPatchedModel`); returns `{site: FeatureStats}`.

    Args:
        batches: `(batch, seq)` id tensors, or dicts with `input_ids` and optionally `attention_mask`; every
            batch must have the same sequence length.
        top_n: activating contexts kept per feature.
        window: tokens shown before and after each top activation.
        max_tokens: stop once this many tokens were seen (whole batches).
        tokenizer: if given, the token strings needed to show the contexts are stored (`stats.vocab`).
        total: number of batches, for the progress bar.
    """
    was_training = model.training
    model.eval()
    acc: dict = {}
    tokens, seen, n_real, seq_len = [], 0, 0, None
    for ids, mask in tqdm(map(_as_batch, batches), desc="feature stats", disable=not progress, total=total):
        if max_tokens is not None and seen >= max_tokens:
            break
        if seq_len is not None and ids.shape[1] != seq_len:
            raise ValueError(f"All batches must have one sequence length; got {ids.shape[1]} after {seq_len}")
        seq_len = ids.shape[1]
        out = model(ids.to(model.device), attention_mask=mask.to(model.device), stop_early=True)
        for site, site_out in out.sae_outputs.items():
            if site not in acc:
                acc[site] = _Accumulator(site_out.latents.shape[-1], top_n, window, n_bins, HIST_LOG10_RANGE)
            acc[site].add(site_out.latents, mask, seen)
        tokens.append(ids.reshape(-1).to(torch.int32).cpu())
        seen += ids.numel()
        n_real += int(mask.sum())
    model.train(was_training)
    if not n_real:
        raise ValueError("compute_feature_stats() saw no tokens")
    all_tokens = torch.cat(tokens)
    stats = {site: a.finish(site, n_real, int(seq_len), all_tokens) for site, a in acc.items()}
    if tokenizer is not None:
        vocab = token_strings(tokenizer, all_tokens.tolist())
        for s in stats.values():
            s.vocab = vocab
    return stats
