"""Fault injection on trust boundaries (issue 21, part A): code a file names, secrets in trackers and URLs, a
browser folder the user owns, a finished run, a model patched twice.

Each test reproduces what a probe found and checks the guarantee: loading files never runs the code of a base
model they name (and never asks on stdin), no credential reaches any file a run writes (wandb's own records
included), `browse` never deletes what it did not write, `resume_from_checkpoint=latest` never replaces a
finished run, and a model carries one set of SAE hooks at a time. Tiny shapes: each test takes seconds.
"""
from __future__ import annotations

import builtins
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from train_fixtures import SITE, fresh_accelerate, make_config, subprocess_env, tiny_assets  # noqa: F401
from tiny_models import HIDDEN, random_ids, tiny_model

from hf_e2e_sae import SAEConfig, SAEPatchedModel, SparseAutoencoder
from hf_e2e_sae.cli import main as cli_main
from hf_e2e_sae.runs.redaction import REDACTED, redact_secrets

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "hf_e2e_sae.cli"]


@pytest.fixture(autouse=True)
def _clean_accelerate(fresh_accelerate):
    yield


def _one_line(err: str, prog: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith(prog), err[-3000:]
    return lines[0]


# ---------------------------------------------------------------- 1. no code a file names ever runs

def _remote_code_model(root: Path) -> tuple:
    """A base-model folder whose config.json maps AutoConfig / AutoModelForCausalLM to its own Python files, which
    create `marker` when imported: what a hostile repository named by an SAE's files could hold."""
    folder, marker = root / "remote-code-model", root / "REMOTE_CODE_RAN"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evil_remote", "architectures": ["EvilModel"],
        "auto_map": {"AutoConfig": "configuration_evil.EvilConfig",
                     "AutoModelForCausalLM": "modeling_evil.EvilModel"}}))
    payload = f"open({str(marker)!r}, 'w').write('ran')\n"
    (folder / "configuration_evil.py").write_text(
        payload + "from transformers import PretrainedConfig\n\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evil_remote'\n")
    (folder / "modeling_evil.py").write_text(payload)
    return str(folder), marker


def _sae_folder(kind: str, root: Path, base: str) -> tuple:
    """An SAE saved in format `kind` that names `base` as its base model; returns (path, from_pretrained kwargs)."""
    folder = root / f"sae-{kind}"
    if kind == "hf_e2e_sae":
        sae = SparseAutoencoder(SAEConfig(d_in=HIDDEN, dict_size=16, site="blocks.1.resid_pre",
                                          base_model_name_or_path=base))
        SAEPatchedModel(tiny_model("gpt2"), [sae]).save_pretrained(folder)
        manifest = json.loads((folder / "hf_e2e_sae.json").read_text())
        manifest["base_model_name_or_path"] = base  # save_pretrained recorded the tiny model it was patched into
        (folder / "hf_e2e_sae.json").write_text(json.dumps(manifest))
        return folder, {}
    if kind == "saelens":
        from sae_lens import StandardSAE, StandardSAEConfig
        from sae_lens.saes.sae import SAEMetadata

        metadata = SAEMetadata(hook_name="blocks.1.hook_resid_pre", model_name=base)
        StandardSAE(StandardSAEConfig(d_in=HIDDEN, d_sae=16, metadata=metadata)).save_model(folder)
        return folder, {}
    if kind == "sparsify":
        from sparsify import SparseCoder, SparseCoderConfig

        SparseCoder(HIDDEN, SparseCoderConfig(k=4, num_latents=16)).save_to_disk(folder / "layers.1")
        (folder / "config.json").write_text(json.dumps({"model": base}))
        return folder, {"subfolder": "layers.1"}
    folder.mkdir()
    if kind == "e2e_sae":
        p = "blocks-1-hook_resid_pre"
        torch.save({f"{p}.encoder.0.weight": torch.randn(16, HIDDEN), f"{p}.encoder.0.bias": torch.zeros(16),
                    f"{p}.decoder.weight": torch.randn(HIDDEN, 16), f"{p}.decoder.bias": torch.zeros(HIDDEN)},
                   folder / "samples_10.pt")
        (folder / "final_config.yaml").write_text(yaml.safe_dump(
            {"tlens_model_name": base, "saes": {"sae_positions": ["blocks.1.hook_resid_pre"]}}))
        return folder, {}
    torch.save({"encoder.weight": torch.randn(16, HIDDEN), "encoder.bias": torch.zeros(16),
                "decoder.weight": torch.randn(HIDDEN, 16), "bias": torch.zeros(HIDDEN)}, folder / "ae.pt")
    trainer = {"dict_class": "AutoEncoder", "layer": 1, "lm_name": base, "submodule_name": "resid_post_layer_1"}
    (folder / "config.json").write_text(json.dumps({"trainer": trainer, "buffer": {"io": "out"}}))
    return folder, {}


