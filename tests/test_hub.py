"""Hub sharing against the fake Hub (tests/hub_server.py) with the real huggingface_hub client.

Publishing (one atomic commit, model card, safetensors metadata), loading by repo id (base model by name
at its recorded revision, revisions, subfolders, several SAEs, offline cache), the `hf-e2e-sae push`
command, and every bad input's error.
"""
import json
import re
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard, snapshot_download
from huggingface_hub.errors import HfHubHTTPError
from safetensors import safe_open
from transformers import AutoModel, AutoModelForCausalLM

import hf_e2e_sae
from hf_e2e_sae import SAEPatchedModel, SparseAutoencoder
from hf_e2e_sae.cli import main as cli_main
from hf_e2e_sae.hub.push import push_run_to_hub
from hf_e2e_sae.hub.card import render_model_card
from hf_e2e_sae.hub.format import MANIFEST_NAME

from test_patching import make_sae
from tiny_models import HIDDEN, random_ids, tiny_model

SITE, SITE2 = "blocks.1.resid_pre", "blocks.2.resid_pre"
EAGER = {"attn_implementation": "eager"}
SAE_FILES = {"encoder.weight": (4 * HIDDEN, HIDDEN), "encoder.bias": (4 * HIDDEN,),
             "decoder.weight": (HIDDEN, 4 * HIDDEN), "decoder.bias": (HIDDEN,)}
METRICS = {
    "ce_loss_orig": 5.512, "ce_loss_sae": 5.634, "ce_loss_increase": 0.122, "kl": 0.0871, "top1_agreement": 0.91,
    "total_variation": 0.12, "n_tokens": 4096, f"l0/{SITE}": 12.5, f"alive/{SITE}": 101.0,
    f"explained_variance/{SITE}": 0.83, f"mse/{SITE}": 0.0123, f"norm_ratio/{SITE}": 0.95,
    "downstream_mse/blocks.2.resid_post": 0.31,
}
TRAIN_CONFIG = {
    "base_model": {"name_or_path": "user/base", "revision": None, "dtype": "float32"},
    "sites": [SITE], "dict_size_ratio": 4.0,
    "loss": {"preset": "e2e", "sparsity": {"coeff": 1.5, "p": 1.0}, "reconstruction": {"coeff": None},
             "kl": {"coeff": 1.0}, "downstream": {"coeff": None, "sites": []}},
    "data": {"path": "Skylion007/openwebtext", "name": None, "split": "train", "eval_split": "validation",
             "context_length": 128},
    "n_samples": 1000, "batch_size": 8, "lr": 0.0005,
}


def publish_base(hub, repo_id=None, seed=0) -> tuple:
    """Put a tiny GPT-2 on the fake Hub (server side, no HTTP); returns (repo_id, commit sha)."""
    repo_id = repo_id or hub.unique_repo_id("base")
    with tempfile.TemporaryDirectory() as tmp:
        tiny_model("gpt2", seed=seed).save_pretrained(tmp)
        files = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
    return repo_id, hub.add_commit(repo_id, files, message=f"base seed {seed}")


def trained_model(hub, sites=(SITE,), seed=0) -> tuple:
    """A patched model whose base was loaded by name from the fake Hub; returns (model, base_repo, base_sha)."""
    base_repo, base_sha = publish_base(hub)
    base = AutoModelForCausalLM.from_pretrained(base_repo, **EAGER)
    return SAEPatchedModel(base, [make_sae(s, seed=seed + i) for i, s in enumerate(sites)]), base_repo, base_sha


def assert_same_weights(a: SparseAutoencoder, b: SparseAutoencoder) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)


