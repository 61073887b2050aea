"""Local training from an activation cache: the frozen base model's activations at the SAE site, kept on disk.

A local run (reconstruction + sparsity, no KL, no downstream term) needs only the activation at its SAE site, and
that activation does not change while the SAE trains. With `activation_cache: PATH` the trainer

1. builds the cache when PATH does not exist (on the main process; the others wait): one no-grad pass of the base
   model over the run's training samples, stopped after the site, each distinct sample once (so epochs and
   repeated samples cost one pass);
2. checks an existing PATH against the run before any model loads (`check_cache`, from `training.preflight`: base
   model and its config hash, dtype, mixed precision, site, context length, data) and reuses it;
3. trains from it: every micro-batch holds the cached activations of the samples, in the order, that the live run
   would read (each sample is found by the hash of its tokens), and only the SAE, the local loss and the
   registered loss terms (AuxK, ...) run. Same data order and seed: the same SAE weights as the live run.

Layout of PATH (built in a sibling `PATH.tmp-*` folder, renamed to PATH once complete; nothing is pickled):

    manifest.json          identity (base model, config hash, dtypes, sites, context length, data) and sizes
    chunks/                a `datasets` Dataset, one row per distinct sample: `token_hash` (blake2b of its tokens)
    activations/00000/...  `datasets` Datasets (save_to_disk; memory-mapped on load), one row per token, one column
                           per site of d_in floats; sample c is rows [c*L, (c+1)*L) of their concatenation

    loader = cached_train_loader(run, train_ds)           # in setup_run, instead of the token loader
    total, terms, sae_outputs = cached_micro_batch_loss(run, batch)
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from ..patching.base_models import BUILTIN_PREFIX, config_hash, resolve_base_model
from ..sae.sites import parse_site
from ..config.arguments import ConfigError, to_dict
from ..runs.redaction import redact_secrets
from .cache_integrity import check_integrity, seal

logger = logging.getLogger(__name__)

FORMAT = "hf_e2e_sae.activation_cache"
VERSION = 1
MANIFEST = "manifest.json"
SHARD_BYTES = 256 * 2**20
"""Activations buffered in memory before a shard is written."""
_DATA_KNOBS = ("context_length", "streaming", "shuffle", "shuffle_seed", "shuffle_buffer_size", "num_proc",
               "max_epochs", "map_batch_size")
"""DataConfig fields that change the order or the loading, not which token chunks exist (the order comes from the
run; a chunk the cache lacks is found when the run's samples are looked up)."""
_STORAGE = {torch.float32: torch.float32, torch.bfloat16: torch.float32, torch.float16: torch.float16}
"""Activation dtype -> dtype on disk (Arrow has no bfloat16; bfloat16 -> float32 is exact)."""


# ---------------------------------------------------------------- identity and checks
def _base_model_id(name_or_path: str) -> str:
    """A built-in name or Hub id as given; a local folder as its absolute path."""
    if name_or_path.startswith(BUILTIN_PREFIX):
        return name_or_path
    where = resolve_base_model(name_or_path)
    return str(Path(where).expanduser().resolve()) if os.path.isdir(os.path.expanduser(where)) else where


def cache_identity(config, base_config) -> dict:
    """What a cache must match to serve the run `config` (a `TrainConfig`) on a base model with `base_config`."""
    data = redact_secrets(to_dict(config.data))  # credentials never reach the manifest
    for knob in _DATA_KNOBS:
        data.pop(knob, None)
    return {"base_model": _base_model_id(config.base_model.name_or_path),
            "base_model_revision": config.base_model.revision,
            "base_model_config_hash": config_hash(base_config),
            "base_model_dtype": config.base_model.dtype,
            "mixed_precision": config.mixed_precision,
            "context_length": config.data.context_length,
            "data": data}


def read_manifest(path) -> dict:
    """The manifest of a complete cache at `path`; raises `ValueError` for anything else."""
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise ValueError(f"{path} exists but is not a complete activation cache (no {MANIFEST}): delete it or "
                         "choose another folder")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{file} is damaged ({' '.join(str(e).split())}): delete the cache to rebuild it") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(f"{path}/{MANIFEST} is not a version-{VERSION} hf_e2e_sae activation cache")
    return manifest


def _difference(cached: Any, wanted: Any, field: str) -> Optional[tuple]:
    """The first `(field, cached, wanted)` where two manifests differ (dicts compared key by key)."""
    if isinstance(cached, dict) and isinstance(wanted, dict):
        for key in sorted(set(cached) | set(wanted)):
            found = _difference(cached.get(key), wanted.get(key), f"{field}.{key}")
            if found:
                return found
        return None
    return None if cached == wanted else (field, cached, wanted)


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_cache(path, config, base_config) -> dict:
    """Raise `ValueError` (one line, naming the first mismatch) unless the cache at `path` serves `config`.

    Returns:
        `dict`: the cache's manifest.
    """
    manifest = read_manifest(path)
    for key, wanted in cache_identity(config, base_config).items():
        found = _difference(manifest.get(key), wanted, key)
        if found:
            field, cached, wanted = found
            raise ValueError(f"{path} was built for {field}={_short(cached)}, this run has {_short(wanted)}: "
                             "choose another folder (it is built there) or delete this one")
    missing = [site for site in map(str, map(parse_site, config.sites)) if site not in manifest["sites"]]
    if missing:
        raise ValueError(f"{path} was built for sites {manifest['sites']}, this run trains {missing[0]!r}: "
                         "choose another folder (it is built there) or delete this one")
    check_integrity(path, manifest)  # shards as the manifest says (dtype, width), content hashes (cache_integrity)
    return manifest


# ---------------------------------------------------------------- building
def token_hash(input_ids: torch.Tensor) -> str:
    """A sample's identity: blake2b-128 of its token ids (as int64)."""
    return hashlib.blake2b(input_ids.to(torch.int64).cpu().numpy().tobytes(), digest_size=16).hexdigest()


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """Hide `datasets`' own progress bars (one per shard saved) while ours runs."""
    from datasets.utils import disable_progress_bars, enable_progress_bars, are_progress_bars_disabled

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


class _ShardWriter:
    """Buffers activations `{site: (n, seq, d)}` and saves them as consecutive `datasets` shards."""

    def __init__(self, folder: Path, sites: list, shard_bytes: Optional[int] = None):
        self.folder, self.sites, self.shard_bytes = folder, sites, shard_bytes or SHARD_BYTES
        self.buffer: dict = {site: [] for site in sites}
        self.buffered = self.n_shards = 0
        self.dtype: Optional[torch.dtype] = None

    def add(self, activations: dict) -> None:
        for site in self.sites:
            x = activations[site].detach()
            self.dtype = x.dtype
            rows = x.reshape(-1, x.shape[-1]).to(_STORAGE.get(x.dtype, torch.float32)).cpu().numpy()
            self.buffer[site].append(rows)
            self.buffered += rows.nbytes
        if self.buffered >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        import datasets
        import pyarrow as pa

        if not self.buffered:
            return
        columns = {}
        for site in self.sites:
            rows = np.concatenate(self.buffer[site])
            columns[site] = pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), rows.shape[1])
        with _quiet_datasets():
            datasets.Dataset(pa.table(columns)).save_to_disk(str(self.folder / f"{self.n_shards:05d}"))
        self.n_shards += 1
        self.buffer, self.buffered = {site: [] for site in self.sites}, 0


