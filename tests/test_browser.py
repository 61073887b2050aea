"""The feature browser: built from statistics of tiny models and opened from disk in a real headless Chromium
(Debian's /usr/bin/chromium driven by Playwright; .ci/run installs both). Also `hf-e2e-sae browse` on a saved run."""
from pathlib import Path

import pytest
import torch
import yaml
from playwright.sync_api import sync_playwright

from hf_e2e_sae import SAEConfig, SAEPatchedModel, SparseAutoencoder
from hf_e2e_sae.analysis.browse import browse_main, nearest_links
from hf_e2e_sae.cli import main as cli_main
from hf_e2e_sae.evaluation.browser import write_site
from hf_e2e_sae.evaluation.feature_stats import compute_feature_stats
from hf_e2e_sae.evaluation.logit_effects import direct_logit_effects

from tiny_models import HIDDEN, VOCAB, random_ids, tiny_model

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SITE = "blocks.1.resid_pre"
DICT = 160
DEAD = 3


class ByteTokenizer:
    """Token id -> a short text (with some characters HTML must escape)."""

    def decode(self, ids):
        return {5: "<b>&amp;", 6: "\n"}.get(ids[0], f" t{ids[0]}")


def stats_of(seed: int, base):
    torch.manual_seed(seed)
    sae = SparseAutoencoder(SAEConfig(d_in=HIDDEN, dict_size=DICT, site=SITE))
    with torch.no_grad():
        sae.encoder.bias[DEAD] = -1e3  # never fires
    model = SAEPatchedModel(base, sae)
    batches = [random_ids(batch=2, seq=16, seed=s) for s in range(4)]
    stats = compute_feature_stats(model, batches, top_n=5, window=(4, 2), tokenizer=ByteTokenizer(), progress=False)[SITE]
    stats.logits = direct_logit_effects(model, SITE, k=5)
    stats.vocab.update({i: ByteTokenizer().decode([i]) for i in range(VOCAB)})
    stats.label = f"SAE {'AB'[seed]}"
    stats.decoder = sae.dictionary.detach()
    model.unpatch()
    return stats


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tiny_model("gpt2")
    stats_list = [stats_of(0, base), stats_of(1, base)]
    out = tmp_path_factory.mktemp("site")
    write_site(stats_list, out, nearest=nearest_links(stats_list))
    return out, stats_list


@pytest.fixture(scope="module")
def page():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.console_problems = []
        page.on("console", lambda m: m.type in ("error", "warning") and page.console_problems.append(m.text))
        page.on("pageerror", lambda e: page.console_problems.append(str(e)))
        yield page
        browser.close()


def open_page(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=10_000)


def test_index_lists_features_search_filters_and_dead_features_are_marked(site, page):
    out, stats_list = site
    open_page(page, (out / "index.html").as_uri())
    panels = page.locator("main#lists > section")
    assert panels.count() == 2  # two SAEs at one site, side by side
    first = panels.nth(0)
    assert first.locator("tbody tr").count() == 100  # the first page shows 100 features
    assert f"{DICT} features" in first.locator(".info").text_content()
    dead = first.locator("tbody tr.dead")
    assert dead.count() >= 1 and dead.first.get_attribute("data-feature") == str(DEAD)
    assert "dead" in dead.first.locator(".badge").text_content()
    link = first.locator("tbody tr").nth(0).locator("a").first.get_attribute("href")
    assert link == "feature.html#sae=0&f=0"
    nearest = first.locator("tbody tr").nth(0).locator("td.nearest a")
    index, _ = nearest_links(stats_list)[(0, 1)]
    assert nearest.get_attribute("href") == f"feature.html#sae=1&f={int(index[0])}"

    first.locator("input.search").fill("42")
    assert [r.get_attribute("data-feature") for r in first.locator("tbody tr").all()] == ["42"]
    first.locator("input.search").fill("t7")  # a token substring: only features showing such a token
    rows = first.locator("tbody tr").all()
    assert 0 < len(rows) < DICT
    assert all("t7" in r.text_content() for r in rows)
    first.locator("input.search").fill("")
    first.locator("th", has_text="density").click()  # numeric columns sort descending first
    densities = [float(r.locator("td.num").first.text_content()) for r in first.locator("tbody tr").all()[:10]]
    assert densities == sorted(densities, reverse=True) and densities[0] > 0
    assert page.console_problems == []


