"""Every Python code block in the README and the docs runs as written.

Convention: a block fenced as ```python is executed; one fenced as ```python notest (it needs a GPU, the Hub or
files the reader has) is only compiled. The blocks of one page run in order in one namespace (a page may build
on its earlier blocks), in a fresh working directory, so that pages do not depend on each other. Registries a
page extends (a model family, an activation, a loss term, a format) are restored afterwards.
"""
from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```python( notest)?[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def python_blocks(path: Path) -> list[tuple[str, bool, int]]:
    """`(source, runs, first line)` of each Python block of a Markdown file."""
    text = path.read_text()
    return [(m.group(2), m.group(1) is None, text.count("\n", 0, m.start()) + 2) for m in FENCE.finditer(text)]


PAGES = [p for p in markdown_files() if python_blocks(p)]


@contextlib.contextmanager
def registries_restored():
    """Undo what a page registers, so that later tests see the library's own registries."""
    from hf_e2e_sae.interop.registry import FORMATS
    from hf_e2e_sae.patching.architectures import ARCHITECTURES
    from hf_e2e_sae.sae.activations.registry import ACTIVATION_SPECS, ACTIVATIONS
    from hf_e2e_sae.training.loss_terms import LOSS_TERMS

    saved = [(registry, dict(registry)) for registry in (FORMATS, ARCHITECTURES, ACTIVATIONS, ACTIVATION_SPECS,
                                                          LOSS_TERMS)]
    try:
        yield
    finally:
        for registry, copy in saved:
            registry.clear()
            registry.update(copy)


def test_the_convention_is_parsed(tmp_path):
    """The fence parser sees runnable and notest blocks, and nothing that is not a Python block."""
    sample = tmp_path / "sample.md"
    sample.write_text("# t\n\n```python\nx = 1\n```\n\n```python notest\nimport nothing_here\n```\n\n```bash\nls\n```\n")
    blocks = python_blocks(sample)
    assert [(src, runs) for src, runs, _ in blocks] == [("x = 1\n", True), ("import nothing_here\n", False)]
    assert blocks[0][2] == 4  # the block's first line in the file, for tracebacks


def test_the_docs_have_runnable_blocks():
    """The pages that teach the API keep runnable examples (a page reduced to notest blocks fails here)."""
    runnable = {p.relative_to(REPO).as_posix() for p in PAGES if any(runs for _, runs, _ in python_blocks(p))}
    for page in ("README.md", "docs/getting-started.md", "docs/tutorials/compare-methods.md",
                 "docs/tutorials/finetune.md", "docs/tutorials/features.md", "docs/tutorials/hub.md",
                 "docs/guides/extending.md", "docs/reference/config.md"):
        assert page in runnable, page


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(REPO).as_posix() for p in PAGES])
def test_page_code_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    name = page.relative_to(REPO).as_posix()
    scope: dict = {"__name__": "__docs__"}
    with registries_restored():
        for source, runs, line in python_blocks(page):
            code = compile("\n" * (line - 1) + source, name, "exec")  # tracebacks point at the Markdown line
            if runs:
                exec(code, scope)
    # The runnable blocks left what they promise: outputs that a reader would look at next.
    if name == "docs/getting-started.md":
        assert (tmp_path / "outputs" / "first-run" / "final" / "model.safetensors").is_file()
        assert scope["metrics"]["n_tokens"] > 0
    if name == "docs/tutorials/compare-methods.md":
        assert set(scope["metrics"]) == {"local", "e2e", "e2e+ds"}
        assert (tmp_path / "pareto_points.png").stat().st_size > 0
    if name == "docs/tutorials/finetune.md":
        assert (tmp_path / "finetuned-saelens" / "cfg.json").is_file()
    if name == "docs/tutorials/features.md":
        assert (tmp_path / "browse" / "index.html").is_file()
