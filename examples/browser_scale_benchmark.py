"""How the feature browser scales to the paper's dictionary size (46,080 features), without a model.

Builds synthetic `FeatureStats` (random sparse statistics, GPT-2-sized vocabulary) for 46,080 features, times
`write_site`, then opens the list page and a feature page in headless Chromium (Debian's, via Playwright) and
times them until ready. Results go to docs/results/browser/scale.json.

    python examples/browser_scale_benchmark.py [--dict-size 46080] [--out outputs/browse-scale]
"""
import argparse
import json
import time
from pathlib import Path

import torch
from playwright.sync_api import sync_playwright

from hf_e2e_sae.evaluation.browser import write_site
from hf_e2e_sae.evaluation.feature_stats import HIST_BINS, FeatureStats

ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def synthetic_stats(dict_size: int, n_tokens: int = 131_072, seq_len: int = 1024, top_n: int = 20,
                    vocab: int = 50_257) -> FeatureStats:
    g = torch.Generator().manual_seed(0)
    fire = torch.randint(0, 2000, (dict_size,), generator=g)
    fire[: dict_size // 10] = 0  # 10% dead
    top_values = torch.rand(dict_size, top_n, generator=g).sort(dim=1, descending=True).values * (fire > 0).unsqueeze(1)
    top_index = torch.where(top_values > 0, torch.randint(0, n_tokens, (dict_size, top_n), generator=g), -1)
    k = 10
    return FeatureStats(
        site="blocks.6.resid_pre", n_tokens=n_tokens, seq_len=seq_len, window=(12, 4), fire_count=fire,
        act_sum=fire.double() * 0.5, max_act=top_values[:, 0].clone(),
        hist=torch.randint(0, 50, (dict_size, HIST_BINS), generator=g) * (fire > 0).unsqueeze(1),
        top_values=top_values, top_index=top_index,
        top_window=torch.rand(dict_size, top_n, 17, generator=g) * (top_values > 0).unsqueeze(-1),
        tokens=torch.randint(0, vocab, (n_tokens,), generator=g, dtype=torch.int32),
        vocab={i: f" tok{i}" for i in range(vocab)}, label="synthetic",
        logits={"logit_top_ids": torch.randint(0, vocab, (dict_size, k), generator=g, dtype=torch.int32),
                "logit_top_values": torch.rand(dict_size, k, generator=g),
                "logit_bottom_ids": torch.randint(0, vocab, (dict_size, k), generator=g, dtype=torch.int32),
                "logit_bottom_values": -torch.rand(dict_size, k, generator=g)})


def time_page(page, url: str) -> float:
    start = time.perf_counter()
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=60_000)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dict-size", type=int, default=46_080)
    parser.add_argument("--out", default="outputs/browse-scale")
    parser.add_argument("--results", default="docs/results/browser/scale.json")
    args = parser.parse_args()
    stats = synthetic_stats(args.dict_size)
    start = time.perf_counter()
    index = write_site([stats], args.out)
    write_s = time.perf_counter() - start
    data = Path(args.out) / "data"
    sizes = {"index_js_mb": (data / "index-0.js").stat().st_size / 2**20,
             "vocab_js_mb": (data / "vocab.js").stat().st_size / 2**20,
             "shard_js_kb_mean": sum(p.stat().st_size for p in (data / "sae0").glob("*.js")) / 2**10
             / len(list((data / "sae0").glob("*.js")))}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page()
        list_s = time_page(page, index.resolve().as_uri())
        start = time.perf_counter()
        page.locator("input.search").fill("tok123")
        page.locator("tbody tr").first.wait_for()
        search_s = time.perf_counter() - start
        feature_s = time_page(page, (index.parent / "feature.html").resolve().as_uri() + f"#sae=0&f={args.dict_size - 1}")
        browser.close()
    result = {"dict_size": args.dict_size, "write_site_s": round(write_s, 1), "list_page_ready_s": round(list_s, 2),
              "search_s": round(search_s, 2), "feature_page_ready_s": round(feature_s, 2),
              **{k: round(v, 2) for k, v in sizes.items()}}
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