@pytest.mark.parametrize("kind", ["hf_e2e_sae", "saelens", "sparsify", "e2e_sae", "dictionary_learning"])
def test_loading_never_runs_or_asks_about_the_code_of_a_base_model_the_files_name(tmp_path, monkeypatch, kind):
    """Today transformers asks "[y/N]" on stdin and one typed "y" runs the named repository's code."""
    base, marker = _remote_code_model(tmp_path)
    folder, kwargs = _sae_folder(kind, tmp_path, base)
    asked = []

    def answer_yes(prompt=""):  # what one keystroke of a user would do
        asked.append(prompt)
        return "y"

    monkeypatch.setattr(builtins, "input", answer_yes)
    try:
        SAEPatchedModel.from_pretrained(folder, **kwargs)
        error = None
    except Exception as raised:  # noqa: BLE001  (which error comes is checked below, after the marker)
        error = raised
    assert not marker.exists(), "the base model's code ran"
    assert not asked, f"asked on stdin: {asked[0][:200]!r}"
    assert isinstance(error, ValueError), repr(error)
    message = str(error)
    assert "\n" not in message.strip() and "trust_remote_code" in message and base in message, message


@pytest.mark.parametrize("command", ["train", "browse"])
def test_cli_never_runs_named_code_even_when_the_user_types_yes(tmp_path, tiny_assets, command):
    """Through the real command line with "y" waiting on stdin: one line, exit 2, and the code never ran."""
    base, marker = _remote_code_model(tmp_path)
    if command == "train":
        argv = CLI + ["train", f"base_model.name_or_path={base}", f"output_dir={tmp_path / 'out'}",
                      f"data.data_files.train={tiny_assets.docs[0]}", "data.path=text", "data.n_eval_samples=4"]
    else:
        folder, _ = _sae_folder("hf_e2e_sae", tmp_path, base)
        argv = CLI + ["browse", str(folder), "--out", str(tmp_path / "site")]
    proc = subprocess.run(argv, input="y\ny\ny\n", capture_output=True, text=True, cwd=tmp_path,
                          env=subprocess_env(), timeout=300)
    assert not marker.exists(), "the base model's code ran"
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = _one_line(proc.stderr, f"hf-e2e-sae {command}")
    assert "remote-code-model" in line and "trust_remote_code" in line, line


def test_trust_remote_code_stays_with_a_base_model_the_caller_names(tmp_path, monkeypatch):
    """Naming the base model and asking for trust_remote_code is the one way its code may run."""
    base, marker = _remote_code_model(tmp_path)
    folder, _ = _sae_folder("hf_e2e_sae", tmp_path, "gpt2")
    monkeypatch.setattr(builtins, "input", lambda prompt="": pytest.fail("asked on stdin"))
    with pytest.raises(Exception):  # the payload defines no model class: its import is what we look for
        SAEPatchedModel.from_pretrained(folder, base_model=base, base_model_kwargs={"trust_remote_code": True})
    assert marker.exists()  # the caller's explicit choice is honoured


# ---------------------------------------------------------------- 2. secrets: URL forms, headers, trackers