def test_push_round_trip_one_commit_and_identical_outputs(hub, hf_cache, hf_token, tmp_path):
    model, base_repo, base_sha = trained_model(hub)
    repo_id = hub.unique_repo_id("sae")
    ids = random_ids()
    expected = model(ids).logits

    info = model.push_to_hub(repo_id, metrics=METRICS, train_config=TRAIN_CONFIG, commit_message="first SAE")
    commits = hub.commits(repo_id)
    assert len(commits) == 2 and commits[-1].message == "first SAE"  # repo creation + ONE commit
    assert info.oid == hub.head(repo_id) and info.commit_url.endswith(info.oid)
    files = hub.repo_files(repo_id)
    assert sorted(files) == [".gitattributes", "README.md", "config.json", MANIFEST_NAME, "model.safetensors"]
    manifest = json.loads(files[MANIFEST_NAME])
    assert manifest["base_model_name_or_path"] == base_repo
    assert manifest["base_model_revision"] == base_sha  # pinned from the cache the base was loaded from
    assert manifest["saes"] == {SITE: ""} and manifest["library_version"] == hf_e2e_sae.__version__
    assert json.loads(files["config.json"])["base_model_revision"] == base_sha

    snapshot = Path(snapshot_download(repo_id))
    with safe_open(str(snapshot / "model.safetensors"), framework="pt") as f:
        assert f.metadata()["format"] == "pt" and f.metadata()["hf_e2e_sae_version"] == hf_e2e_sae.__version__
        assert {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()} == SAE_FILES

    loaded = SAEPatchedModel.from_pretrained(repo_id, cache_dir=str(tmp_path / "cache"), base_model_kwargs=EAGER)
    assert loaded.sites == [SITE]
    torch.testing.assert_close(loaded(ids).logits, expected, rtol=0, atol=0)
    assert isinstance(AutoModel.from_pretrained(repo_id), SparseAutoencoder)


def test_model_card_header_body_and_readme_survives(hub, hf_cache, hf_token):
    model, base_repo, _ = trained_model(hub)
    repo_id = hub.unique_repo_id("card")
    model.push_to_hub(repo_id, metrics=METRICS, train_config=TRAIN_CONFIG)

    readme = hub.repo_files(repo_id)["README.md"].decode()
    rendered = render_model_card(snapshot_download(repo_id), repo_id, metrics=METRICS, train_config=TRAIN_CONFIG)
    assert readme == str(rendered)  # our card, not transformers' default one
    assert hub.validated_yaml  # the header went through the Hub's YAML validation

    card = ModelCard.load(repo_id)
    header = card.data.to_dict()
    assert header["library_name"] == "hf_e2e_sae" and header["license"] == "mit"
    assert header["base_model"] == base_repo and header["datasets"] == ["Skylion007/openwebtext"]
    assert {"sparse-autoencoder", "interpretability", "e2e", SITE} <= set(header["tags"])
    (result,) = header["model-index"][0]["results"]
    assert result["dataset"]["type"] == "Skylion007/openwebtext" and result["dataset"]["split"] == "validation"
    values = {m["type"]: m["value"] for m in result["metrics"]}
    assert values == {"ce_loss_increase": 0.122, "kl": 0.0871, f"l0/{SITE}": 12.5, f"alive/{SITE}": 101.0,
                      f"explained_variance/{SITE}": 0.83}
    assert re.search(r"^# Sparse dictionary \(e2e\) for .+ at blocks\.1\.resid_pre$", card.text, re.M)  # title not empty

    body = card.text
    for needle in ["dictionary size", "128", "`e2e`", "1.5", "**Training tokens:** 128,000", "0.122",
                   f'SAEPatchedModel.from_pretrained("{repo_id}")', "```yaml\nbase_model:", "2405.12241",
                   "Goldowsky-Dill", "NeurIPS 2024",
                   f"hf_e2e_sae {hf_e2e_sae.__version__}"]:
        assert needle in body, needle
    assert yaml.safe_load(body.split("```yaml\n")[1].split("```")[0]) == TRAIN_CONFIG

    # The usage snippet runs as written.
    snippet = body.split("```python\n")[1].split("```")[0]
    scope: dict = {}
    exec(snippet, scope)
    assert scope["latents"].shape == (1, 16, 4 * HIDDEN) and scope["logits"].shape[:2] == (1, 16)


