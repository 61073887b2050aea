"""The package's shape: no import cycles (between modules or between subpackages), layers import only
downwards, and no module grows past 400 lines (docs/ARCHITECTURE.md)."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hf_e2e_sae"
MAX_LINES = 400
# Each layer may import only the layers listed for it (and itself); `version` is importable from anywhere.
# Bottom to top; each layer may import the layers before it in LAYERS (and itself), except where EXCLUDED says
# otherwise; `version` is importable from anywhere.
LAYERS = ["sae", "patching", "evaluation", "config", "runs", "data", "pretraining", "training", "bench", "hub",
          "interop", "analysis", "cli"]
EXCLUDED = {"analysis": {"interop", "bench"}, "hub": {"bench", "pretraining"}, "interop": {"bench"}}
ALLOWED = {layer: set(LAYERS[:i]) - EXCLUDED.get(layer, set()) for i, layer in enumerate(LAYERS)}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path) -> set:
    """Every hf_e2e_sae module `name` imports, at module level or inside functions."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from pkg import submodule` imports the submodule; `from module import name` the module
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in MODULES else module for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in MODULES and t != name}
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _find_cycle(graph: dict):
    """A cycle as a list of nodes, or None (iterative DFS with colours)."""
    colour = {node: 0 for node in graph}
    for root in graph:
        if colour[root]:
            continue
        stack = [(root, iter(sorted(graph[root])))]
        path = [root]
        colour[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour.get(child, 2) == 1:
                return path[path.index(child):] + [child]
            elif colour.get(child) == 0:
                colour[child] = 1
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
    return None


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "root"


def test_no_import_cycle_between_modules():
    assert _find_cycle(GRAPH) is None, f"import cycle: {' -> '.join(_find_cycle(GRAPH))}"


def test_no_import_cycle_between_subpackages():
    layers: dict = {}
    for module, targets in GRAPH.items():
        if _layer(module) in ALLOWED:
            layers.setdefault(_layer(module), set()).update(_layer(t) for t in targets if _layer(t) in ALLOWED)
    for layer in layers:
        layers[layer].discard(layer)
    assert _find_cycle(layers) is None, f"subpackage cycle: {' -> '.join(_find_cycle(layers))}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) in ALLOWED))
def test_layers_import_only_downwards(module):
    layer = _layer(module)
    wrong = {t for t in GRAPH[module] if _layer(t) in ALLOWED and _layer(t) != layer and _layer(t) not in ALLOWED[layer]}
    assert not wrong, f"{module} ({layer}) imports {sorted(wrong)}; {layer} may import only {sorted(ALLOWED[layer])}"


def test_the_models_never_import_the_hub_layer():
    models = ["hf_e2e_sae.sae.model", "hf_e2e_sae.patching.patched_model"]
    assert all(not any(t.startswith("hf_e2e_sae.hub") for t in GRAPH[m]) for m in models)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_size(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module]} has {lines} lines (limit {MAX_LINES}): split it by idea"


def test_the_checker_sees_cycles():
    """The cycle finder is not vacuous: it finds a planted cycle and the real graph has edges."""
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None
    assert "hf_e2e_sae.sae.model" in GRAPH["hf_e2e_sae.patching.patched_model"]
    assert "hf_e2e_sae.sae.activations.registry" in GRAPH["hf_e2e_sae.sae.activations.relu"]
