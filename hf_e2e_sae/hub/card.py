"""Model cards (README.md) for published SAEs, rendered from `model_cards/sae_model_card.md.jinja`.

    card = render_model_card(model, "org/gpt2-e2e-l6", metrics=evaluate(model, batches), train_config=cfg)
    card.data.to_dict()["model-index"]     # the evaluation results, as the Hub reads them
    card.save("README.md")

The YAML header holds `library_name: hf_e2e_sae`, `base_model`, `datasets`, `tags` (sparse-autoencoder,
interpretability, the loss preset, every site), `license` and a `model-index` with CE loss increase, KL, L0,
alive elements and explained variance. Every input beyond the SAEs themselves is optional; sections without
data are left out.
"""
from __future__ import annotations

import importlib.resources
import logging
import os
import re
from typing import Any, Mapping, Optional, Union

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..data.config import eval_split_of
from ..runs.redaction import redact_secrets

logger = logging.getLogger(__name__)

TEMPLATE_NAME = "sae_model_card.md.jinja"

CITATION = """@inproceedings{braun2024identifying,
  title         = {Identifying Functionally Important Features with End-to-End Sparse Dictionary Learning},
  author        = {Braun, Dan and Taylor, Jordan and Goldowsky-Dill, Nicholas and Sharkey, Lee},
  booktitle     = {Advances in Neural Information Processing Systems 37 (NeurIPS 2024)},
  volume        = {37},
  year          = {2024},
  eprint        = {2405.12241},
  archivePrefix = {arXiv},
  url           = {https://arxiv.org/abs/2405.12241}
}"""

_PRESET_DESCRIPTIONS = {
    "local": "MSE reconstruction of the activation + sparsity",
    "e2e": "KL(P_orig || P_sae) of the next-token distributions + sparsity",
    "e2e+ds": "KL + sparsity + downstream MSE of later-layer activations",
}
# `datasets.load_dataset` builders that read local files: not Hub dataset ids.
_PACKAGED_BUILDERS = {"text", "json", "csv", "parquet", "arrow", "pandas", "webdataset", "sql", "xml"}
_GLOBAL_METRICS = [
    ("ce_loss_orig", "CE loss (original)"), ("ce_loss_sae", "CE loss (SAE spliced in)"),
    ("ce_loss_increase", "CE loss increase"), ("kl", "KL(P_orig ‖ P_sae)"), ("top1_agreement", "Top-1 agreement"),
    ("total_variation", "Total variation"),
]
_SITE_METRICS = ["l0", "alive", "explained_variance", "mse", "norm_ratio"]
_INDEX_METRICS = [("ce_loss_increase", "CE loss increase"), ("kl", "KL divergence")]
_INDEX_SITE_METRICS = [("l0", "L0"), ("alive", "Alive dictionary elements"), ("explained_variance", "Explained variance")]


def _template() -> str:
    return importlib.resources.files("hf_e2e_sae.model_cards").joinpath(TEMPLATE_NAME).read_text(encoding="utf-8")


def is_hub_id(name: Optional[str]) -> bool:
    """True for strings that look like a Hub repo id and are not an existing local path."""
    if not name or os.path.exists(name):
        return False
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", name)) and ".." not in name and "--" not in name


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 1):
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def sae_manifest(config) -> dict:
    """The `hf_e2e_sae.json` manifest of a single SAE saved at the top level of a folder."""
    from ..version import __version__
    from ..sae.config import SAE_FORMAT_VERSION

    return {
        "format_version": SAE_FORMAT_VERSION, "library_name": "hf_e2e_sae", "library_version": __version__,
        "base_model_name_or_path": config.base_model_name_or_path,
        "base_model_revision": config.base_model_revision, "saes": {config.site or "sae": ""},
    }


def _describe(source: Any) -> tuple:
    """`(manifest, {site: SAEConfig})` of a patched model, one SAE, or a saved folder / Hub repo."""
    from ..sae.model import SparseAutoencoder
    from ..patching.patched_model import SAEPatchedModel
    from ..sae.config import SAEConfig
    from .format import build_manifest, read_manifest

    if isinstance(source, SAEPatchedModel):
        return build_manifest(source), {site: source.sae(site).config for site in source.sites}
    if isinstance(source, SparseAutoencoder):
        return sae_manifest(source.config), {source.config.site or "sae": source.config}
    if isinstance(source, (str, os.PathLike)):
        manifest = read_manifest(str(source))
        if manifest.get("family") is not None:  # one model for every site (a cross-layer transcoder)
            from .cross_layer_format import site_configs

            return manifest, site_configs(str(source))
        return manifest, {site: SAEConfig.from_pretrained(str(source), subfolder=sub) for site, sub in manifest["saes"].items()}
    raise TypeError(f"render_model_card: expected an SAEPatchedModel, a SparseAutoencoder or a folder, got {type(source).__name__}")