SECRETS = {"override": "hf_OVERRIDEsecret0123456789", "userinfo": "ghp_USERINFOsecret0123456",
           "password": "PASSWORDsecret0123456", "amz": "AMZSIGNATUREsecret0123456789abcdef",
           "amzcred": "AKIAAMZCREDENTIALsecret", "amztoken": "AMZSESSIONTOKENsecret012345",
           "goog": "GOOGSIGNATUREsecret0123456789", "googcred": "GOOGCREDENTIALsecret0123",
           "sas": "AZURESASsecret0123456789%3D", "bearer": "BEARERsecret0123456789abc",
           "basic": "QkFTSUNzZWNyZXQ6MDEyMzQ1Njc4OQ=="}


def _secret_strings() -> dict:
    s = SECRETS
    return {
        "userinfo": f"https://{s['userinfo']}@git.example.com/org/data.git",
        "user_password": f"https://someone:{s['password']}@host.example.com/x",
        "s3": (f"https://bucket.s3.amazonaws.com/d.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential="
               f"{s['amzcred']}%2F20240101&X-Amz-Security-Token={s['amztoken']}&X-Amz-Signature={s['amz']}"),
        "gcs": (f"https://storage.googleapis.com/b/d.txt?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential="
                f"{s['googcred']}&X-Goog-Signature={s['goog']}"),
        "azure": f"https://acct.blob.core.windows.net/c/d.txt?sv=2022-11-02&se=2030-01-01&sp=r&sig={s['sas']}",
        "header": f"Authorization: Bearer {s['bearer']}",
        "basic": f"Basic {s['basic']}",
    }


def test_redaction_covers_url_userinfo_signed_urls_and_authorization_headers():
    tree = {"sources": list(_secret_strings().values()), "plain": "https://huggingface.co/gpt2?revision=main",
            "note": "Basic usage of the bearer of news", "mirror": "https://host.example.com/a?x=1&sig_level=2"}
    red = redact_secrets(tree)
    text = json.dumps(red)
    assert not [name for name, value in SECRETS.items() if name != "override" and value in text], text
    assert red["plain"] == tree["plain"] and red["note"] == tree["note"]
    assert red["mirror"] == tree["mirror"]
    assert all(REDACTED in value for value in red["sources"]), red["sources"]
    assert "git.example.com/org/data.git" in red["sources"][0] and "X-Amz-Algorithm=AWS4-HMAC-SHA256" in red["sources"][2]


def test_redact_argv_masks_overrides_and_urls_in_every_spelling():
    from hf_e2e_sae.runs.redaction import redact_argv

    s = SECRETS
    argv = ["hf-e2e-sae", "train", "cfg.yaml", f"data.load_kwargs.token={s['override']}",
            "--hub_token", s["override"], f"--data.load_kwargs.api_key={s['override']}",
            f"data.path={_secret_strings()['s3']}", "lr=1e-3", "--n_samples", "64"]
    red = redact_argv(argv)
    assert not any(value in " ".join(red) for value in SECRETS.values()), red
    assert red[:3] == argv[:3] and red[-3:] == argv[-3:]
    assert red[3] == f"data.load_kwargs.token={REDACTED}" and red[4] == "--hub_token" and red[5] == REDACTED


def _secret_run_argv(make_config, name: str, tracker: str) -> tuple:
    """A tiny training run whose overrides carry every secret (a token field and each URL form)."""
    path, out = make_config(name, n_samples=16, save_every_samples=8, tracker=tracker)
    urls = _secret_strings()
    argv = ["train", str(path), f"data.load_kwargs.token={SECRETS['override']}",
            f"--data.load_kwargs.hub_token={SECRETS['override']}"]
    argv += [f"data.load_kwargs.source_{key}={value}" for key, value in urls.items()]
    return argv, out


def _spy_on_load_dataset(monkeypatch) -> list:
    """datasets.load_dataset sees the real secrets (the run uses them) and loads without them."""
    import hf_e2e_sae.data.pipeline as data

    seen, real = [], data.datasets.load_dataset

    def spy(*args, **kwargs):
        seen.append(json.dumps(kwargs, default=str))
        keep = {k: v for k, v in kwargs.items() if k not in ("token", "hub_token") and not k.startswith("source_")}
        return real(*args, **keep)

    monkeypatch.setattr(data.datasets, "load_dataset", spy)
    return seen


