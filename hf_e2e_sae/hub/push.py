"""Publishing SAEs on the Hugging Face Hub: one atomic commit with weights, configs, manifest and model card.

    model.push_to_hub("org/gpt2-e2e-l6", metrics=metrics, train_config=cfg)   # SAEPatchedModel or SparseAutoencoder
    push_run_to_hub("runs/e2e-l6/final", "org/gpt2-e2e-l6")                  # a trainer's output folder
    hf-e2e-sae push runs/e2e-l6 org/gpt2-e2e-l6 --private                     # the same from the shell

Everything is checked before anything is written or sent: a write token, the repo id, the saved format
(manifest, configs, weight files). The files go up in a single `HfApi.create_commit`, so a failed upload
leaves the repo at its previous commit. The README.md model card is rendered by
[`hf_e2e_sae.model_card.render_model_card`] and is never overwritten by transformers' default card.
Loading needs nothing from here: `SAEPatchedModel.from_pretrained("org/repo")` reads the same layout.
"""
from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import yaml
from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, ModelCardData, get_token
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import validate_repo_id
from safetensors import safe_open
from safetensors.torch import save
from transformers.utils import CONFIG_NAME

from ..sae.config import SAE_FORMAT_VERSION
from ..sae.finite import check_finite_weights
from ..runs.redaction import redact_secrets
from ..runs.safety import json_text
from .adapter_files import ADAPTER_FILES, adapter_summary
from .card import is_hub_id, render_card_from_configs, sae_manifest
from ..patching.base_models import is_local_only
from ..patching.patched_model import cached_commit
from .format import MANIFEST_NAME, _load_sae_config, read_manifest

logger = logging.getLogger(__name__)

# Optional files of a trainer's final folder: uploaded as they are and used for the model card.
METRICS_FILE = "eval_metrics.json"
TRAIN_CONFIG_FILE = "train_config.yaml"
TRAIN_SUMMARY_FILE = "train_summary.json"
_SHA_RE = re.compile(r"[0-9a-f]{40}")

PathLike = Union[str, os.PathLike]


def require_token(token: Optional[str]) -> str:
    """The token to push with (`token=` or the logged-in one); raises before anything is written."""
    token = token or get_token()
    if not token:
        raise ValueError(
            "Pushing to the Hugging Face Hub needs a token with write access, and none was found: "
            "run `hf auth login`, set the HF_TOKEN environment variable, or pass `token=`."
        )
    return token


def _read_optional(value: Any, what: str) -> dict:
    """A dict given directly, or read from a JSON / YAML file path; None -> {}."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    path = Path(value)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} does not exist.")
    loaded = yaml.safe_load(path.read_text()) if path.suffix in (".yaml", ".yml") else json.loads(path.read_text())
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{what}: {path} does not hold a mapping.")
    return dict(loaded)


def _base_revision(manifest: Mapping, train_config: Mapping, token: str) -> Optional[str]:
    """The base model's revision to record: the saved one, else the commit the local cache (or the Hub) has."""
    name, revision = manifest.get("base_model_name_or_path"), manifest.get("base_model_revision")
    if revision or not is_hub_id(name):
        return revision
    ref = (train_config.get("base_model") or {}).get("revision") if isinstance(train_config.get("base_model"), Mapping) else None
    ref = ref or "main"
    if _SHA_RE.fullmatch(ref):
        return ref
    sha = cached_commit(name, ref)
    if sha:
        logger.info("Recording base model %s at revision %s (the cached %r).", name, sha, ref)
        return sha
    try:
        sha = HfApi(token=token).model_info(name, revision=ref).sha
    except (HfHubHTTPError, OSError) as e:
        logger.warning("Could not resolve the revision of base model %s (%s); the card will not pin it.", name, e)
        return None
    logger.warning("Base model %s: no revision was recorded; pinning the Hub's current %r, %s.", name, ref, sha)
    return sha


