"""The documentation site builds strictly and works in a real browser (Debian's /usr/bin/chromium, headless,
driven by Playwright, as in tests/test_browser.py).

`mkdocs build --strict` fails on a broken link, a missing page or an API reference that does not resolve. The
built site is served on 127.0.0.1 (the search index is fetched, which file:// would not allow) and opened: the
home page and three others load without console errors, a nav link leads to its page, and a search shows
results. With DOCS_SCREENSHOT=PATH the home page's screenshot is also written there (docs/results/docs_home.png
was made so).
"""
from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from docs_reference import config_fields  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Build the site strictly, serve it on 127.0.0.1; yields `(site folder, base URL)`."""
    out = tmp_path_factory.mktemp("docs") / "site"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "NO_MKDOCS_2_WARNING": "1"}
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(out)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield out, f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def _open(browser, url: str):
    """A new page at `url`, recording console errors and uncaught exceptions in `page.errors`."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.errors = []
    page.on("console", lambda message: page.errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.goto(url, wait_until="networkidle")
    return page


def test_every_config_field_is_in_the_reference(site):
    """The config reference is generated from TrainConfig: every field (nested ones too) is on the page."""
    html = (site[0] / "reference" / "config" / "index.html").read_text()
    fields = config_fields()
    assert len(fields) > 50
    missing = [name for name, *_ in fields if f"<code>{name}</code>" not in html]
    assert not missing


def test_the_api_and_cli_references_are_rendered(site):
    api = (site[0] / "reference" / "api" / "index.html").read_text()
    for name in ("patching.patched_model.SAEPatchedModel", "patching.patched_model.SAEPatchedModel.from_pretrained",
                 "sae.model.SparseAutoencoder", "interop.registry.load_sae", "evaluation.metrics.evaluate"):
        assert f'id="hf_e2e_sae.{name}"' in api, name  # a rendered heading per object (mkdocstrings anchors)
    cli = (site[0] / "reference" / "cli" / "index.html").read_text()
    for command in ("train", "push", "convert", "browse", "geometry", "bench"):
        assert f"hf-e2e-sae {command}" in cli, command
    assert "--loss.sparsity.coeff" in cli  # train --help lists the config's fields


@pytest.mark.parametrize("path, heading", [
    ("", "hf_e2e_sae"),
    ("getting-started/", "Getting started"),
    ("tutorials/compare-methods/", "Local vs e2e vs e2e+ds on the tiny model"),
    ("reference/api/", "Python API"),
])
def test_pages_load_without_console_errors(site, browser, path, heading):
    page = _open(browser, site[1] + path)
    try:
        expect(page.locator("article h1").first).to_contain_text(heading)
        assert page.locator("nav.md-nav--primary a").count() > 20  # the whole nav is there
        if path == "":
            image = page.locator("article img").first  # the Pareto plot is shown, not a broken image
            assert image.evaluate("img => img.complete && img.naturalWidth > 0")
            screenshot = os.environ.get("DOCS_SCREENSHOT")
            if screenshot:
                page.screenshot(path=screenshot)
        assert page.errors == []
    finally:
        page.close()


def test_nav_link_leads_to_its_page(site, browser):
    page = _open(browser, site[1])
    try:
        page.locator("nav.md-nav--primary a", has_text="Sites and supported models").first.click()
        page.wait_for_load_state("networkidle")
        assert page.url.endswith("/concepts/sites/")
        expect(page.locator("article h1").first).to_contain_text("Supported models and sites")
        assert page.errors == []
    finally:
        page.close()


def test_search_finds_pages(site, browser):
    page = _open(browser, site[1])
    try:
        search = page.locator("input.md-search__input")
        search.click()
        search.press_sequentially("activation cache", delay=50)  # as typed: the search runs on each keystroke
        results = page.locator(".md-search-result__item")
        expect(results.first).to_be_visible(timeout=15_000)
        assert "activation cache" in page.locator(".md-search-result").inner_text().lower()
        assert page.errors == []
    finally:
        page.close()
