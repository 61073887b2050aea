"""Saving and loading `SAEPatchedModel`s: only the SAEs, plus a manifest naming the base model.

Layout (a local directory and a Hub repo are the same thing; loading goes through
`transformers.utils.cached_file`, which serves both):

    hf_e2e_sae.json                 manifest: format version, base model + revision, {site: subfolder}
    config.json, model.safetensors  one SAE: at the top level (so `AutoModel.from_pretrained` works)
    blocks.6.resid_pre/config.json  several SAEs: one subfolder per site
    blocks.6.resid_pre/model.safetensors
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Optional

from torch import nn
from transformers import AutoModelForCausalLM
from transformers.utils import CONFIG_NAME, cached_file

from ..runs.layout import resolve_saved_path
from ..sae.config import SAE_FORMAT_VERSION, SAEConfig
from ..sae.finite import check_finite_weights
from ..sae.hub_interface import hub_function
from ..sae.model import SparseAutoencoder
from ..patching.base_models import config_hash, resolve_base_model
from ..patching.patched_model import validate_sae_configs
from ..patching.remote_code import load_base_config, trusts_remote_code, with_trust
from ..patching.adapters import attach_adapter
from .adapter_files import ADAPTER_MANIFEST_VERSION, load_adapter, save_adapter
from .manifest_check import check_remote_code, parse_manifest

logger = logging.getLogger(__name__)

MANIFEST_NAME = "hf_e2e_sae.json"
# Dictionary families saved as one model rather than one SAE per site: manifest "family" -> loader
# `(cls, path, manifest, base_model, subfolder, hub_kwargs, dtype, base_model_kwargs) -> patched model`.
FAMILY_LOADERS: dict = {}


def build_manifest(model) -> dict:
    """The manifest for a patched model: which SAEs where, trained on which base model."""
    from ..version import __version__

    first = model.sae(model.sites[0]).config
    single = len(model.sites) == 1
    return {
        "format_version": SAE_FORMAT_VERSION,
        "library_name": "hf_e2e_sae",
        "library_version": __version__,
        "base_model_name_or_path": first.base_model_name_or_path,
        "base_model_revision": first.base_model_revision,
        "saes": {site: "" if single else site for site in model.sites},
    }


def save_patched_model(model, save_directory, **kwargs: Any) -> None:
    """Write the SAEs of `model` and the manifest into `save_directory` (no base weights)."""
    save_directory = Path(save_directory)
    for site in model.sites:  # all SAEs are checked before any file is written
        check_finite_weights(model.sae(site).state_dict(), f"{save_directory} (SAE at {site})")
    save_directory.mkdir(parents=True, exist_ok=True)
    manifest = build_manifest(model)
    for site, subfolder in manifest["saes"].items():
        model.sae(site).save_pretrained(save_directory / subfolder, **kwargs)
    save_adapter(model, save_directory, manifest)
    (save_directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("Saved %d SAE(s) to %s", len(manifest["saes"]), save_directory)


def _warn_if_other_base(path: str, base_config, configs: dict) -> None:
    """A `base_model=` whose config differs from the one the SAEs recorded is probably not their base."""
    recorded = {c.base_model_config_hash for c in configs.values()} - {None}
    if recorded and config_hash(base_config) not in recorded:
        logger.warning("%s: the given base_model's config differs from the one these SAEs were trained on "
                       "(config hash %s, recorded %s).", path, config_hash(base_config), sorted(recorded))


def _hub_kwargs(revision, token, cache_dir, local_files_only) -> dict:
    return {"revision": revision, "token": token, "cache_dir": cache_dir, "local_files_only": local_files_only}


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def _cached_file(path_or_repo: str, filename: str, **kwargs: Any) -> Optional[str]:
    """`cached_file` with errors that name the repo and say what to do (missing repo / revision)."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        return cached_file(path_or_repo, filename, **kwargs)
    except OSError as e:
        cause = e.__cause__
        if isinstance(cause, RepositoryNotFoundError):
            raise OSError(
                f"Repository {path_or_repo!r} was not found on the Hub (and is no local directory). Check the repo id; "
                "if it is private or gated, log in with `hf auth login` or pass `token=`."
            ) from e
        if isinstance(cause, RevisionNotFoundError):
            raise OSError(f"Revision {kwargs.get('revision')!r} was not found in repository {path_or_repo!r}.") from e
        raise


def read_manifest(path_or_repo: str, subfolder: str = "", **hub_kwargs: Any) -> dict:
    """Read `hf_e2e_sae.json`; a bare `SparseAutoencoder.save_pretrained` folder counts as one SAE."""
    where = f"{path_or_repo}/{subfolder}" if subfolder else str(path_or_repo)
    missing_ok = {"_raise_exceptions_for_missing_entries": False, "subfolder": subfolder, **hub_kwargs}
    manifest_file = _cached_file(path_or_repo, MANIFEST_NAME, **missing_ok)
    if manifest_file is None:
        if _cached_file(path_or_repo, CONFIG_NAME, **missing_ok) is None:
            raise OSError(
                f"{where} (revision {hub_kwargs.get('revision') or 'main'}) holds neither {MANIFEST_NAME} nor "
                f"{CONFIG_NAME}: it is not an hf_e2e_sae save (wrong repo id, revision or subfolder?)."
            )
        config = SAEConfig.from_pretrained(path_or_repo, subfolder=subfolder, **hub_kwargs)
        if config.site is None:
            raise ValueError(
                f"{where}: the SAE does not record its site; load it with `SparseAutoencoder.from_pretrained` and "
                "pass it to `SAEPatchedModel` as a {site: sae} mapping."
            )
        return {
            "format_version": config.format_version,
            "base_model_name_or_path": config.base_model_name_or_path,
            "base_model_revision": config.base_model_revision,
            "saes": {config.site: ""},
        }
    manifest = parse_manifest(manifest_file, where)
    version = manifest.get("format_version", 1)
    if version > max(SAE_FORMAT_VERSION, ADAPTER_MANIFEST_VERSION):
        raise ValueError(
            f"{where}: {MANIFEST_NAME} has format_version {version}, newer than this hf_e2e_sae "
            f"understands ({ADAPTER_MANIFEST_VERSION}); upgrade with `pip install -U hf_e2e_sae`."
        )
    if not manifest.get("saes"):
        raise ValueError(f"{where}: {MANIFEST_NAME} lists no SAEs.")
    return manifest


