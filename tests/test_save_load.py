"""save_pretrained / from_pretrained of patched models: SAE-only files, exact round trips."""
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

from hf_e2e_sae import SAEPatchedModel, SparseAutoencoder
from hf_e2e_sae.hub.format import MANIFEST_NAME

from test_patching import make_sae
from tiny_models import random_ids, tiny_model


@pytest.fixture
def saved_base(tmp_path):
    base_dir = tmp_path / "base"
    tiny_model("llama").save_pretrained(base_dir)
    return base_dir


def _load_base(path):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()


@pytest.mark.parametrize("sites", [["blocks.1.resid_pre"], ["blocks.0.attn_out", "blocks.2.resid_post"]])
def test_round_trip_loads_the_named_base_and_gives_identical_outputs(tmp_path, saved_base, sites):
    model = SAEPatchedModel(_load_base(saved_base), [make_sae(s, seed=i) for i, s in enumerate(sites)])
    ids = random_ids()
    expected = model(ids).logits
    out_dir = tmp_path / "saes"
    model.save_pretrained(out_dir)

    manifest = json.loads((out_dir / MANIFEST_NAME).read_text())
    assert manifest["base_model_name_or_path"] == "local:base"  # portable: no machine-local absolute path
    assert str(tmp_path) not in (out_dir / MANIFEST_NAME).read_text() + "".join(
        f.read_text() for f in out_dir.rglob("config.json"))
    base_keys = set(model.base_model.state_dict())
    weight_files = list(out_dir.rglob("*.safetensors"))
    assert len(weight_files) == len(sites)
    for f in weight_files:
        keys = set(load_file(f))
        assert keys == {"encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"}
        assert not keys & base_keys
    assert sum(f.stat().st_size for f in weight_files) < sum(f.stat().st_size for f in saved_base.glob("*.safetensors"))

    with pytest.raises(ValueError, match="local model .*pass `base_model=`"):
        SAEPatchedModel.from_pretrained(out_dir)
    loaded = SAEPatchedModel.from_pretrained(out_dir, base_model=str(saved_base),
                                             base_model_kwargs={"attn_implementation": "eager"})
    assert loaded.sites == model.sites
    torch.testing.assert_close(loaded(ids).logits, expected, rtol=0, atol=0)
    # several SAEs: one subfolder per site, each loadable alone
    if len(sites) > 1:
        for site in sites:
            assert isinstance(SparseAutoencoder.from_pretrained(out_dir, subfolder=site), SparseAutoencoder)
    else:
        assert isinstance(AutoModel.from_pretrained(out_dir), SparseAutoencoder)


def test_from_pretrained_with_a_given_base_model(tmp_path):
    base = tiny_model("gpt2")
    model = SAEPatchedModel(base, make_sae("blocks.1.resid_pre"))
    expected = model(random_ids()).logits
    model.save_pretrained(tmp_path)
    model.unpatch()
    clean = base(random_ids()).logits
    loaded = SAEPatchedModel.from_pretrained(tmp_path, base_model=base)
    assert loaded.base_model is base
    patched = loaded(random_ids()).logits
    torch.testing.assert_close(patched, expected, rtol=0, atol=0)
    assert not torch.allclose(patched, clean)  # the SAE really is spliced in again


def test_loading_checks_before_loading_base_weights(tmp_path, saved_base):
    model = SAEPatchedModel(_load_base(saved_base), make_sae("blocks.1.resid_pre"))
    model.save_pretrained(tmp_path / "saes")
    (saved_base / "model.safetensors").unlink()  # loading base weights would now fail differently
    config = json.loads((tmp_path / "saes" / "config.json").read_text())
    config["d_in"] = 7
    config["dict_size"] = 28
    (tmp_path / "saes" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="hidden size"):
        SAEPatchedModel.from_pretrained(tmp_path / "saes", base_model=str(saved_base))


def test_manifest_from_the_future_is_refused(tmp_path):
    model = SAEPatchedModel(tiny_model("gpt2"), make_sae("blocks.1.resid_pre"))
    model.save_pretrained(tmp_path)
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    manifest["format_version"] = 42
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="newer"):
        SAEPatchedModel.from_pretrained(tmp_path, base_model=tiny_model("gpt2"))