def _loss_section(train_config: Mapping) -> Optional[dict]:
    from ..training.losses import LOSS_PRESETS

    loss = train_config.get("loss")
    if not isinstance(loss, Mapping) or not loss.get("preset"):
        return None
    preset = str(loss["preset"])
    defaults = LOSS_PRESETS.get(preset, {})

    def coeff(term: str) -> Optional[float]:
        given = (loss.get(term) or {}).get("coeff") if isinstance(loss.get(term), Mapping) else None
        return given if given is not None else defaults.get(term)

    terms = []
    if coeff("sparsity") is not None:
        p = (loss.get("sparsity") or {}).get("p", 1.0)
        terms.append(f"**Sparsity coefficient** (λ): {_fmt(coeff('sparsity'))}, on ‖c‖_p / d_in with p = {_fmt(p)}")
    if coeff("reconstruction"):
        terms.append(f"**Reconstruction (MSE) coefficient:** {_fmt(coeff('reconstruction'))}")
    if coeff("kl"):
        terms.append(f"**KL coefficient:** {_fmt(coeff('kl'))}")
    if coeff("downstream"):
        sites = (loss.get("downstream") or {}).get("sites") or []
        where = ", ".join(f"`{s}`" for s in sites) if sites else "the resid_pre of every later block"
        terms.append(f"**Downstream MSE coefficient:** {_fmt(coeff('downstream'))} (total, over {where})")
    return {"preset": preset, "description": _PRESET_DESCRIPTIONS.get(preset, "custom"), "terms": terms}


def _dataset_info(train_config: Mapping) -> dict:
    data = train_config.get("data")
    if not isinstance(data, Mapping) or not data.get("path"):
        return {}
    path, name = str(data["path"]), data.get("name")
    # Without an eval split (given, or a built-in corpus's own), the trainer holds out the first chunks of `split`.
    split = eval_split_of(dict(data)) or (f"{data['split']} (held-out part)" if data.get("split") else None)
    hub = is_hub_id(path) and path not in _PACKAGED_BUILDERS
    shown = f"[`{path}`](https://huggingface.co/datasets/{path})" if hub else f"`{path}`"
    if name:
        shown += f" (config `{name}`)"
    return {"path": path, "name": name, "split": split, "hub": hub,
            "train": shown + (f", split `{data['split']}`" if data.get("split") else ""),
            "eval": shown + (f", split `{split}`" if split else "")}


def _train_tokens(train_config: Mapping, train_summary: Mapping) -> Optional[str]:
    tokens = train_summary.get("train_tokens")
    if tokens is None:
        n_samples, context = train_config.get("n_samples"), (train_config.get("data") or {}).get("context_length")
        if isinstance(n_samples, int) and isinstance(context, int):
            tokens = n_samples * context
    return _fmt(int(tokens)) if isinstance(tokens, (int, float)) else None


def render_model_card(
    source: Any,
    repo_id: Optional[str] = None,
    *,
    metrics: Optional[Mapping[str, Any]] = None,
    train_config: Optional[Mapping[str, Any]] = None,
    train_summary: Optional[Mapping[str, Any]] = None,
    card_data: Optional[Union[ModelCardData, Mapping[str, Any]]] = None,
    license: str = "mit",
    revision: Optional[str] = None,
    title: Optional[str] = None,
) -> ModelCard:
    """Render the README.md model card of published SAEs.

    Args:
        source: an [`SAEPatchedModel`], a [`SparseAutoencoder`], or a folder written by `save_pretrained`.
        repo_id (`str`, *optional*): the Hub repo the card is for (used in the usage snippet).
        metrics (`dict`, *optional*): the flat dict of [`hf_e2e_sae.evaluate`] (`ce_loss_increase`, `kl`,
            `l0/{site}`, ...); fills the metrics table and the `model-index`.
        train_config (`dict`, *optional*): the trainer's config (`loss`, `data`, `n_samples`, ...); fills the
            training section, `datasets` and the loss-preset tag, and is shown as YAML.
        train_summary (`dict`, *optional*): e.g. `{"train_tokens": int}`.
        card_data (`ModelCardData` or `dict`, *optional*): extra or overriding YAML header fields (`tags` are added).
        license (`str`, *optional*, defaults to `"mit"`): the card's license.
        revision (`str`, *optional*): the branch the SAEs are pushed to (shown in the usage snippet).
        title (`str`, *optional*): the heading; by default derived from the preset, base model and sites.

    Returns:
        [`huggingface_hub.ModelCard`]: its `.data` holds the header; `str(card)` is the README.md text.
    """
    from .adapter_files import adapter_summary

    manifest, configs = _describe(source)
    local = isinstance(source, (str, os.PathLike)) and os.path.isdir(source)  # a saved folder: its adapter, if any
    return render_card_from_configs(
        manifest, configs, repo_id, metrics=metrics, train_config=train_config, train_summary=train_summary,
        card_data=card_data, license=license, revision=revision, title=title,
        adapter=adapter_summary(source, manifest, dict(train_config or {})) if local else None,
    )