def _leaks(folders: list) -> list:
    found = []
    for folder in folders:
        for file in Path(folder).rglob("*"):
            if file.is_file() and not file.is_symlink():
                data = file.read_bytes()
                found += [f"{file.relative_to(folder)}: {name}" for name, value in SECRETS.items()
                          if value.encode() in data or value.replace("%3D", "=").encode() in data]
    return found


@pytest.mark.parametrize("tracker", ["wandb", "tensorboard"])
def test_no_secret_reaches_any_file_a_tracked_run_writes(make_config, monkeypatch, tmp_path, tracker):
    """Today wandb stores sys.argv (tokens given as overrides, in clear) and URL credentials reach every file."""
    wandb_dir = tmp_path / "wandb_dir"
    wandb_dir.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "wrap")
    argv, out = _secret_run_argv(make_config, f"tracked_{tracker}", tracker)
    seen = _spy_on_load_dataset(monkeypatch)
    monkeypatch.setattr(sys, "argv", ["hf-e2e-sae", *argv])
    assert cli_main(argv) == 0
    assert sys.argv == ["hf-e2e-sae", *argv]  # restored after the tracker started
    assert any(SECRETS["override"] in call and SECRETS["amz"] in call for call in seen)  # the run used them
    written = [f for folder in (out, wandb_dir) for f in Path(folder).rglob("*") if f.is_file()]
    leaks = _leaks([out, wandb_dir])
    assert not leaks, f"{len(leaks)} leaks: " + "; ".join(leaks)
    if tracker == "wandb":
        records = b"".join(f.read_bytes() for f in written if f.suffix == ".wandb")  # offline: metadata lives here
        assert f"data.load_kwargs.token={REDACTED}".encode() in records  # wandb recorded the command line
    else:
        assert any(f.name.startswith("events.out.tfevents") for f in written)
    assert (out / "final" / "train_config.yaml").is_file()


# ---------------------------------------------------------------- 3. browse writes only into its own folder

def _stats_folder(tmp_path) -> Path:
    from hf_e2e_sae.analysis.browse import save_all
    from hf_e2e_sae.evaluation.feature_stats import compute_feature_stats

    torch.manual_seed(0)
    model = SAEPatchedModel(tiny_model("gpt2"), [SparseAutoencoder(SAEConfig(d_in=HIDDEN, dict_size=16,
                                                                               site="blocks.1.resid_pre"))])

    class Tok:
        def decode(self, ids):
            return f" t{ids[0]}"

    stats = compute_feature_stats(model, [random_ids(2, 16, s) for s in range(2)], top_n=3, window=(2, 1),
                                  tokenizer=Tok(), progress=False)["blocks.1.resid_pre"]
    stats.vocab.update({i: f" t{i}" for i in range(256)})
    folder = tmp_path / "stats_src" / "stats"
    save_all([stats], {}, folder)
    return folder


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_browse_refuses_a_folder_it_did_not_write_and_leaves_it_intact(tmp_path, capsys):
    stats = _stats_folder(tmp_path)
    user = tmp_path / "my_site"
    (user / "data").mkdir(parents=True)
    (user / "data" / "notes.txt").write_text("my notes")
    (user / "index.html").write_text("<h1>my page</h1>")
    before = _tree(user)
    assert cli_main(["browse", "--from-stats", str(stats), "--out", str(user)]) == 2
    line = _one_line(capsys.readouterr().err, "hf-e2e-sae browse")
    assert str(user) in line and "--out" in line, line
    assert _tree(user) == before


def test_browse_rewrites_its_own_folder(tmp_path, capsys):
    stats = _stats_folder(tmp_path)
    site = tmp_path / "site"
    assert cli_main(["browse", "--from-stats", str(stats), "--out", str(site)]) == 0
    first = _tree(site)
    assert "index.html" in first and any(name.startswith("data/") for name in first)
    (site / "data" / "stale.js").write_text("stale")  # an old shard: the rewrite removes it
    assert cli_main(["browse", "--from-stats", str(stats), "--out", str(site)]) == 0
    assert _tree(site) == first
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_main(["browse", "--from-stats", str(stats), "--out", str(empty)]) == 0
    capsys.readouterr()


