"""YAML with limits: configs are small, so a document that nests too deep or whose aliases expand too far is refused
before it is built (a "billion laughs" of nested aliases fits in under 1 KB; 50,000 nested brackets overflow the
recursive composer).

    data = safe_load(text)       # yaml.safe_load, or YAMLLimitError (a yaml.YAMLError) in one line

The document is first read as a stream of parser events (no recursion, no objects built), counting the nodes the
loaded object would hold once every alias is expanded, the nesting depth, and aliases to a collection still open
(a recursive structure). Only then does `yaml.safe_load` build it.
"""
from __future__ import annotations

from typing import Any

import yaml
from yaml.events import (AliasEvent, CollectionEndEvent, CollectionStartEvent, NodeEvent, ScalarEvent)

MAX_DEPTH = 64
"""Deepest nesting of lists / mappings accepted (a training config nests 3 levels)."""
MAX_NODES = 100_000
"""Most nodes (scalars, lists, mappings) the loaded document may hold with every alias expanded."""

__all__ = ["MAX_DEPTH", "MAX_NODES", "YAMLLimitError", "check_limits", "safe_load"]


class YAMLLimitError(yaml.YAMLError):
    """A YAML document beyond `MAX_DEPTH` or `MAX_NODES`, or with a recursive alias."""


def check_limits(text: str, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> None:
    """Raise `YAMLLimitError` (one line) if loading `text` would nest deeper than `max_depth` or build more than
    `max_nodes` nodes with aliases expanded; `yaml.YAMLError` for a syntax error."""
    stack: list = [[None, 0]]  # per open collection: [anchor, expanded nodes inside it]
    sizes: dict = {}  # anchor -> expanded size of its node
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, CollectionStartEvent):
            stack.append([event.anchor, 0])
            if len(stack) - 1 > max_depth:
                raise YAMLLimitError(f"the document nests deeper than {max_depth} levels (line {event.start_mark.line + 1})")
            continue
        if isinstance(event, CollectionEndEvent):
            anchor, inside = stack.pop()
            size = inside + 1
        elif isinstance(event, AliasEvent):
            if any(frame[0] == event.anchor for frame in stack):
                raise YAMLLimitError(f"alias *{event.anchor} refers to a collection that contains it (a recursive "
                                     f"structure, line {event.start_mark.line + 1})")
            anchor, size = None, sizes.get(event.anchor, 1)
        elif isinstance(event, (ScalarEvent, NodeEvent)):
            anchor, size = event.anchor, 1
        else:
            continue
        if anchor is not None:
            sizes[anchor] = size
        stack[-1][1] += size
        if stack[-1][1] > max_nodes:
            raise YAMLLimitError(f"its aliases expand to more than {max_nodes} nodes (line "
                                 f"{event.start_mark.line + 1}); a config needs no alias expansion that large")


def safe_load(text: str) -> Any:
    """`yaml.safe_load(text)` after `check_limits(text)`."""
    check_limits(text)
    return yaml.safe_load(text)
