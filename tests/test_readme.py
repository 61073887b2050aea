"""The README's code runs as written."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _python_block_after(heading: str) -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_quickstart_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # any directory: the tiny model ships in the package
    scope: dict = {}
    exec(compile(_python_block_after("## Quickstart"), "README-quickstart", "exec"), scope)
    assert scope["metrics"]["n_tokens"] == scope["ids"].numel()
    assert (tmp_path / "outputs" / "my-sae" / "model.safetensors").exists()
    assert all(p.grad is None for p in scope["base"].parameters())
    assert scope["latents"].shape[-1] == 1024


def test_registering_a_new_family_is_one_call():
    """The README's OLMo example: one registry entry, then every site kind works exactly."""
    import torch
    from transformers import AutoModelForCausalLM, OlmoConfig

    from hf_e2e_sae import ArchitectureSpec, SAEPatchedModel, register_architecture
    from hf_e2e_sae.patching.architectures import ARCHITECTURES

    from test_patching import identity_sae

    snippet = re.search(r"`(register_architecture\(\"olmo\".*?\))`", (REPO / "README.md").read_text(), re.S).group(1)
    torch.manual_seed(0)
    config = OlmoConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, pad_token_id=0, bos_token_id=0, eos_token_id=1)
    config._attn_implementation = "eager"
    base = AutoModelForCausalLM.from_config(config).eval()
    ids = torch.randint(0, 64, (2, 8))
    expected = base(ids, use_cache=False).logits  # as SAEPatchedModel runs it (OLMo's cache path rounds differently)
    try:
        exec(" ".join(snippet.split()), {"register_architecture": register_architecture, "ArchitectureSpec": ArchitectureSpec})
        for kind in ("resid_pre", "attn_out", "mlp_out", "resid_post"):
            model = SAEPatchedModel(base, identity_sae(f"blocks.1.{kind}", d_in=32))
            torch.testing.assert_close(model(ids).logits, expected, rtol=0, atol=1e-5)
            with model.saes_disabled():
                torch.testing.assert_close(model(ids).logits, expected, rtol=0, atol=0)
            if kind == "resid_pre":  # the hooked modules are the residual contributions
                with model.saes_disabled():
                    acts = model(ids, cache_sites=["blocks.0.resid_pre", "blocks.0.attn_out", "blocks.0.mlp_out",
                                                   "blocks.0.resid_post"]).cached_activations
                update = acts["blocks.0.resid_post"] - acts["blocks.0.resid_pre"]
                torch.testing.assert_close(acts["blocks.0.attn_out"] + acts["blocks.0.mlp_out"], update,
                                           rtol=1e-4, atol=1e-5)
            model.unpatch()
    finally:
        ARCHITECTURES.pop("olmo", None)


def test_readme_is_short_and_its_links_resolve():
    """The README is the front page (details live in docs/); every relative link and image in it exists."""
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [t.split("#")[0] for t in targets if not t.startswith(("http://", "https://", "#"))]
    assert "docs/results/ce_vs_l0.png" in local and "docs/index.md" in local
    assert [t for t in local if not (REPO / t).exists()] == []


def test_ci_runs_the_readmes_test_command():
    """.ci/run runs the README's test command (on a fresh clone) and builds the docs site strictly."""
    readme, ci = (REPO / "README.md").read_text(), (REPO / ".ci" / "run").read_text()
    assert "python -m pytest tests -q" in readme and "python -m pytest tests -q" in ci
    assert '-e ".[test,examples]"' in readme and '-e ".[test,examples]"' in ci
    assert "mkdocs build --strict" in ci
