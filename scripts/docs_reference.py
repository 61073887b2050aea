"""Generated reference pages for the docs site (a mkdocs hook, see mkdocs.yml `hooks:`).

Two pages are rendered from the code at build time, so they cannot drift from it:

* `reference/config.md`: every `TrainConfig` field (dotted, nested models included) with its type, default and
  docstring, replacing the marker `<!-- generated: config-fields -->`;
* `reference/cli.md`: every `hf-e2e-sae` command's `--help`, replacing `<!-- generated: cli-help -->`.

It also renders the fences ```` ```python notest ```` (blocks that tests/test_docs_code.py only compiles) as
plain Python blocks: Markdown would otherwise not recognise them as code.

`python scripts/docs_reference.py` prints both (what the hook inserts).
"""
from __future__ import annotations

import contextlib
import html
import io
import json
import re
from typing import Any

CONFIG_MARKER = "<!-- generated: config-fields -->"
CLI_MARKER = "<!-- generated: cli-help -->"
NOTEST_FENCE = re.compile(r"^(\s*)```python notest[ \t]*$", re.M)


def _cell(text: str) -> str:
    """Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _code_cell(text: str) -> str:
    """A `<code>` table cell (an escaped pipe would show its backslash inside backticks)."""
    return "<code>" + html.escape(" ".join(str(text).split())).replace("|", "&#124;") + "</code>"


def _value_at(values: dict, dotted: str) -> Any:
    value: Any = values
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def config_fields() -> list[tuple[str, str, str, str]]:
    """`(dotted name, type, default, description)` of every TrainConfig field, nested fields included."""
    from hf_e2e_sae.config.arguments import _model_in, _type_name, iter_fields, to_dict
    from hf_e2e_sae.training.config import TrainConfig

    defaults = to_dict(TrainConfig())
    rows = []
    for dotted, info in iter_fields(TrainConfig):
        nested = _model_in(info.annotation) is not None
        type_name = "section" if nested else _type_name(info.annotation)
        default = "" if nested else json.dumps(_value_at(defaults, dotted))
        rows.append((dotted, type_name, default, info.description or ""))
    return rows


def config_reference_markdown() -> str:
    """The table of every TrainConfig field, as Markdown."""
    lines = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for dotted, type_name, default, description in config_fields():
        name = f"**`{dotted}`**" if type_name == "section" else f"`{dotted}`"
        default_cell = _code_cell(default) if default else ""
        lines.append(f"| {name} | {_code_cell(type_name)} | {default_cell} | {_cell(description)} |")
    return "\n".join(lines) + "\n"


def command_help(command: str) -> str:
    """What `hf-e2e-sae COMMAND --help` prints (`""` for the top-level usage)."""
    from hf_e2e_sae.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main([command, "--help"] if command else [])
    return out.getvalue()


def cli_reference_markdown() -> str:
    """Every command's `--help` as Markdown sections."""
    from hf_e2e_sae.cli import COMMANDS

    parts = ["## `hf-e2e-sae`", "", "```text", command_help("").rstrip(), "```", ""]
    for command in COMMANDS:
        parts += [f"## `hf-e2e-sae {command}`", "", "```text", command_help(command).rstrip(), "```", ""]
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:  # mkdocs hook
    """Fill the generated sections of the reference pages; notest fences become Python fences."""
    markdown = NOTEST_FENCE.sub(r"\1```python", markdown)
    if CONFIG_MARKER in markdown:
        markdown = markdown.replace(CONFIG_MARKER, config_reference_markdown())
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference_markdown())
    return markdown


if __name__ == "__main__":
    print(config_reference_markdown())
    print(cli_reference_markdown())