def _load_sae_config(path: str, subfolder: str, site: str, **hub_kwargs: Any) -> SAEConfig:
    missing_ok = {"_raise_exceptions_for_missing_entries": False, "subfolder": subfolder, **hub_kwargs}
    if _cached_file(path, CONFIG_NAME, **missing_ok) is None:
        raise OSError(f"{path}: {MANIFEST_NAME} lists the SAE for {site!r}, but {_join(subfolder, CONFIG_NAME)} is missing.")
    try:
        return SAEConfig.from_pretrained(path, subfolder=subfolder, **hub_kwargs)
    except ValueError as e:
        raise ValueError(f"{path}: {_join(subfolder, CONFIG_NAME)}: {e}") from e


def load_patched_model(
    cls,
    pretrained_model_name_or_path,
    base_model: Optional[nn.Module] = None,
    revision: Optional[str] = None,
    token: Optional[str] = None,
    cache_dir: Optional[str] = None,
    local_files_only: bool = False,
    dtype: Any = None,
    base_model_kwargs: Optional[dict] = None,
    subfolder: str = "",
):
    """Load the SAEs at a directory or Hub repo and patch them into their base model.

    Args:
        pretrained_model_name_or_path: local directory or Hub repo id written by `save_pretrained`.
        base_model: an already loaded causal LM to patch, or the Hub id / folder of one to load; by default
            the one the manifest names is loaded at the recorded revision.
        revision, token, cache_dir, local_files_only: for the SAE repo (token is reused for the base).
        dtype: dtype of the base model when it is loaded here.
        base_model_kwargs: extra kwargs for `AutoModelForCausalLM.from_pretrained` (e.g. device_map).
        subfolder: folder of the repo that holds the save (e.g. one site of a several-SAE repo, or one run
            of a repo with several runs).
    """
    path = resolve_saved_path(pretrained_model_name_or_path, subfolder)  # a run folder means its final/
    hub_kwargs = _hub_kwargs(revision, token, cache_dir, local_files_only)
    check_remote_code(base_model, base_model_kwargs, path)
    try:
        manifest = read_manifest(path, subfolder=subfolder, **hub_kwargs)
    except (OSError, ValueError) as error:  # maybe a foreign format (hf_e2e_sae.interop re-raises if not)
        return hub_function("load_foreign_patched_model")(cls, path, error, base_model, subfolder, revision, dtype,
                                                          base_model_kwargs, token=token)
    if manifest.get("family") is not None:
        if manifest["family"] not in FAMILY_LOADERS:
            raise ValueError(f"{path}: {MANIFEST_NAME} names family {manifest['family']!r}, unknown to this hf_e2e_sae; "
                             f"known: {sorted(FAMILY_LOADERS)}")
        return FAMILY_LOADERS[manifest["family"]](cls, path, manifest, base_model, subfolder, hub_kwargs, dtype,
                                                  base_model_kwargs)
    folders = {site: _join(subfolder, sub) for site, sub in manifest["saes"].items()}
    configs = {site: _load_sae_config(path, folder, site, **hub_kwargs) for site, folder in folders.items()}
    if base_model is None or isinstance(base_model, (str, os.PathLike)):
        name = str(base_model) if base_model is not None else manifest.get("base_model_name_or_path")
        if not name:
            raise ValueError(f"{path}: the SAEs do not name their base model; pass `base_model=`.")
        name = resolve_base_model(name)  # built-in names -> their folder; local:... -> error
        recorded_revision = manifest.get("base_model_revision") if base_model is None else None
        base_hub = {"revision": recorded_revision, "token": token, "cache_dir": cache_dir, "local_files_only": local_files_only}
        trust = trusts_remote_code(base_model, base_model_kwargs)  # never for the name the manifest gives
        try:
            base_config = load_base_config(name, trust_remote_code=trust, where=path, **base_hub)
        except OSError as e:
            raise OSError(
                f"{path}: cannot load the base model {name!r} (revision {base_hub['revision'] or 'main'}) the SAEs "
                f"were trained on; pass `base_model=` to patch a model you loaded yourself. Cause: {e}"
            ) from e
        validate_sae_configs(base_config, configs)  # fail before loading any weights
        if base_model is not None:
            _warn_if_other_base(path, base_config, configs)
        extra = with_trust(base_model_kwargs, trust)
        if dtype is not None:
            extra["dtype"] = dtype
        base_model = AutoModelForCausalLM.from_pretrained(name, config=base_config, **base_hub, **extra)
    else:
        validate_sae_configs(base_model.config, configs)
        _warn_if_other_base(path, base_model.config, configs)

    saes = {
        site: SparseAutoencoder.from_pretrained(path, subfolder=folder, config=configs[site], **hub_kwargs)
        for site, folder in folders.items()
    }
    peft_model = load_adapter(base_model, path, manifest, subfolder, hub_kwargs)  # None without one
    device = next(base_model.parameters()).device
    model = cls(base_model, {site: sae.to(device) for site, sae in saes.items()})
    if peft_model is not None:
        attach_adapter(model, peft_model, trainable=False)
    return model

