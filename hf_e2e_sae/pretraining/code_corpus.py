"""An offline corpus any machine with our install has: the Python sources of the standard library and of the
installed packages whose licence is permissive, deduplicated, split by package into train and held-out.

    sources = collect_sources()                    # stdlib modules + installed distributions, with licences
    manifest = build_corpus(sources, "data/code")  # train.jsonl, heldout.jsonl, manifest.json

Why this corpus (issue: a stand-in model larger than the Shakespeare one needs more real text than 5 MB): it is
hundreds of MB of real, human-written text (code, docstrings, comments), present wherever Python and our
dependencies are, needs no network, and its licences can be read from each distribution's metadata. A package is
kept only when every licence it declares is permissive (an `AND` with a copyleft licence drops it; `OR` keeps it
when one side is permissive). Held-out packages never share a file with training: the split is by package, decided
by a hash of its name, so it does not move when other packages come or go.
"""
from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import json
import logging
import re
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from ..runs.checkpoint_files import file_sha256

logger = logging.getLogger(__name__)

PERMISSIVE = ("mit", "bsd", "apache", "psf", "python software foundation", "isc", "unlicense", "zlib", "0bsd",
              "cc0", "hpnd", "public domain", "historical permission")
COPYLEFT = ("gpl", "mpl", "mozilla", "epl", "eclipse", "cddl", "eupl", "osl", "sspl", "copyleft", "commons clause")
MAX_FILE_BYTES = 1_000_000  # larger .py files are generated tables, not prose or code people wrote
HELD_OUT_EVERY = 20  # about 1 package in 20 goes to the held-out split


@dataclass
class Source:
    """One package's Python files and what its metadata says about its licence."""

    package: str
    version: str
    license: str
    files: list = field(default_factory=list)

    @property
    def permissive(self) -> bool:
        return is_permissive(self.license)


def is_permissive(license_text: str) -> bool:
    """Every licence named is permissive (SPDX `OR` alternatives: at least one side permissive and none forced)."""
    text = license_text.lower()
    if not text.strip():
        return False
    alternatives = re.split(r"\bor\b", text) if " or " in text and " and " not in text else [text]
    return any(any(p in alt for p in PERMISSIVE) and not any(c in alt for c in COPYLEFT) for alt in alternatives)


def _license_of(dist: metadata.Distribution) -> str:
    meta = dist.metadata
    expression = meta.get("License-Expression")
    if expression:
        return expression
    classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    short = (meta.get("License") or "").strip()
    short = short if short and "\n" not in short and len(short) < 80 else ""  # full licence texts: use classifiers
    return " AND ".join(classifiers) if classifiers else short


def _distribution_sources() -> list:
    sources = {}
    for dist in metadata.distributions():
        name = (dist.metadata.get("Name") or "").lower().replace("_", "-")
        if not name or name in sources:
            continue
        files = sorted(str(dist.locate_file(f)) for f in dist.files or [] if str(f).endswith(".py"))
        sources[name] = Source(name, dist.version, _license_of(dist), files)
    return list(sources.values())


def _stdlib_sources() -> list:
    """The standard library, one `stdlib:<top-level module>` package each (PSF licence)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    version = f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    grouped: dict = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in ("site-packages", "dist-packages"):
            continue
        grouped.setdefault(f"stdlib:{rel.parts[0].removesuffix('.py')}", []).append(str(path))
    return [Source(name, version, "PSF-2.0", files) for name, files in sorted(grouped.items())]


def collect_sources(stdlib: bool = True, distributions: bool = True) -> list:
    """Every package this interpreter has, with its `.py` files and licence, sorted by name."""
    sources = (_stdlib_sources() if stdlib else []) + (_distribution_sources() if distributions else [])
    return sorted(sources, key=lambda s: s.package)


def is_held_out(package: str) -> bool:
    """The package's split, from a hash of its name alone (stable whatever else is installed)."""
    return int(hashlib.sha256(package.encode()).hexdigest(), 16) % HELD_OUT_EVERY == 0


def _read(path: str) -> Optional[str]:
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    if not data.strip() or len(data) > MAX_FILE_BYTES:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def build_corpus(sources: Iterable[Source], out_dir, progress: bool = True) -> dict:
    """Write `train.jsonl` / `heldout.jsonl` (`{"text", "package"}` per file) and `manifest.json`; returns the
    manifest. Exact duplicates (same bytes) are kept once, in the first package (by name) that has them."""
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seen: set = set()
    packages, totals = [], {"train": [0, 0], "heldout": [0, 0]}  # files, bytes
    handles = {split: open(out / f"{split}.jsonl", "w", encoding="utf-8") for split in totals}
    try:
        for source in tqdm(list(sources), desc="packages", disable=not progress):
            split = "heldout" if is_held_out(source.package) else "train"
            record = {"package": source.package, "version": source.version, "license": source.license,
                      "permissive": source.permissive, "split": split, "files": 0, "bytes": 0, "duplicates": 0}
            packages.append(record)
            if not source.permissive:
                continue
            for path in source.files:
                text = _read(path)
                if text is None:
                    continue
                digest = hashlib.sha256(text.encode()).hexdigest()
                if digest in seen:
                    record["duplicates"] += 1
                    continue
                seen.add(digest)
                handles[split].write(json.dumps({"text": text, "package": source.package}) + "\n")
                record["files"] += 1
                record["bytes"] += len(text.encode())
            totals[split][0] += record["files"]
            totals[split][1] += record["bytes"]
    finally:
        for handle in handles.values():
            handle.close()
    manifest = {"python": sys.version.split()[0], "held_out_every": HELD_OUT_EVERY, "max_file_bytes": MAX_FILE_BYTES,
                "splits": {s: {"files": f, "bytes": b, "sha256": file_sha256(out / f"{s}.jsonl")}
                           for s, (f, b) in totals.items()},
                "packages": packages}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest
