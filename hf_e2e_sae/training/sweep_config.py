"""A sweep in one config: `sweep: {dotted field: [values]}` expands into N validated variant configs.

    sweep: {loss.sparsity.coeff: [0.5, 1, 2, 4]}            # 4 variants
    sweep: {loss.sparsity.coeff: [1, 4], dict_size_ratio: [30, 60]}   # their product: 4 variants
    hf-e2e-sae train cfg.yaml --sweep.loss.sparsity.coeff 0.5,1,2,4

Only fields of the SAE, its loss and its optimizer may vary (`SWEEPABLE`): the variants share one data stream, one
base model and one clean pass per batch, so everything those depend on is one setting of the whole sweep; a field
that cannot vary is refused in one line that names it and says why. Each variant is the config a separate run with
those values would have (same seed, same data), writing to `output_dir/variants/<name>/`.
"""
from __future__ import annotations

import itertools
import re
from typing import Any

import yaml

SWEEPABLE_PREFIXES = ("loss.",)
SWEEPABLE = {"dict_size", "dict_size_ratio", "activation", "k", "jumprelu_init_threshold", "jumprelu_bandwidth",
             "init_decoder_orthogonal", "lr", "warmup_samples", "min_lr_factor", "max_grad_norm",
             "alive_window_tokens", "recompute_suffix"}
"""Fields a sweep may vary (and every `loss.*` field): what one SAE, its loss or its optimizer alone depends on."""
_REASONS = {
    "data": "the variants share one data stream",
    "base_model": "the variants share one base model",
    "seed": "the data order follows the seed and the variants share one data stream",
    "n_samples": "the variants share one data stream", "n_tokens": "the variants share one data stream",
    "batch_size": "the variants share every batch", "effective_batch_size": "the variants share every batch",
    "sites": "the variants share the blocks before the site", "output_sites": "the variants share one forward pass",
    "mixed_precision": "the variants share one clean pass", "activation_cache": "the variants share one cache",
    "init_from": "a fine-tuned SAE fixes the architecture; sweep its loss instead",
    "sweep": "a sweep does not nest",
}


def sweep_reason(field: str) -> str:
    """Why `field` cannot vary within a sweep ('' when it can)."""
    if field in SWEEPABLE or field.startswith(SWEEPABLE_PREFIXES):
        return ""
    top = field.split(".")[0]
    return _REASONS.get(top, "it is one setting of the whole sweep (output, logging, checkpoints, Hub)")


def _values(raw: Any) -> list:
    """A list of values; `"a,b"` (from the command line) is split and each part read as YAML."""
    if isinstance(raw, str):
        return [yaml.safe_load(part) for part in raw.split(",") if part.strip()]
    return list(raw) if isinstance(raw, (list, tuple)) else [raw]


def normalize_sweep(raw: Any) -> dict:
    """`{dotted field: [values]}` from YAML's flat dotted keys or the nested dict command-line overrides make."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"sweep must map dotted field names to lists of values, got {raw!r}")
    flat: dict = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = _values(value)

    walk(raw, "")
    return flat


def check_sweep(sweep: dict, fields: list) -> None:
    """Refuse an unknown field, a field that cannot vary, an empty list or a value given twice (one line each)."""
    for field, values in sweep.items():
        if field not in fields:
            raise ValueError(f"sweep: unknown field {field!r} (use dotted names, e.g. loss.sparsity.coeff)")
        reason = sweep_reason(field)
        if reason:
            raise ValueError(f"sweep: {field!r} cannot vary within a sweep: {reason}; run one sweep per value")
        if not values:
            raise ValueError(f"sweep: {field!r} lists no values")
        if len({repr(v) for v in values}) != len(values):
            raise ValueError(f"sweep: {field!r} lists a value twice: {values}")


def _slug(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "none"


def variant_names(sweep: dict) -> list:
    """One readable folder name per point of the product, e.g. `coeff-0.5_k-16` (the last part of each dotted
    field; the whole field where two last parts coincide)."""
    last = [field.rsplit(".", 1)[-1] for field in sweep]
    labels = [short if last.count(short) == 1 else field.replace(".", "-") for field, short in zip(sweep, last)]
    return ["_".join(f"{label}-{_slug(v)}" for label, v in zip(labels, point))
            for point in itertools.product(*sweep.values())]


def _set_dotted(tree: dict, field: str, value: Any) -> None:
    *parents, leaf = field.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def expand_sweep(config) -> list:
    """`[(name, variant config)]`, one per point of the sweep's product, each validated as a run of its own.

    A variant is the config as the user gave it (unset fields keep their defaults, so a swept `activation` gets
    its own default loss) with the swept values set, `sweep` emptied and `output_dir/variants/<name>` as output_dir.
    """
    from ..config.arguments import ConfigError, build

    if not config.sweep:
        return []
    given = config.model_dump(mode="json", exclude_unset=True)
    given.pop("sweep", None)
    variants = []
    for name, point in zip(variant_names(config.sweep), itertools.product(*config.sweep.values())):
        data = yaml.safe_load(yaml.safe_dump(given))  # a deep copy
        for field, value in zip(config.sweep, point):
            _set_dotted(data, field, value)
        data["output_dir"] = f"{config.output_dir}/variants/{name}"
        try:
            variants.append((name, build(type(config), data)))
        except ConfigError as error:
            raise ValueError(f"sweep variant {name}: {error}") from None
    return variants
