"""Screenshots of a feature-browser site (for docs/browser/): the list page, a search, and a feature page.

    hf-e2e-sae browse outputs/tiny-e2e/final outputs/geo/local-s1/final --out outputs/browse-compare
    python examples/browser_screenshots.py outputs/browse-compare docs/browser [--feature 7]

Needs Debian's chromium (/usr/bin/chromium) and `pip install playwright` (never `playwright install`).
"""
import argparse
from pathlib import Path

from playwright.sync_api import sync_playwright

ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("site")
    parser.add_argument("out")
    parser.add_argument("--feature", type=int, default=None, help="feature of the first SAE to show (default: densest < 5%%)")
    parser.add_argument("--search", default="love")
    args = parser.parse_args()
    site, out = Path(args.site).resolve(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 950})
        page.goto((site / "index.html").as_uri())
        page.wait_for_selector("body[data-ready='1']")
        page.screenshot(path=str(out / "index.png"))
        page.locator("input.search").first.fill(args.search)
        page.screenshot(path=str(out / "search.png"))
        feature = args.feature
        if feature is None:  # a feature that fires, but not on everything
            feature = page.evaluate("BROWSER_INDEX[0].filter(r => r[1] > 0.002 && r[1] < 0.05)"
                                    ".sort((a, b) => b[3] - a[3])[0][0]")
        page.goto((site / "feature.html").as_uri() + f"#sae=0&f={feature}")
        page.wait_for_selector("body[data-ready='1']")
        page.screenshot(path=str(out / "feature.png"), full_page=True)
        browser.close()
    print(f"wrote {out}/index.png, search.png, feature.png (feature {feature})")


if __name__ == "__main__":
    main()
