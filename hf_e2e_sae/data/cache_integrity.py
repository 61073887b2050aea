"""Content hashes of an activation cache, and the check that its shards are what its manifest says.

When a cache is written, the sha256 of every file under `activations/` and `chunks/` goes into the manifest
(`files_sha256`), and a sha256 of the manifest itself (`manifest_sha256`, over its other keys). Before a run uses
an existing cache (`check_cache`, in preflight, before any model loads):

1. every shard's Arrow schema must hold the manifest's sites as fixed-size lists of `d_in` values of the storage
   dtype of the manifest's `dtype` (so a manifest that claims another dtype or width is refused, not reinterpreted);
2. every file must be present with its recorded hash (a changed or swapped shard is refused);
3. the manifest must hash to `manifest_sha256` (an edited manifest is refused).

Caches written before the hashes existed pass steps 2 and 3 (there is nothing to compare) but not step 1.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..runs.checkpoint_files import file_sha256

_STORAGE_NAMES = {"float32": "float", "bfloat16": "float", "float16": "halffloat"}
"""Activation dtype (manifest) -> Arrow value type of the shards (bfloat16 is stored as float32)."""
_HASHED = ("activations", "chunks")




def content_hashes(folder: Path) -> dict:
    """`{relative path: sha256}` of every file of the cache's shards and chunk index."""
    return {str(p.relative_to(folder)): file_sha256(p)
            for part in _HASHED for p in sorted((folder / part).rglob("*")) if p.is_file()}


def manifest_hash(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def seal(manifest: dict, folder: Path) -> dict:
    """The manifest with the content hashes of `folder` and its own hash added."""
    sealed = {**manifest, "files_sha256": content_hashes(folder)}
    return {**sealed, "manifest_sha256": manifest_hash(sealed)}


def _check_shard_schemas(path: Path, manifest: dict) -> None:
    import pyarrow as pa

    dtype, d_in, sites = manifest.get("dtype"), manifest.get("d_in"), manifest.get("sites")
    if dtype not in _STORAGE_NAMES:
        raise ValueError(f"{path}/manifest.json: dtype={dtype!r} is not an activation dtype {sorted(_STORAGE_NAMES)}")
    if isinstance(d_in, bool) or not isinstance(d_in, int) or d_in <= 0 or not isinstance(sites, list):
        raise ValueError(f"{path}/manifest.json: d_in={d_in!r} / sites={sites!r} are not a width and a site list")
    shards = sorted(p for p in (path / "activations").iterdir() if p.is_dir()) \
        if (path / "activations").is_dir() else []
    if len(shards) != manifest.get("n_shards"):
        raise ValueError(f"{path}: {len(shards)} activation shards, the manifest says {manifest.get('n_shards')}")
    for shard in shards:
        arrows = sorted(shard.glob("*.arrow"))
        if not arrows:
            raise ValueError(f"{shard}: no .arrow file")
        for arrow in arrows:
            try:
                with pa.memory_map(str(arrow)) as source:
                    schema = pa.ipc.open_stream(source).schema
            except (pa.ArrowInvalid, OSError) as e:
                raise ValueError(f"{arrow}: damaged shard ({' '.join(str(e).split())})") from None
            for site in sites:
                if site not in schema.names:
                    raise ValueError(f"{arrow}: no column for site {site!r} the manifest lists")
                kind = schema.field(site).type
                if not pa.types.is_fixed_size_list(kind) or kind.list_size != d_in:
                    raise ValueError(f"{arrow}: site {site!r} holds {kind}, but the manifest says d_in={d_in}")
                if str(kind.value_type) != _STORAGE_NAMES[dtype]:
                    raise ValueError(f"{arrow}: site {site!r} holds {kind.value_type} values, but the manifest says "
                                     f"dtype={dtype} (stored as {_STORAGE_NAMES[dtype]})")


def check_integrity(path, manifest: dict) -> None:
    """Raise `ValueError` (one line, naming the file) unless the cache at `path` is what `manifest` says."""
    path = Path(path)
    _check_shard_schemas(path, manifest)
    recorded = manifest.get("files_sha256")
    if recorded is not None:
        actual = content_hashes(path)
        for name in sorted(set(recorded) | set(actual)):
            if recorded.get(name) != actual.get(name):
                state = "is missing" if name not in actual else "was added" if name not in recorded else \
                    "does not match the sha256 the manifest records"
                raise ValueError(f"{path / name} {state} (the cache changed after it was written): delete the cache "
                                 "to rebuild it")
    if "manifest_sha256" in manifest and manifest_hash(manifest) != manifest["manifest_sha256"]:
        raise ValueError(f"{path}/manifest.json was edited after the cache was written (its sha256 differs): delete "
                         "the cache to rebuild it")