def _activation_label(config) -> str:
    """E.g. `topk (k=16)`; a transcoder says what it replaces: `relu, transcoder -> blocks.2.mlp_out`."""
    from ..sae.activations import ACTIVATION_SPECS

    spec = ACTIVATION_SPECS.get(config.activation)
    options = [f"{key}={getattr(config, key)}" for key in (spec.options if spec else ()) if hasattr(config, key)]
    label = f"{config.activation} ({', '.join(options)})" if options else config.activation
    output_site = getattr(config, "output_site", None)
    return f"{label}, transcoder -> {output_site}" if output_site else label


def render_card_from_configs(
    manifest: Mapping[str, Any],
    configs: Mapping[str, Any],
    repo_id: Optional[str] = None,
    *,
    metrics: Optional[Mapping[str, Any]] = None,
    train_config: Optional[Mapping[str, Any]] = None,
    train_summary: Optional[Mapping[str, Any]] = None,
    card_data: Optional[Union[ModelCardData, Mapping[str, Any]]] = None,
    license: str = "mit",
    revision: Optional[str] = None,
    title: Optional[str] = None,
    adapter: Optional[Mapping[str, Any]] = None,
) -> ModelCard:
    """[`render_model_card`] from a manifest dict and `{site: SAEConfig}` (what a saved folder holds); `adapter`:
    what `hub.adapter_files.adapter_summary` says about a PEFT adapter saved with them."""
    from ..version import __version__

    metrics, train_config, train_summary = dict(metrics or {}), dict(train_config or {}), dict(train_summary or {})
    train_config = redact_secrets(train_config)  # a card is public: never render a credential
    base = manifest.get("base_model_name_or_path")
    loss = _loss_section(train_config)
    dataset = _dataset_info(train_config)
    sites = list(configs)

    saes = []
    for site, config in configs.items():
        folder = manifest["saes"].get(site, "") or "."
        saes.append({"site": site, "d_in": config.d_in, "dict_size": f"{config.dict_size:,}",
                     "ratio": _fmt(round(config.dict_size / config.d_in, 3)), "activation": _activation_label(config),
                     "folder": folder})
    if title is None:
        kind = f" ({loss['preset']})" if loss else ""
        where = sites[0] if len(sites) == 1 else f"{len(sites)} sites"
        title = f"Sparse dictionar{'y' if len(sites) == 1 else 'ies'}{kind} for {base or 'a causal LM'} at {where}"

    eval_results = []
    if metrics and dataset:
        def result(key: str, name: str) -> EvalResult:
            return EvalResult(
                task_type="text-generation", task_name="Language modelling with the SAE spliced in",
                dataset_type=dataset["path"], dataset_name=dataset["path"], dataset_config=dataset["name"],
                dataset_split=dataset["split"], metric_type=key, metric_name=name, metric_value=float(metrics[key]),
            )

        eval_results = [result(k, n) for k, n in _INDEX_METRICS if k in metrics]
        eval_results += [result(f"{k}/{s}", f"{n} ({s})") for s in sites for k, n in _INDEX_SITE_METRICS if f"{k}/{s}" in metrics]

    fields: dict = {"library_name": "hf_e2e_sae", "license": license}
    if is_hub_id(base):
        fields["base_model"] = base
    if dataset.get("hub"):
        fields["datasets"] = [dataset["path"]]
    tags = ["hf_e2e_sae", "sparse-autoencoder", "interpretability"] + ([loss["preset"]] if loss else []) + sites
    tags += ["peft", "lora"] if adapter else []
    extra = card_data.to_dict() if isinstance(card_data, ModelCardData) else dict(card_data or {})
    tags += [t for t in extra.pop("tags", None) or [] if t not in tags]
    fields.update(extra)
    if eval_results:
        fields.update(eval_results=eval_results, model_name=repo_id or title)
    data = ModelCardData(tags=tags, **fields)

    card = ModelCard.from_template(
        data,
        template_str=_template(),
        title=title,
        repo_id=repo_id or "path/to/saes",
        revision=revision if revision not in (None, "main") else None,
        base_model=base,
        base_model_url=f"https://huggingface.co/{base}" if is_hub_id(base) else None,
        base_model_revision=manifest.get("base_model_revision"),
        saes=saes,
        loss=loss,
        train_tokens=_train_tokens(train_config, train_summary),
        dataset=dataset.get("train"),
        eval_dataset=dataset.get("eval"),
        n_tokens=_fmt(metrics["n_tokens"]) if "n_tokens" in metrics else None,
        metrics_global=[(name, _fmt(metrics[key])) for key, name in _GLOBAL_METRICS if key in metrics],
        metrics_sites=[{"site": s, **{k: _fmt(metrics.get(f"{k}/{s}", "–")) for k in _SITE_METRICS}}
                       for s in sites if any(f"{k}/{s}" in metrics for k in _SITE_METRICS)],
        metrics_downstream=[(k.split("/", 1)[1], _fmt(v)) for k, v in metrics.items() if k.startswith("downstream_mse/")],
        train_config_yaml=yaml.safe_dump(train_config, sort_keys=False, allow_unicode=True) if train_config else None,
        library_version=__version__,
        trained_with_version=manifest.get("library_version"),
        citation=CITATION,
        adapter=adapter,
    )
    return card