def test_card_degrades_without_extras_and_takes_overrides(hub, hf_cache, hf_token):
    sae = make_sae(SITE)
    card = render_model_card(sae, "user/bare", card_data={"license": "apache-2.0", "tags": ["extra"], "language": "en"})
    header = card.data.to_dict()
    assert header["license"] == "apache-2.0" and header["language"] == "en" and "extra" in header["tags"]
    assert "model-index" not in header and "base_model" not in header and "datasets" not in header
    assert "## Evaluation" not in card.text and "## Training" not in card.text and "2405.12241" in card.text
    assert ModelCard(str(card)).data.to_dict() == header  # parses back


def test_revision_pinning_branches_and_base_revision(hub, hf_cache, hf_token, tmp_path):
    model, base_repo, base_sha = trained_model(hub)
    ids = random_ids()
    repo_id = hub.unique_repo_id("pin")
    old_logits = model(ids).logits
    v1 = model.push_to_hub(repo_id).oid
    with torch.no_grad():
        model.sae(SITE).encoder.weight.mul_(2.0)
    new_logits = model(ids).logits
    v2 = model.push_to_hub(repo_id, commit_message="v2").oid
    assert v1 != v2 and hub.head(repo_id) == v2
    _, base_v2 = publish_base(hub, base_repo, seed=1)  # the base model moves on after training
    assert base_v2 != base_sha

    cache = str(tmp_path / "fresh")
    pinned = SAEPatchedModel.from_pretrained(repo_id, revision=v1, cache_dir=cache, base_model_kwargs=EAGER)
    torch.testing.assert_close(pinned(ids).logits, old_logits, rtol=0, atol=0)  # old SAE AND the recorded base
    latest = SAEPatchedModel.from_pretrained(repo_id, cache_dir=cache, base_model_kwargs=EAGER)
    torch.testing.assert_close(latest(ids).logits, new_logits, rtol=0, atol=0)
    assert not torch.equal(SparseAutoencoder.from_pretrained(repo_id, revision=v1).encoder.weight,
                           SparseAutoencoder.from_pretrained(repo_id).encoder.weight)

    # Pushing to a branch leaves main alone; the card's snippet names the branch.
    branch = model.push_to_hub(repo_id, revision="experiment")
    assert hub.head(repo_id) == v2 and hub.head(repo_id, "experiment") == branch.oid
    assert 'revision="experiment"' in hub.repo_files(repo_id, "experiment")["README.md"].decode()
    with torch.no_grad():
        model.sae(SITE).encoder.bias.add_(1.0)  # a PR needs a change: an identical push commits nothing
    pr = model.push_to_hub(repo_id, create_pr=True)
    assert pr.pr_url and hub.head(repo_id) == v2


def test_offline_reload_from_cache(hub, hf_cache, hf_token, hf_offline):
    model, _, _ = trained_model(hub)
    repo_id = hub.unique_repo_id("offline")
    model.push_to_hub(repo_id)
    ids = random_ids()
    online = SAEPatchedModel.from_pretrained(repo_id, base_model_kwargs=EAGER)
    n_requests = len(hub.requests)

    hf_offline()
    offline = SAEPatchedModel.from_pretrained(repo_id, base_model_kwargs=EAGER)
    torch.testing.assert_close(offline(ids).logits, online(ids).logits, rtol=0, atol=0)
    assert isinstance(SparseAutoencoder.from_pretrained(repo_id), SparseAutoencoder)
    assert len(hub.requests) == n_requests  # nothing reached the server
    with pytest.raises(OSError):
        SAEPatchedModel.from_pretrained(hub.unique_repo_id("never-downloaded"))