def test_browse_refuses_before_any_model_loads(tmp_path, capsys):
    """A bad --out is refused first, not after minutes of statistics."""
    user = tmp_path / "docs"
    user.mkdir()
    (user / "index.html").write_text("mine")
    assert cli_main(["browse", str(tmp_path / "no_such_run"), "--out", str(user)]) == 2
    line = _one_line(capsys.readouterr().err, "hf-e2e-sae browse")
    assert "--out" in line and str(user) in line, line
    assert (user / "index.html").read_text() == "mine"


# ---------------------------------------------------------------- 6. one set of SAE hooks per model

def _sae(seed: int) -> SparseAutoencoder:
    torch.manual_seed(seed)
    return SparseAutoencoder(SAEConfig(d_in=HIDDEN, dict_size=16, site="blocks.1.resid_pre"))


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_patching_a_patched_model_is_refused_and_unpatch_frees_it():
    """Today a second wrapper stacks its SAE on the first, and its "original" model still holds the first SAE."""
    base = tiny_model("gpt2")
    ids = random_ids()
    with torch.no_grad():
        clean = base(ids).logits
    first = SAEPatchedModel(base, [_sae(0)])
    hooks = _hook_count(base)
    with pytest.raises(ValueError, match=r"unpatch\(\)") as error:
        SAEPatchedModel(base, [_sae(1)])
    assert "\n" not in str(error.value)
    assert _hook_count(base) == hooks  # nothing added
    from hf_e2e_sae.patching.patched_model import patched_by

    assert patched_by(base) is first
    assert first.unpatch() is base and patched_by(base) is None and _hook_count(base) == 0
    second = SAEPatchedModel(base, [_sae(1)])
    assert patched_by(base) is second
    with torch.no_grad(), second.saes_disabled():
        torch.testing.assert_close(second(ids).logits, clean, rtol=0, atol=0)  # "original" is the clean model


def test_from_pretrained_refuses_a_patched_base_model(tmp_path):
    folder, _ = _sae_folder("hf_e2e_sae", tmp_path, "gpt2")
    base = tiny_model("gpt2")
    SAEPatchedModel(base, [_sae(0)])
    with pytest.raises(ValueError, match=r"unpatch\(\)"):
        SAEPatchedModel.from_pretrained(folder, base_model=base)


# ---------------------------------------------------------------- 7. a finished run is never replaced

def test_resume_latest_on_a_finished_run_without_checkpoints_refuses(make_config, capsys):
    """Today: "starting fresh", a retrain (even with a changed config) and final/ replaced."""
    path, out = make_config("finished", n_samples=16, save_every_samples=None)
    assert cli_main(["train", str(path)]) == 0
    final = _tree(out / "final")
    capsys.readouterr()
    assert cli_main(["train", str(path), "resume_from_checkpoint=latest", "lr=0.01"]) == 2
    line = _one_line(capsys.readouterr().err, "hf-e2e-sae train")
    assert "final/" in line and "overwrite_output_dir=true" in line and "output_dir" in line, line
    assert _tree(out / "final") == final
    assert cli_main(["train", str(path), "resume_from_checkpoint=latest", "overwrite_output_dir=true"]) == 0


def test_reused_output_dir_message_only_suggests_what_is_safe(make_config, capsys):
    path, out = make_config("reused", n_samples=16, save_every_samples=None)
    assert cli_main(["train", str(path)]) == 0
    capsys.readouterr()
    status = cli_main(["train", str(path)])
    line = _one_line(capsys.readouterr().err, "hf-e2e-sae train")
    assert "resume_from_checkpoint" not in line and "overwrite_output_dir=true" in line, line
    assert status == 2
    # with a checkpoint to continue from, resuming is a safe suggestion
    path, out = make_config("interrupted", n_samples=32, save_every_samples=16)
    assert cli_main(["train", str(path), "stop_after_steps=3"]) == 0
    capsys.readouterr()
    assert cli_main(["train", str(path)]) == 2
    assert "resume_from_checkpoint=latest" in _one_line(capsys.readouterr().err, "hf-e2e-sae train")