def test_feature_page_highlights_contexts_in_proportion_and_links_the_other_sae(site, page):
    out, stats_list = site
    stats = stats_list[0]
    feature = int(stats.fire_count.argmax())
    open_page(page, (out / "feature.html").as_uri() + f"#sae=0&f={feature}")
    panel = page.locator("section.feature").first
    assert panel.get_attribute("data-feature") == str(feature)
    contexts = panel.locator(".ctx")
    assert contexts.count() == 5
    tops = panel.locator(".ctx .tok.max")
    acts = [float(t.get_attribute("data-act")) for t in tops.all()]
    torch.testing.assert_close(torch.tensor(acts), stats.top_values[feature], rtol=1e-3, atol=1e-3)
    # The strongest token is fully coloured; weaker ones proportionally less.
    first_color = tops.first.evaluate("e => getComputedStyle(e).backgroundColor")
    assert first_color == "rgb(255, 128, 0)"
    weaker = tops.last.evaluate("e => getComputedStyle(e).backgroundColor")
    alpha = float(weaker.rstrip(")").split(",")[-1])
    assert alpha == pytest.approx(acts[-1] / acts[0], abs=2e-3) and alpha < 1
    assert panel.locator("svg.hist rect").count() == stats.hist.shape[1]
    assert panel.locator(".logits li").count() == 10
    assert page.locator(".ctx b").count() == 0  # token text (e.g. "<b>&amp;") is shown as text, never parsed
    other = page.locator("section.feature").nth(1)  # the nearest feature of the other SAE, side by side
    index, _ = nearest_links(stats_list)[(0, 1)]
    assert other.get_attribute("data-sae") == "1" and other.get_attribute("data-feature") == str(int(index[feature]))
    page.locator("section.feature").first.locator("a", has_text=f"#{int(index[feature])}").first.click()
    page.wait_for_selector("body[data-ready='1']")
    assert page.locator("section.feature").first.get_attribute("data-sae") == "1"
    open_page(page, (out / "feature.html").as_uri() + f"#sae=0&f={DEAD}")
    assert "Never fired" in page.locator("section.feature").first.text_content()
    assert page.console_problems == []


def save_run(folder: Path) -> Path:
    """A saved run like the trainer's final/: an SAE of the built-in tiny model plus a train_config.yaml."""
    from transformers import AutoModelForCausalLM

    from hf_e2e_sae.patching.base_models import TINY_LM_DIR

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(TINY_LM_DIR))
    sae = SparseAutoencoder(SAEConfig(d_in=base.config.hidden_size, dict_size=200, site="blocks.2.resid_pre",
                                      base_model_name_or_path="builtin:tiny-shakespeare-gpt2"))
    SAEPatchedModel(base, sae).save_pretrained(folder)
    config = {"loss": {"preset": "local"}, "seed": 3,
              "data": {"path": "builtin:shakespeare", "split": "train", "eval_split": "test", "context_length": 64}}
    (folder / "train_config.yaml").write_text(yaml.safe_dump(config))
    return folder


def test_browse_command_on_a_saved_run_and_rebuild_from_stats(tmp_path):
    run = save_run(tmp_path / "run" / "final")
    assert cli_main(["browse", str(run), "--out", str(tmp_path / "site"), "--n-tokens", "640", "--top-n", "4"]) == 0
    data = tmp_path / "site" / "data"
    assert (tmp_path / "site" / "index.html").is_file() and len(list((data / "sae0").glob("shard-*.js"))) == 4
    meta = (data / "meta.js").read_text()
    assert '"n_tokens":640' in meta and "local (run)" in meta
    assert browse_main(["--from-stats", str(tmp_path / "site" / "stats"), "--out", str(tmp_path / "again")]) == 0
    for name in ("meta.js", "index-0.js", "vocab.js", "sae0/shard-3.js"):
        assert (tmp_path / "again" / "data" / name).read_text() == (data / name).read_text()
    # More tokens than the held-out plays hold: one clear error, nothing written.
    assert cli_main(["browse", str(run), "--out", str(tmp_path / "big"), "--n-tokens", "10000000"]) == 2
    assert not (tmp_path / "big").exists()


def test_browse_a_hub_repo(hub, hf_cache, hf_token, tmp_path):
    from hf_e2e_sae.hub.push import push_run_to_hub

    run = save_run(tmp_path / "run" / "final")
    repo_id = hub.unique_repo_id("browse")
    push_run_to_hub(run, repo_id)
    assert cli_main(["browse", repo_id, "--out", str(tmp_path / "site"), "--n-tokens", "320"]) == 0
    assert cli_main(["browse", str(run), "--out", str(tmp_path / "local"), "--n-tokens", "320"]) == 0
    for name in ("index-0.js", "sae0/shard-0.js"):  # the repo's train_config.yaml named the same held-out data
        assert (tmp_path / "site" / "data" / name).read_text() == (tmp_path / "local" / "data" / name).read_text()