def test_repo_with_several_saes(hub, hf_cache, hf_token, tmp_path):
    model, _, _ = trained_model(hub, sites=(SITE, SITE2))
    repo_id = hub.unique_repo_id("multi")
    ids = random_ids()
    expected = model(ids).logits
    model.push_to_hub(repo_id, metrics=METRICS)
    files = set(hub.repo_files(repo_id))
    assert {f"{s}/{f}" for s in (SITE, SITE2) for f in ("config.json", "model.safetensors")} <= files
    assert "config.json" not in files

    loaded = SAEPatchedModel.from_pretrained(repo_id, cache_dir=str(tmp_path / "c"), base_model_kwargs=EAGER)
    assert loaded.sites == [SITE, SITE2]
    torch.testing.assert_close(loaded(ids).logits, expected, rtol=0, atol=0)
    for site in (SITE, SITE2):
        assert_same_weights(SparseAutoencoder.from_pretrained(repo_id, subfolder=site), model.sae(site))
        assert isinstance(AutoModel.from_pretrained(repo_id, subfolder=site), SparseAutoencoder)
    one = SAEPatchedModel.from_pretrained(repo_id, subfolder=SITE2, base_model_kwargs=EAGER)
    assert one.sites == [SITE2]
    assert_same_weights(one.sae(SITE2), model.sae(SITE2))


