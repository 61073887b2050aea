"""Fault injection on loading: a damaged or incomplete save is an error naming the file, never a random init.

Today `SparseAutoencoder.from_pretrained` fills a missing `decoder.weight` with random values (a warning), a
damaged safetensors header or a malformed `hf_e2e_sae.json` raises a raw JSONDecodeError / TypeError /
AttributeError / SafetensorError that names no file, and `base_model_kwargs={"trust_remote_code": True}`
runs remote code of whatever base model a downloaded manifest names.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import torch  # a README-installed dependency: missing fails, never skips

from safetensors.torch import load_file, save_file  # noqa: E402

import hf_e2e_sae.hub.format as hub_format  # noqa: E402
from hf_e2e_sae import SAEConfig, SAEPatchedModel, SparseAutoencoder  # noqa: E402

BASE = "builtin:tiny-shakespeare-gpt2"  # ships with the package: width 128, 4 blocks
SITE = "blocks.2.resid_pre"


@pytest.fixture
def saved(tmp_path) -> Path:
    """A patched-model save (manifest + one SAE) for the built-in tiny base model."""
    sae = SparseAutoencoder(SAEConfig(d_in=128, dict_size=256, site=SITE, base_model_name_or_path=BASE))
    folder = tmp_path / "saved"
    sae.save_pretrained(folder)
    (folder / "hf_e2e_sae.json").write_text(json.dumps(
        {"format_version": 1, "base_model_name_or_path": BASE, "base_model_revision": None, "saes": {SITE: ""}}))
    return folder


def _rewrite_weights(folder: Path, edit) -> None:
    weights = load_file(str(folder / "model.safetensors"))
    edit(weights)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize("loader", ["sae", "patched"])
@pytest.mark.parametrize("damage, pattern", [
    (lambda w: w.pop("decoder.weight"), r"model\.safetensors.*missing.*decoder\.weight"),
    (lambda w: w.update(stray=torch.zeros(3)), r"model\.safetensors.*unexpected.*stray"),
], ids=["missing", "unexpected"])
def test_missing_or_unexpected_weight_is_an_error(saved, loader, damage, pattern):
    _rewrite_weights(saved, damage)
    with pytest.raises(ValueError, match=pattern):
        if loader == "sae":
            SparseAutoencoder.from_pretrained(saved)
        else:
            SAEPatchedModel.from_pretrained(saved)


def test_damaged_safetensors_header_names_the_file(saved):
    raw = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(raw[:8] + b"{garbage" + raw[16:])
    with pytest.raises(ValueError, match=rf"{saved / 'model.safetensors'}.*header|header.*{saved / 'model.safetensors'}"):
        SparseAutoencoder.from_pretrained(saved)


@pytest.mark.parametrize("text", [
    "{not json", "[]", '{"saes": ["blocks.2.resid_pre"]}', '{"saes": {"blocks.2.resid_pre": 3}}',
    '{"format_version": "one", "saes": {"blocks.2.resid_pre": ""}}', '{"saes": {"blocks.2.resid_pre": ""}, '
    '"base_model_name_or_path": 7}',
], ids=["not_json", "a_list", "saes_a_list", "folder_not_a_string", "version_not_an_int", "base_not_a_string"])
def test_malformed_manifest_names_the_file(saved, text):
    (saved / "hf_e2e_sae.json").write_text(text)
    with pytest.raises(ValueError, match=r"hf_e2e_sae\.json"):
        SAEPatchedModel.from_pretrained(saved)


def test_trust_remote_code_needs_an_explicitly_named_base_model(saved, monkeypatch):
    loaded = []
    real = hub_format.AutoModelForCausalLM.from_pretrained

    def recording(name, **kwargs):
        loaded.append((name, kwargs.get("trust_remote_code")))
        kwargs.pop("trust_remote_code", None)
        return real(name, **kwargs)

    monkeypatch.setattr(hub_format.AutoModelForCausalLM, "from_pretrained", recording)
    with pytest.raises(ValueError, match=r"trust_remote_code.*base_model"):
        SAEPatchedModel.from_pretrained(saved, base_model_kwargs={"trust_remote_code": True})
    assert loaded == []  # the manifest's model was never loaded with remote code
    model = SAEPatchedModel.from_pretrained(saved, base_model=BASE, base_model_kwargs={"trust_remote_code": True})
    assert loaded and loaded[-1][1] is True and model.sites == [SITE]