def _add_metadata(src: Path, dst: Path) -> None:
    """Copy a safetensors file, adding `hf_e2e_sae_version` / `hf_e2e_sae_format_version` to its metadata."""
    from ..version import __version__

    with safe_open(str(src), framework="pt") as f:
        metadata = dict(f.metadata() or {})
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    check_finite_weights(tensors, str(src))  # never publish a diverged SAE
    metadata.setdefault("format", "pt")
    metadata.update(hf_e2e_sae_version=__version__, hf_e2e_sae_format_version=str(SAE_FORMAT_VERSION))
    dst.write_bytes(_deterministic_safetensors(tensors, metadata))


def _deterministic_safetensors(tensors: dict, metadata: dict) -> bytes:
    """safetensors bytes with the metadata keys sorted.

    safetensors writes `__metadata__` in hash-map order, which changes from one save to the next when there
    are several keys. Sorting makes the same weights give the same bytes, so pushing unchanged SAEs again
    creates no commit.
    """
    raw = save(tensors, metadata=metadata)
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # keep the tensor data 8-byte aligned, as safetensors does
    return len(text).to_bytes(8, "little") + text + raw[8 + size:]


def _push_folder(
    folder: Path,
    repo_id: str,
    *,
    token: str,
    private: Optional[bool],
    revision: Optional[str],
    commit_message: Optional[str],
    commit_description: Optional[str],
    create_pr: bool,
    metrics: dict,
    train_config: dict,
    train_summary: dict,
    card_data: Any,
    license: str,
    extra_files: tuple = (),
) -> CommitInfo:
    """Check a `save_pretrained` folder, render its card and push it all in one commit."""
    has_manifest = (folder / MANIFEST_NAME).is_file()
    if has_manifest:
        manifest = dict(read_manifest(str(folder)))  # refuses unknown format versions
    else:  # a bare SparseAutoencoder.save_pretrained folder
        manifest = sae_manifest(_load_sae_config(str(folder), "", "the SAE"))
    if manifest.get("family") is not None:  # one model serving every site (a cross-layer transcoder)
        from .cross_layer_format import site_configs

        configs = site_configs(str(folder))
    else:
        configs = {site: _load_sae_config(str(folder), sub, site) for site, sub in manifest["saes"].items()}
    base_name = manifest.get("base_model_name_or_path")
    if is_local_only(base_name):
        logger.warning("The SAEs' base model %r is a local model: people loading %s will have to pass `base_model=` "
                       "themselves. Train on a Hub model (or set base_model_name_or_path) to make it loadable.",
                       base_name, repo_id)
    pinned = _base_revision(manifest, train_config, token)

    with tempfile.TemporaryDirectory(prefix="hf_e2e_sae_push_") as staging:
        operations = []
        by_folder: dict = {}  # a folder may serve several sites (a cross-layer transcoder): upload it once
        for site, sub in manifest["saes"].items():
            by_folder.setdefault(sub, []).append(site)
        for i, (sub, folder_sites) in enumerate(by_folder.items()):
            site, sae_dir = folder_sites[0], folder / sub
            weights = sorted(sae_dir.glob("*.safetensors"))
            if not weights:
                raise FileNotFoundError(f"{sae_dir}: no .safetensors weights for the SAE at {site!r}.")
            config = json.loads((sae_dir / CONFIG_NAME).read_text())
            if pinned and not config.get("base_model_revision") and config.get("base_model_name_or_path") == base_name:
                config["base_model_revision"] = pinned
                for each in folder_sites:
                    configs[each].base_model_revision = pinned
            operations.append(CommitOperationAdd(_repo_path(sub, CONFIG_NAME), json.dumps(config, indent=2).encode() + b"\n"))
            for src in weights:
                dst = Path(staging) / f"{i}-{src.name}"
                _add_metadata(src, dst)
                operations.append(CommitOperationAdd(_repo_path(sub, src.name), str(dst)))
            for index in sae_dir.glob("*.safetensors.index.json"):
                operations.append(CommitOperationAdd(_repo_path(sub, index.name), str(index)))
        manifest["base_model_revision"] = pinned
        operations += adapter_operations(folder, manifest, staging)  # the PEFT adapter (lora/), if any
        if has_manifest:
            operations.append(CommitOperationAdd(MANIFEST_NAME, json.dumps(manifest, indent=2).encode() + b"\n"))
        card = render_card_from_configs(
            manifest, configs, repo_id, metrics=metrics, train_config=train_config, train_summary=train_summary,
            card_data=card_data, license=license, revision=revision,
            adapter=adapter_summary(folder, manifest, train_config),
        )
        operations.append(CommitOperationAdd("README.md", str(card).encode("utf-8")))
        operations += [CommitOperationAdd(Path(f).name, _redacted_bytes(Path(f))) for f in extra_files]

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision and revision != "main" and not create_pr:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        from ..version import __version__

        info = api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message or f"Upload {len(configs)} SAE(s) with hf_e2e_sae {__version__}",
            commit_description=commit_description,
            revision=revision,
            create_pr=create_pr or None,
        )
    logger.info("Pushed %d files to %s (%s)", len(operations), repo_id, info.commit_url)
    return info


