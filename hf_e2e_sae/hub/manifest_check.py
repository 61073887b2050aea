"""Checking a downloaded `hf_e2e_sae.json` before trusting any of it, and who may switch on remote code.

A manifest is data from a repo, possibly someone else's: it is parsed strictly, every field is
type-checked, and it can never decide that a base model's remote code runs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

_OPTIONAL_STRINGS = ("base_model_name_or_path", "base_model_revision", "library_name", "library_version")


def parse_manifest(manifest_file: str, where: str) -> dict:
    """Read and validate a manifest file; any defect is a `ValueError` naming the file."""
    try:
        manifest = json.loads(Path(manifest_file).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{where}: hf_e2e_sae.json is not valid JSON ({e}).") from e
    check_manifest(manifest, where)
    return manifest


def check_manifest(manifest: Any, where: str) -> None:
    """Raise `ValueError` naming hf_e2e_sae.json when `manifest` does not have the documented shape."""
    def bad(what: str) -> ValueError:
        return ValueError(f"{where}: hf_e2e_sae.json is malformed: {what}.")

    if not isinstance(manifest, dict):
        raise bad(f"expected a JSON object, got {type(manifest).__name__}")
    version = manifest.get("format_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise bad(f"format_version must be a positive integer, got {version!r}")
    for key in _OPTIONAL_STRINGS:
        if manifest.get(key) is not None and not isinstance(manifest[key], str):
            raise bad(f"{key} must be a string or null, got {manifest[key]!r}")
    saes = manifest.get("saes")
    if not isinstance(saes, dict) or not saes:
        raise bad(f"'saes' must be a non-empty object {{site: subfolder}}, got {saes!r}")
    folders = {f"the SAE at {site!r}": folder for site, folder in saes.items()}
    if "adapter" in manifest:  # a PEFT adapter on the base model (hub/adapter_files.py)
        folders["'adapter'"] = manifest["adapter"]
        if not isinstance(manifest["adapter"], str) or not manifest["adapter"].strip("/"):
            raise bad(f"'adapter' must name a subfolder, got {manifest['adapter']!r}")
    for what, folder in folders.items():
        if not isinstance(folder, str):
            raise bad(f"the subfolder of {what} must be a string, got {folder!r}")
        if folder.startswith("/") or ".." in folder.split("/"):
            raise bad(f"the subfolder of {what} must stay inside the repo, got {folder!r}")


def check_remote_code(base_model: Optional[Any], base_model_kwargs: Optional[dict], where: str) -> None:
    """`trust_remote_code=True` applies only to a base model the caller named: never to the one a manifest names."""
    if (base_model_kwargs or {}).get("trust_remote_code") and base_model is None:
        raise ValueError(
            f"{where}: base_model_kwargs has trust_remote_code=True but no base_model= was given: the base model "
            "would come from the repo's manifest, which cannot be trusted to run code. Name the base model you "
            "trust explicitly: from_pretrained(..., base_model=\"org/model\", base_model_kwargs=...).")