def test_single_sparse_autoencoder_push_to_a_private_repo(hub, hf_cache, hf_token, monkeypatch, tmp_path):
    model, base_repo, base_sha = trained_model(hub)
    repo_id = hub.unique_repo_id("one-sae")
    model.sae(SITE).push_to_hub(repo_id, private=True)
    assert hub.is_private(repo_id)
    assert json.loads(hub.repo_files(repo_id)[MANIFEST_NAME])["base_model_revision"] == base_sha
    assert_same_weights(AutoModel.from_pretrained(repo_id), model.sae(SITE))

    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(OSError, match=rf"{re.escape(repo_id)}.*not found.*private.*token="):
        SAEPatchedModel.from_pretrained(repo_id, cache_dir=str(tmp_path / "anon"))
    loaded = SAEPatchedModel.from_pretrained(repo_id, token=hf_token, cache_dir=str(tmp_path / "c"), base_model_kwargs=EAGER)
    torch.testing.assert_close(loaded(random_ids()).logits, model(random_ids()).logits, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- bad input
def test_missing_repo_revision_and_files(hub, hf_cache, hf_token):
    missing = hub.unique_repo_id("missing")
    with pytest.raises(OSError, match=rf"{re.escape(missing)}.*not found.*private"):
        SAEPatchedModel.from_pretrained(missing)
    model, _, _ = trained_model(hub, sites=(SITE, SITE2))
    repo_id = hub.unique_repo_id("files")
    model.push_to_hub(repo_id)
    with pytest.raises(OSError, match="Revision 'nope' was not found"):
        SAEPatchedModel.from_pretrained(repo_id, revision="nope")
    with pytest.raises(OSError, match="neither hf_e2e_sae.json nor config.json"):
        SAEPatchedModel.from_pretrained(repo_id, subfolder="no-such-folder")
    empty = hub.unique_repo_id("empty")
    hub.create_repo(empty)
    with pytest.raises(OSError, match=rf"{re.escape(empty)}.*neither"):
        SAEPatchedModel.from_pretrained(empty)

    hub.add_commit(repo_id, delete=[f"{SITE2}/config.json"])
    with pytest.raises(OSError, match=rf"{re.escape(SITE2)}/config.json is missing"):
        SAEPatchedModel.from_pretrained(repo_id)
    hub.add_commit(repo_id, delete=[f"{SITE}/model.safetensors"])
    with pytest.raises(OSError, match="model.safetensors"):
        SAEPatchedModel.from_pretrained(repo_id, subfolder=SITE)


def test_future_format_versions_are_refused_from_the_hub(hub, hf_cache, hf_token):
    model, _, _ = trained_model(hub)
    repo_id = hub.unique_repo_id("future")
    model.push_to_hub(repo_id)
    manifest = json.loads(hub.repo_files(repo_id)[MANIFEST_NAME])
    hub.add_commit(repo_id, {MANIFEST_NAME: json.dumps({**manifest, "format_version": 99})})
    with pytest.raises(ValueError, match=rf"{re.escape(repo_id)}.*format_version 99.*newer.*upgrade"):
        SAEPatchedModel.from_pretrained(repo_id)

    config = json.loads(hub.repo_files(repo_id)["config.json"])
    hub.add_commit(repo_id, {"config.json": json.dumps({**config, "format_version": 99})}, delete=[MANIFEST_NAME])
    with pytest.raises(ValueError, match="format_version=99 is newer"):
        SAEPatchedModel.from_pretrained(repo_id)


def test_d_in_mismatch_fails_before_base_weights_download(hub, hf_cache, hf_token):
    base_repo, _ = publish_base(hub)
    sae = make_sae(SITE, d_in=HIDDEN // 2)
    sae.config.base_model_name_or_path = base_repo
    repo_id = hub.unique_repo_id("narrow")
    sae.push_to_hub(repo_id)
    with pytest.raises(ValueError, match="d_in=16.*hidden size is 32"):
        SAEPatchedModel.from_pretrained(repo_id)
    assert not list(hf_cache.rglob("*.safetensors"))  # neither base nor SAE weights were downloaded


def test_push_without_token_sends_nothing(hub, hf_cache, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    model = SAEPatchedModel(tiny_model("gpt2"), make_sae(SITE))
    repo_id = hub.unique_repo_id("anon")
    n_requests = len(hub.requests)
    with pytest.raises(ValueError, match=r"hf auth login.*token="):
        model.push_to_hub(repo_id)
    model.save_pretrained(tmp_path / "run")
    with pytest.raises(ValueError, match="hf auth login"):
        push_run_to_hub(tmp_path / "run", repo_id)
    assert cli_main(["push", str(tmp_path / "run"), repo_id]) == 2  # a user mistake: exit 2
    assert len(hub.requests) == n_requests and not hub.repo_exists(repo_id)


def test_bad_folders_fail_before_any_request(hub, hf_cache, hf_token, tmp_path):
    repo_id = hub.unique_repo_id("nothing")
    n_requests = len(hub.requests)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        push_run_to_hub(tmp_path / "nope", repo_id)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no saved SAEs"):
        push_run_to_hub(tmp_path / "empty", repo_id)
    SAEPatchedModel(tiny_model("gpt2"), make_sae(SITE)).save_pretrained(tmp_path / "future")
    manifest = json.loads((tmp_path / "future" / MANIFEST_NAME).read_text())
    (tmp_path / "future" / MANIFEST_NAME).write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ValueError, match="newer"):
        push_run_to_hub(tmp_path / "future", repo_id)
    (tmp_path / "future" / MANIFEST_NAME).write_text(json.dumps(manifest))
    (tmp_path / "future" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no .safetensors"):
        push_run_to_hub(tmp_path / "future", repo_id)
    with pytest.raises(ValueError):
        push_run_to_hub(tmp_path / "future", "not a/valid//repo id")
    assert len(hub.requests) == n_requests and not hub.repo_exists(repo_id)


def test_failed_upload_leaves_no_partial_commit(hub, hf_cache, hf_token):
    model, _, _ = trained_model(hub, sites=(SITE, SITE2))
    repo_id = hub.unique_repo_id("atomic")
    model.push_to_hub(repo_id)
    head, files, n_commits = hub.head(repo_id), hub.repo_files(repo_id), len(hub.commits(repo_id))
    with torch.no_grad():
        model.sae(SITE2).decoder.bias.add_(1.0)
    hub.fail_next_commit()
    with pytest.raises(HfHubHTTPError):
        model.push_to_hub(repo_id, metrics=METRICS)
    assert hub.head(repo_id) == head and hub.repo_files(repo_id) == files and len(hub.commits(repo_id)) == n_commits
    model.push_to_hub(repo_id)  # works again once the Hub does
    assert hub.head(repo_id) != head


# ---------------------------------------------------------------------------------------------- console
def test_cli_push_of_a_trainer_run_dir(hub, hf_cache, hf_token, tmp_path, capsys):
    model, base_repo, base_sha = trained_model(hub)
    run = tmp_path / "run"
    model.save_pretrained(run / "final")
    (run / "final" / "eval_metrics.json").write_text(json.dumps(METRICS))
    (run / "final" / "train_config.yaml").write_text(yaml.safe_dump({**TRAIN_CONFIG, "base_model": {"name_or_path": base_repo}}))
    (run / "train_summary.json").write_text(json.dumps({"train_tokens": 123456, "steps": 10}))
    repo_id = hub.unique_repo_id("cli")

    assert cli_main(["push", str(run), repo_id, "--private", "--commit-message", "from the CLI"]) == 0
    url = capsys.readouterr().out.strip()
    assert url.endswith(hub.head(repo_id)) and hub.commits(repo_id)[-1].message == "from the CLI"
    assert hub.is_private(repo_id)
    files = hub.repo_files(repo_id)
    assert {"eval_metrics.json", "train_config.yaml", "train_summary.json", "README.md", MANIFEST_NAME} <= set(files)
    readme = files["README.md"].decode()
    assert "**Training tokens:** 123,456" in readme and "| CE loss increase | 0.122 |" in readme
    assert ModelCard(readme).data.to_dict()["model-index"]
    assert json.loads(files[MANIFEST_NAME])["base_model_revision"] == base_sha
    torch.testing.assert_close(SAEPatchedModel.from_pretrained(repo_id, base_model_kwargs=EAGER)(random_ids()).logits,
                               model(random_ids()).logits, rtol=0, atol=0)

    # the final folder itself, to a branch, via the Python API the trainer calls
    url = push_run_to_hub(run / "final", repo_id, commit_message="again")
    assert url.endswith(hub.head(repo_id)) and hub.commits(repo_id)[-1].message == "again"
    assert "train_summary.json" in hub.repo_files(repo_id)  # kept from the previous commit, not re-uploaded

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["push", "--help"])
    assert exit_info.value.code == 0 and "--commit-message" in capsys.readouterr().out


def test_pushing_unchanged_saes_again_is_a_no_op(hub, hf_cache, hf_token):
    """Uploaded safetensors are byte-deterministic (sorted metadata), so a re-push creates no commit."""
    model, _, _ = trained_model(hub)
    repo_id = hub.unique_repo_id("idempotent")
    model.push_to_hub(repo_id)
    first = hub.repo_files(repo_id)["model.safetensors"]
    n_commits = len(hub.commits(repo_id))
    for _ in range(3):
        model.push_to_hub(repo_id)
        assert len(hub.commits(repo_id)) == n_commits
    assert hub.repo_files(repo_id)["model.safetensors"] == first
    with safe_open_bytes(first) as metadata:
        assert list(metadata) == sorted(metadata) and metadata["format"] == "pt"


class safe_open_bytes:
    """The `__metadata__` of safetensors bytes, in file order."""

    def __init__(self, data: bytes):
        size = int.from_bytes(data[:8], "little")
        self.metadata = json.loads(data[8:8 + size])["__metadata__"]

    def __enter__(self):
        return self.metadata

    def __exit__(self, *exc):
        return False


def test_push_warns_when_the_base_model_is_only_local(hub, hf_cache, hf_token, tmp_path, caplog):
    """An SAE on a local base records `local:<name>` (no absolute path), and its push warns that whoever loads it
    must pass `base_model=`."""
    import logging

    tiny_model("gpt2").save_pretrained(tmp_path / "base")
    model = SAEPatchedModel(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), make_sae(SITE))
    repo_id = hub.unique_repo_id("local-base")
    with caplog.at_level(logging.WARNING, logger="hf_e2e_sae.hub.push"):
        model.push_to_hub(repo_id)
    assert "'local:base' is a local model" in caplog.text
    files = hub.repo_files(repo_id)
    pushed = files["config.json"].decode() + files[MANIFEST_NAME].decode() + files["README.md"].decode()
    assert "local:base" in pushed and str(tmp_path) not in pushed