def adapter_operations(folder: Path, manifest: Mapping, staging: str) -> list:
    """Upload operations for the adapter folder the manifest names (its config and checked weights)."""
    sub = manifest.get("adapter")
    if not sub:
        return []
    config, weights = (folder / sub / name for name in ADAPTER_FILES)
    for path in (config, weights):
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: {MANIFEST_NAME} names the adapter folder {sub!r}, but {path} is missing.")
    dst = Path(staging) / "adapter-model.safetensors"
    _add_metadata(weights, dst)  # refuses non-finite adapter weights, as for the SAEs
    return [CommitOperationAdd(_repo_path(sub, config.name), str(config)),
            CommitOperationAdd(_repo_path(sub, weights.name), str(dst))]


def _redacted_bytes(path: Path) -> bytes:
    """A file to upload; a YAML / JSON file is re-serialised if it holds credentials (redacted) or, for JSON,
    bare NaN / Infinity (written as null, so the published file is valid JSON)."""
    raw = path.read_bytes()
    if path.suffix not in (".yaml", ".yml", ".json"):
        return raw
    if path.suffix == ".json":
        loaded = json.loads(raw)
        text = json_text(redact_secrets(loaded))
        return raw if json.loads(text) == loaded else text.encode()
    loaded = yaml.safe_load(raw)
    redacted = redact_secrets(loaded)
    if redacted == loaded:
        return raw
    logger.warning("%s holds credentials: uploading it with them redacted.", path)
    return yaml.safe_dump(redacted, sort_keys=False, allow_unicode=True).encode()


def _repo_path(subfolder: str, name: str) -> str:
    return f"{subfolder.strip('/')}/{name}" if subfolder else name