def site_activations(model, input_ids: torch.Tensor, sites: list, autocast: Callable = contextlib.nullcontext) -> dict:
    """`{site: (batch, seq, d)}` of the clean base model (SAEs off, no grad), the pass stopped after the last site."""
    with torch.no_grad(), model.saes_disabled(), autocast():
        out = model(input_ids=input_ids.to(model.device), cache_sites=sites, stop_early=True)
    return {site: out.cached_activations[site] for site in sites}


def _write_cache(model, batches: Iterable[torch.Tensor], folder: Path, identity: dict, sites: list,
                 autocast: Callable, total: Optional[int]) -> dict:
    """Fill `folder` (a fresh temporary folder) with the cache of `batches`; the manifest is written last."""
    import datasets

    writer, hashes, index, n_samples = _ShardWriter(folder / "activations", sites), [], {}, 0
    with tqdm(total=total, desc="activation cache", unit="sample") as bar:
        for input_ids in batches:
            new = []
            for i, key in enumerate(map(token_hash, input_ids)):
                if key not in index:
                    index[key] = len(hashes)
                    hashes.append(key)
                    new.append(i)
            if new:
                writer.add(site_activations(model, input_ids[new], sites, autocast))
            n_samples += len(input_ids)
            bar.update(len(input_ids))
    writer.flush()
    if not hashes:
        raise ValueError("activation_cache: the run has no training samples to cache")
    with _quiet_datasets():
        datasets.Dataset.from_dict({"token_hash": hashes}).save_to_disk(str(folder / "chunks"))
    manifest = {"format": FORMAT, "version": VERSION, **identity, "sites": sites,
                "d_in": int(model.sae(sites[0]).config.d_in), "dtype": str(writer.dtype).removeprefix("torch."),
                "n_chunks": len(hashes), "n_tokens": len(hashes) * identity["context_length"],
                "n_samples_read": n_samples, "n_shards": writer.n_shards}
    manifest = seal(manifest, folder)  # content hashes of every shard, and of the manifest itself
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    return manifest


