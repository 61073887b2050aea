"""LoRA around SAEs (`TrainConfig.lora`, training/lora.py, patching/adapters.py, hub/adapter_files.py): gradients
reach exactly the parameters each arm trains, the clean pass is the unadapted base model, the adapter is saved
beside the SAEs, loaded by `SAEPatchedModel.from_pretrained`, and pushed with them in one commit with a card that
says what was adapted."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub import snapshot_download
from transformers import AutoModelForCausalLM

from test_patching import make_sae
from tiny_models import random_ids, tiny_model
from train_fixtures import SITE, N_EMBD, fresh_accelerate, make_config, tiny_assets  # noqa: F401

import hf_e2e_sae.training.trainer as trainer
from hf_e2e_sae import SAEConfig, SAEPatchedModel, SparseAutoencoder
from hf_e2e_sae.config.arguments import ConfigError
from hf_e2e_sae.hub.card import render_model_card
from hf_e2e_sae.hub.format import MANIFEST_NAME
from hf_e2e_sae.patching.adapters import adapter_parameters, lora_adapter
from hf_e2e_sae.training.config import load_train_config
from hf_e2e_sae.training.lora import lora_micro_batch_loss, setup_lora
from hf_e2e_sae.training.lora_config import LoRAConfig
from hf_e2e_sae.training.losses import LossConfig, kl_divergence

TARGETS = ["c_attn", "c_fc"]


def adapted(train_sae=False, objective="kl", seed=0):
    """(patched model with a LoRA adapter whose B matrices are non-zero, the base's own logits, ids)."""
    base = tiny_model("gpt2", seed=seed)
    ids = random_ids()
    with torch.no_grad():
        base_logits = base(ids).logits
    model = SAEPatchedModel(base, [make_sae(SITE)])
    lora = LoRAConfig(r=4, alpha=8, target_modules=TARGETS, objective=objective, train_sae=train_sae)
    params = setup_lora(model, lora)
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        for p in adapter_parameters(model):
            p.normal_(std=0.05)  # a trained adapter: B != 0, so it changes the outputs
    return model, base_logits, ids, lora, params


def _grad_owners(model) -> tuple:
    grads = {name: p.grad for name, p in model.named_parameters()}
    lora = {n for n, g in grads.items() if "lora_" in n and g is not None and g.abs().sum() > 0}
    sae = {n for n, g in grads.items() if n.startswith("saes.") and g is not None and g.abs().sum() > 0}
    other = {n for n, g in grads.items() if "lora_" not in n and not n.startswith("saes.") and g is not None}
    return lora, sae, other


@pytest.mark.parametrize("objective", ["kl", "ce"])
def test_frozen_sae_arm_sends_gradients_to_the_adapters_only(objective):
    model, _, ids, lora, params = adapted(objective=objective)
    config = SimpleNamespace(lora=lora, loss=LossConfig(preset="e2e"))
    total, terms, _ = lora_micro_batch_loss(model, model, ids, config, [], N_EMBD)
    total.backward()
    lora_grads, sae_grads, other = _grad_owners(model)
    assert lora_grads == {n for n, _ in model.named_parameters() if "lora_" in n} and len(lora_grads) == 12
    assert not sae_grads and not other
    assert all(p.grad is None for p in model.sae_parameters())  # frozen: not even a zero gradient
    assert {id(p) for p in params} == {id(p) for p in adapter_parameters(model)}  # what the optimizer sees
    assert {"kl", "sparsity"} <= set(terms)


def test_both_arm_sends_gradients_to_adapters_and_saes_only():
    model, _, ids, lora, params = adapted(train_sae=True)
    config = SimpleNamespace(lora=lora, loss=LossConfig(preset="finetune"))
    total, terms, _ = lora_micro_batch_loss(model, model, ids, config, [], N_EMBD)
    total.backward()
    lora_grads, sae_grads, other = _grad_owners(model)
    assert len(lora_grads) == 12 and sae_grads == {n for n, _ in model.named_parameters() if n.startswith("saes.")}
    assert not other
    assert len(params) == 12 + len(list(model.sae_parameters()))
    assert {"kl", "reconstruction", "sparsity"} <= set(terms)


def test_clean_pass_is_the_unadapted_base_and_the_objectives_are_exact():
    model, base_logits, ids, lora, _ = adapted()
    with torch.no_grad(), model.saes_disabled():
        clean = model(ids).logits
    torch.testing.assert_close(clean, base_logits, rtol=0, atol=0)  # no SAE, no adapter: bit for bit
    with torch.no_grad():
        patched = model(ids).logits
        with lora_adapter(model).disable_adapter():
            sae_only = model(ids).logits
    assert (patched - sae_only).abs().max() > 1e-3  # the adapter does act in the SAE pass
    config = SimpleNamespace(lora=lora, loss=LossConfig(preset="e2e"))
    total, _, _ = lora_micro_batch_loss(model, model, ids, config, [], N_EMBD)
    torch.testing.assert_close(total.detach(), kl_divergence(base_logits, patched))  # KL(P_orig || P_sae+lora)
    ce_config = SimpleNamespace(lora=lora.model_copy(update={"objective": "ce"}), loss=LossConfig(preset="e2e"))
    total, _, _ = lora_micro_batch_loss(model, model, ids, ce_config, [], N_EMBD)
    expected = F.cross_entropy(patched[:, :-1].reshape(-1, patched.shape[-1]), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(total.detach(), expected)


@pytest.mark.parametrize("override, field", [
    ({"lora": {"r": 0}}, "lora.r"),
    ({"lora": {"objective": "mse"}}, "lora.objective"),
    ({"lora": {"rank": 4}}, "lora.rank"),
    ({"lora": {"target_modules": []}}, "lora.target_modules"),
    ({"lora": {}, "init_from": None}, "init_from"),
    ({"lora": {}, "activation_cache": "/tmp/x", "loss": {"preset": "local"}}, "activation_cache"),
    ({"lora": {}, "save_every_samples": 32}, "save_every_samples"),
])
def test_lora_config_errors_are_one_line_and_name_the_field(make_config, tmp_path, override, field):
    override = {"init_from": str(tmp_path / "sae"), "save_every_samples": None, **override}
    path, _ = make_config("bad", **override)
    with pytest.raises(ConfigError) as error:
        load_train_config(path)
    message = str(error.value)
    assert "\n" not in message and field in message, message


def test_cli_lora_config_mistake_is_one_line_on_stderr_exit_2(make_config, tmp_path, capsys):
    from hf_e2e_sae.cli import main as cli_main

    path, _ = make_config("cli", init_from=str(tmp_path / "sae"), save_every_samples=None)
    assert cli_main(["train", str(path), "lora.r=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lora.r" in err, err


def _start_sae(tmp_path) -> Path:
    torch.manual_seed(3)
    SparseAutoencoder(SAEConfig(d_in=N_EMBD, dict_size=4 * N_EMBD, site=SITE)).save_pretrained(tmp_path / "start")
    return tmp_path / "start"


@pytest.mark.usefixtures("fresh_accelerate")
def test_trained_adapter_round_trips_through_final(make_config, tiny_assets, tmp_path):
    start = _start_sae(tmp_path)
    path, out = make_config("lora", init_from=str(start), n_samples=16, save_every_samples=None, lr=1e-2,
                            lora={"r": 4, "alpha": 8, "target_modules": TARGETS})
    run = trainer.setup_run(load_train_config(path))
    metrics = trainer._train_loop(run)
    model = run.accelerator.unwrap_model(run.model)
    assert max(p.abs().max() for n, p in model.named_parameters() if "lora_B" in n) > 0  # the adapters trained
    initial = SparseAutoencoder.from_pretrained(start)
    for name, tensor in initial.state_dict().items():  # the SAE stayed frozen
        assert torch.equal(model.sae(SITE).state_dict()[name], tensor), name

    final = out / "final"
    assert json.loads((final / MANIFEST_NAME).read_text())["adapter"] == "lora"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (final / "lora").iterdir()}
    loaded = SAEPatchedModel.from_pretrained(final, base_model=AutoModelForCausalLM.from_pretrained(tiny_assets.base_dir))
    ids = torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
        with loaded.saes_disabled():
            plain = AutoModelForCausalLM.from_pretrained(tiny_assets.base_dir)(ids).logits
            torch.testing.assert_close(loaded(ids).logits, plain, rtol=0, atol=0)
    # the evaluation's "original" CE is the unadapted base's: the CE increase is against the original model
    from hf_e2e_sae.evaluation.metrics import evaluate

    plain_model = SAEPatchedModel(AutoModelForCausalLM.from_pretrained(tiny_assets.base_dir), [initial])
    reference = evaluate(plain_model, run.eval_loader)
    assert metrics["ce_loss_orig"] == pytest.approx(reference["ce_loss_orig"], rel=1e-6)
    assert metrics["ce_loss_sae"] != pytest.approx(reference["ce_loss_sae"], rel=1e-6)


def test_push_uploads_the_adapter_in_the_same_commit_with_a_card(hub, hf_cache, hf_token, tmp_path):
    from test_hub import EAGER, publish_base

    base_repo, _ = publish_base(hub)
    model = SAEPatchedModel(AutoModelForCausalLM.from_pretrained(base_repo, **EAGER), [make_sae(SITE)])
    setup_lora(model, LoRAConfig(r=4, alpha=8, target_modules=TARGETS))
    with torch.no_grad():
        for p in adapter_parameters(model):
            p.normal_(std=0.05)
    ids = random_ids()
    expected = model(ids).logits.detach()
    repo_id = hub.unique_repo_id("lora")
    model.push_to_hub(repo_id, train_config={"lora": {"objective": "kl", "train_sae": False}})
    assert len(hub.commits(repo_id)) == 2  # repo creation + ONE commit
    files = hub.repo_files(repo_id)
    assert {"lora/adapter_config.json", "lora/adapter_model.safetensors", MANIFEST_NAME} <= set(files)
    assert json.loads(files["lora/adapter_config.json"])["base_model_name_or_path"] == base_repo
    readme = files["README.md"].decode()
    assert "LoRA adapter" in readme and "`c_attn`, `c_fc`" in readme and "**Rank r:** 4" in readme
    assert "**alpha:** 8" in readme and "KL(P_orig" in readme and "frozen" in readme
    assert readme == str(render_model_card(snapshot_download(repo_id), repo_id,
                                           train_config={"lora": {"objective": "kl", "train_sae": False}}))
    loaded = SAEPatchedModel.from_pretrained(repo_id, cache_dir=str(tmp_path / "cache"), base_model_kwargs=EAGER)
    torch.testing.assert_close(loaded(ids).logits, expected, rtol=0, atol=0)
    assert Path(snapshot_download(repo_id), "lora", "adapter_model.safetensors").is_file()


def test_layers_keep_the_adapters_after_the_sae_so_its_input_is_unchanged():
    base = tiny_model("gpt2")
    ids = random_ids()
    model = SAEPatchedModel(base, [make_sae(SITE)])  # blocks.1.resid_pre: the input of block 1
    with torch.no_grad():
        before = model(ids)
    setup_lora(model, LoRAConfig(r=4, target_modules=TARGETS, layers=[1, 2]))
    names = [n for n, _ in model.named_parameters() if "lora_" in n]
    assert names and all(".h.1." in n or ".h.2." in n for n in names)
    with torch.no_grad():
        for p in adapter_parameters(model):
            p.normal_(std=0.05)
        after = model(ids)
    torch.testing.assert_close(after.sae_outputs[SITE].target, before.sae_outputs[SITE].target, rtol=0, atol=0)
    assert (after.logits - before.logits).abs().max() > 1e-3