def push_to_hub(
    model: Any,
    repo_id: str,
    *,
    private: Optional[bool] = None,
    token: Optional[str] = None,
    revision: Optional[str] = None,
    commit_message: Optional[str] = None,
    commit_description: Optional[str] = None,
    create_pr: bool = False,
    card_data: Optional[Union[ModelCardData, Mapping[str, Any]]] = None,
    metrics: Optional[Union[Mapping[str, Any], PathLike]] = None,
    train_config: Optional[Union[Mapping[str, Any], PathLike]] = None,
    train_summary: Optional[Union[Mapping[str, Any], PathLike]] = None,
    license: str = "mit",
) -> CommitInfo:
    """Upload SAEs (weights, configs, manifest) and a README.md model card to the Hub in one commit.

    Args:
        model ([`SAEPatchedModel`] or [`SparseAutoencoder`]): what to publish (only SAE weights are uploaded).
        repo_id (`str`): `"namespace/name"`; created if it does not exist (`exist_ok=True`).
        private (`bool`, *optional*): visibility of a newly created repo (an existing repo keeps its own).
        token (`str`, *optional*): a write token; defaults to the logged-in one (`hf auth login` / `HF_TOKEN`).
        revision (`str`, *optional*): branch to commit to (created from main if missing); default main.
        commit_message, commit_description (`str`, *optional*): of the commit.
        create_pr (`bool`, *optional*, defaults to `False`): open a pull request instead of committing.
        card_data (`ModelCardData` or `dict`, *optional*): extra / overriding card header fields.
        metrics (`dict` or path to JSON, *optional*): output of [`hf_e2e_sae.evaluate`], for the card.
        train_config (`dict` or path to YAML, *optional*): the training config, for the card.
        train_summary (`dict` or path to JSON, *optional*): e.g. `{"train_tokens": ...}`, for the card.
        license (`str`, *optional*, defaults to `"mit"`): the card's license.

    Returns:
        [`huggingface_hub.CommitInfo`]: `.commit_url`, `.oid` (the commit sha), `.pr_url`.
    """
    from ..sae.model import SparseAutoencoder

    token = require_token(token)
    validate_repo_id(repo_id)
    metrics = _read_optional(metrics, "metrics")
    train_config = _read_optional(train_config, "train_config")
    train_summary = _read_optional(train_summary, "train_summary")
    with tempfile.TemporaryDirectory(prefix="hf_e2e_sae_save_") as tmp:
        model.save_pretrained(tmp)
        if isinstance(model, SparseAutoencoder) and model.config.site is not None:
            Path(tmp, MANIFEST_NAME).write_text(json.dumps(sae_manifest(model.config), indent=2) + "\n")
        return _push_folder(
            Path(tmp), repo_id, token=token, private=private, revision=revision, commit_message=commit_message,
            commit_description=commit_description, create_pr=create_pr, metrics=metrics, train_config=train_config,
            train_summary=train_summary, card_data=card_data, license=license,
        )


def find_saved_folder(output_dir: PathLike) -> Path:
    """The folder holding the saved SAEs: `output_dir` itself, or its `final/` subfolder (trainer output)."""
    path = Path(output_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a directory.")
    for candidate in (path, path / "final"):
        if (candidate / MANIFEST_NAME).is_file() or (candidate / CONFIG_NAME).is_file():
            return candidate
    raise FileNotFoundError(
        f"{path} holds no saved SAEs: expected {MANIFEST_NAME} or {CONFIG_NAME} in it or in {path / 'final'}."
    )


def push_run_to_hub(
    run_dir: PathLike,
    repo_id: str,
    private: bool = False,
    token: Optional[str] = None,
    commit_message: Optional[str] = None,
    *,
    revision: Optional[str] = None,
    license: str = "mit",
) -> str:
    """Publish a trainer's final artifact folder (SAEs + optional eval_metrics.json / train_config.yaml /
    train_summary.json, uploaded as well and used for the card). `run_dir` may also be the trainer's
    output folder that contains `final/`. Returns the commit URL.
    """
    token = require_token(token)
    validate_repo_id(repo_id)
    folder = find_saved_folder(run_dir)
    search = [folder] if folder == Path(run_dir) else [folder, Path(run_dir)]  # final/ first, then the run root
    present = {}
    for name in (METRICS_FILE, TRAIN_CONFIG_FILE, TRAIN_SUMMARY_FILE):
        found = [d / name for d in search if (d / name).is_file()]
        if found:
            present[name] = found[0]
    info = _push_folder(
        folder, repo_id, token=token, private=private, revision=revision, commit_message=commit_message,
        commit_description=None, create_pr=False,
        metrics=_read_optional(present.get(METRICS_FILE), METRICS_FILE),
        train_config=_read_optional(present.get(TRAIN_CONFIG_FILE), TRAIN_CONFIG_FILE),
        train_summary=_read_optional(present.get(TRAIN_SUMMARY_FILE), TRAIN_SUMMARY_FILE),
        card_data=None, license=license, extra_files=tuple(present.values()),
    )
    return info.commit_url