def _publish(tmp: Path, path: Path) -> None:
    """Rename the finished `tmp` to `path`; if another run published `path` first, keep theirs."""
    try:
        os.rename(tmp, path)
    except OSError:
        if not (path / MANIFEST).is_file():
            raise
        logger.info("%s was completed by another run meanwhile; using it", path)
        shutil.rmtree(tmp, ignore_errors=True)


def _warn_if_disk_short(folder: Path, upper_bound: int) -> None:
    free = shutil.disk_usage(folder).free
    if upper_bound > free:
        logger.warning("The activation cache may need up to %.1f GB (fewer if samples repeat); %.1f GB are free in %s",
                       upper_bound / 1e9, free / 1e9, folder)


def build_cache(model, batches: Iterable[torch.Tensor], path, identity: dict, sites: list,
                autocast: Callable = contextlib.nullcontext, total: Optional[int] = None) -> None:
    """Write the cache of the token batches `batches` at `sites` of `model` (an `SAEPatchedModel`) to `path`.

    Args:
        batches: `(batch, seq)` token ids, in training order; each distinct sample is run and stored once.
        identity: `cache_identity(...)` of the run, recorded in the manifest.
        autocast: a zero-argument context manager factory the passes run under (the run's mixed precision).
        total: samples in `batches`, for the progress bar.

    The cache is written to a temporary sibling folder and renamed into place once complete: an interrupted build
    leaves no folder at `path` (and removes its temporary folder unless the process is killed outright).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if total:
        _warn_if_disk_short(path.parent, total * identity["context_length"] * model.sae(sites[0]).config.d_in
                            * 4 * len(sites))
    tmp = path.parent / f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        manifest = _write_cache(model, batches, tmp, identity, sites, autocast, total)
        _publish(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("Activation cache written to %s: %d distinct samples (%d tokens) at %s", path, manifest["n_chunks"],
                manifest["n_tokens"], sites)


# ---------------------------------------------------------------- reading
class ActivationCache:
    """A complete cache, memory-mapped: `manifest`, `chunk_of` ({token hash: chunk}) and `read(site, chunks)`."""

    def __init__(self, path):
        import datasets

        self.path, self.manifest = Path(path), read_manifest(path)
        self.context_length, self.d_in = self.manifest["context_length"], self.manifest["d_in"]
        self.dtype = getattr(torch, self.manifest["dtype"])
        shards = sorted(p for p in (self.path / "activations").iterdir() if p.is_dir())
        table = datasets.concatenate_datasets([datasets.load_from_disk(str(p)) for p in shards]).data.table
        if table.num_rows != self.manifest["n_tokens"]:
            raise ValueError(f"{path}: {table.num_rows} activation rows, the manifest says {self.manifest['n_tokens']}")
        self.columns = {site: table.column(site) for site in self.manifest["sites"]}
        hashes = datasets.load_from_disk(str(self.path / "chunks"))["token_hash"]
        self.chunk_of = {key: i for i, key in enumerate(hashes)}

    def read(self, site: str, chunks) -> torch.Tensor:
        """`(len(chunks), seq, d_in)` activations of the samples `chunks`, in the activation dtype."""
        L, column = self.context_length, self.columns[site]
        parts = [piece.flatten().to_numpy(zero_copy_only=True)
                 for chunk in chunks for piece in column.slice(int(chunk) * L, L).chunks]
        return torch.from_numpy(np.concatenate(parts).reshape(len(chunks), L, self.d_in)).to(self.dtype)


class CachedMicroBatches(torch.utils.data.Dataset):
    """Item m: `{site: (batch_size, seq, d_in)}` of samples [m * batch_size, (m + 1) * batch_size) of `chunks`."""

    def __init__(self, cache: ActivationCache, chunks: np.ndarray, batch_size: int, sites: list):
        self.cache, self.chunks, self.batch_size, self.sites = cache, chunks, batch_size, sites

    def __len__(self) -> int:
        return -(-len(self.chunks) // self.batch_size)

    def __getitem__(self, m: int) -> dict:
        chunks = self.chunks[m * self.batch_size:(m + 1) * self.batch_size]
        return {site: self.cache.read(site, chunks) for site in self.sites}


def only_item(items: list) -> dict:
    return items[0]  # each item is a whole micro-batch already


def sample_chunks(cache: ActivationCache, train_ds, batch_size: int = 256) -> np.ndarray:
    """The cache chunk of every sample of `train_ds`, in order; raises `ConfigError` naming a missing sample."""
    from .pipeline import create_dataloader

    chunks = []
    for batch in create_dataloader(train_ds, batch_size):
        for input_ids in batch["input_ids"]:
            chunk = cache.chunk_of.get(token_hash(input_ids))
            if chunk is None:
                raise ConfigError(f"activation_cache: {cache.path} lacks training sample {len(chunks)} of this run "
                                  f"(it holds {len(cache.chunk_of)} samples): use another folder for this data")
            chunks.append(chunk)
    return np.asarray(chunks, dtype=np.int64)
