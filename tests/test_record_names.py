"""Names that say what things are: `SiteOutput.target` (old `input` still reads, with a warning), and a saved SAE
loads through `AutoModel` without a warning about keys transformers itself adds."""
import logging

import pytest
import torch
from transformers import AutoModel

from hf_e2e_sae import SAEConfig, SiteOutput, SparseAutoencoder


def test_site_output_input_is_a_deprecated_alias_of_target():
    x = torch.randn(2, 3, 4)
    record = SiteOutput(target=x, latents=torch.rand(2, 3, 8), reconstruction=torch.randn(2, 3, 4))
    with pytest.warns(FutureWarning, match="SiteOutput.target"):
        assert record.input is x
    assert record.target is x and record.source is None


def test_automodel_load_of_a_saved_sae_warns_about_no_unknown_key(tmp_path, caplog):
    sae = SparseAutoencoder(SAEConfig(d_in=8, dict_size=16, site="blocks.0.resid_pre"))
    sae.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING):
        loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, SparseAutoencoder)
    assert not [r for r in caplog.records if "unknown keys" in r.getMessage()]
    torch.testing.assert_close(loaded.decoder.weight, sae.decoder.weight)


def test_unknown_keys_still_warn(caplog):
    with caplog.at_level(logging.WARNING):
        SAEConfig(d_in=8, dict_size=16, surely_not_a_key=1)
    assert any("surely_not_a_key" in r.getMessage() for r in caplog.records)


def test_load_tokenizer_after_from_pretrained(tmp_path):
    """After `SAEPatchedModel.from_pretrained`, the tokenizer of the base model the SAEs name is one call away."""
    from hf_e2e_sae import SAEPatchedModel
    from hf_e2e_sae.patching.base_models import resolve_base_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(resolve_base_model("builtin:tiny-shakespeare-gpt2"))
    sae = SparseAutoencoder(SAEConfig(d_in=base.config.n_embd, dict_size=16, site="blocks.1.resid_pre",
                                      base_model_name_or_path="builtin:tiny-shakespeare-gpt2"))
    SAEPatchedModel(base, [sae]).save_pretrained(tmp_path / "run" / "final")
    model = SAEPatchedModel.from_pretrained(tmp_path / "run")  # the run folder stands for its final/
    tokenizer = model.load_tokenizer()
    ids = tokenizer("To be, or not to be", return_tensors="pt").input_ids
    assert ids.shape[1] > 2 and model(ids).logits.shape[-1] == base.config.vocab_size
