"""The trainer publishes its final artifact (`push_to_hub: true`) and trains in bf16 mixed precision."""
import json

import pytest
import torch
from huggingface_hub import ModelCard

import hf_e2e_sae.training.trainer as trainer
from hf_e2e_sae import SAEPatchedModel
from hf_e2e_sae.training.config import load_train_config

from train_fixtures import SITE, fresh_accelerate, make_config, tiny_assets  # noqa: F401  (fixtures)


@pytest.fixture(autouse=True)
def _clean_accelerate(fresh_accelerate):
    yield


@pytest.mark.parametrize("private", [False, True])
def test_run_pushes_final_artifact_with_card(make_config, hub, hf_cache, hf_token, private):
    repo_id = hub.unique_repo_id("trained")
    path, out = make_config("push", n_samples=16, save_every_samples=None, push_to_hub=True, hub_repo_id=repo_id,
                            hub_private=private)
    metrics = trainer.train(load_train_config(path))
    files = hub.repo_files(repo_id)
    assert {"README.md", "hf_e2e_sae.json", "config.json", "model.safetensors", "eval_metrics.json",
            "train_config.yaml", "train_summary.json"} <= set(files)
    assert hub.is_private(repo_id) is private
    assert json.loads(files["eval_metrics.json"]) == json.loads((out / "final" / "eval_metrics.json").read_text())
    card = ModelCard(files["README.md"].decode())
    assert card.data.library_name == "hf_e2e_sae" and SITE in card.data.tags and "e2e" in card.data.tags
    base = str(load_train_config(path).base_model.name_or_path)  # a local model: named explicitly
    loaded = SAEPatchedModel.from_pretrained(repo_id, token=hf_token, base_model=base)
    local = SAEPatchedModel.from_pretrained(out / "final", base_model=base)
    ids = torch.randint(0, 100, (1, 8))
    torch.testing.assert_close(loaded(ids).logits, local(ids).logits, rtol=0, atol=0)
    assert metrics["n_tokens"] > 0


def test_push_without_token_fails_before_training(make_config, hub, hf_cache, monkeypatch):
    path, out = make_config("no_token", push_to_hub=True, hub_repo_id=hub.unique_repo_id("never"))
    monkeypatch.setattr(trainer, "train_step", lambda *a: pytest.fail("trained without a token"))
    with pytest.raises(Exception, match="hf auth login"):
        trainer.train(load_train_config(path))
    assert not (out / "final").exists()


def test_bf16_mixed_precision_trains(make_config):
    path, out = make_config("bf16", n_samples=16, save_every_samples=None, mixed_precision="bf16",
                            base_model={"dtype": "bfloat16"})
    run = trainer.setup_run(load_train_config(path))
    assert next(run.model.base_model.parameters()).dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in run.model.sae_parameters())  # SAEs stay float32
    before = {k: v.clone() for k, v in run.model.saes.state_dict().items()}
    logs = [trainer.train_step(run, group) for group in trainer._micro_batch_groups(run)]
    assert all(torch.isfinite(torch.tensor(log["train/loss"])) for log in logs)
    after = run.model.saes.state_dict()
    assert all(not torch.equal(before[k], after[k]) and torch.isfinite(after[k]).all() for k in before)
