"""Configs from a YAML file plus command-line overrides, validated by pydantic.

Config classes are pydantic models (subclasses of `ConfigModel`): types, coercion, choices and cross-field
checks are pydantic's, and the docstring under each field is its description (`use_attribute_docstrings`),
shown by `--help`. Models are frozen: a config is validated once and never mutated at run time. This module
adds only what pydantic does not do: the override syntax, nearest-name suggestions for unknown keys,
one-line error messages and the help text.

    cfg = load_config(TrainConfig, "run.yaml", ["--loss.sparsity.coeff", "3", "lr=1e-3"])
"""
from __future__ import annotations

import difflib
import json
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Iterator, Optional, TypeVar, Union

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from .safe_yaml import YAMLLimitError, safe_load

__all__ = ["ConfigError", "ConfigModel", "format_help", "is_help_requested", "load_config", "parse_overrides",
           "save_yaml", "to_dict"]

T = TypeVar("T", bound=BaseModel)
_UNIONS = (Union, types.UnionType)


class ConfigError(ValueError):
    """Invalid configuration: unknown key, wrong type, bad file or failed check. Its message is one line."""


class ConfigModel(BaseModel):
    """Base of every config: unknown keys are errors, field docstrings are descriptions, instances are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


# ---------------------------------------------------------------- the model's fields, by dotted path
def _model_in(annotation: Any) -> Optional[type]:
    """The config model behind `annotation` or `Optional[annotation]`, else None."""
    if typing.get_origin(annotation) in _UNIONS:
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = options[0] if len(options) == 1 else None
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def iter_fields(cls: type, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """`(dotted name, FieldInfo)` of every field, depth first (nested models and their fields)."""
    for name, info in cls.model_fields.items():
        yield prefix + name, info
        sub = _model_in(info.annotation)
        if sub is not None:
            yield from iter_fields(sub, f"{prefix}{name}.")


def _annotation_at(cls: type, path: list) -> Any:
    for i, key in enumerate(path):
        info = cls.model_fields.get(key)
        if info is None:
            return None
        if i == len(path) - 1:
            return info.annotation
        cls = _model_in(info.annotation)
        if cls is None:
            return None
    return None


def _accepts(annotation: Any, kinds: tuple) -> bool:
    """Whether a str/list/... value of one of `kinds` is a valid form of `annotation` (unions included)."""
    if annotation in kinds or typing.get_origin(annotation) in kinds:
        return True
    if typing.get_origin(annotation) is typing.Literal:
        return all(isinstance(a, str) for a in typing.get_args(annotation)) and str in kinds
    return typing.get_origin(annotation) in _UNIONS and any(_accepts(a, kinds) for a in typing.get_args(annotation))


# ---------------------------------------------------------------- command-line overrides
def _cli_value(key: str, raw: Optional[str], annotation: Any) -> Any:
    """A command-line value read for its field: text stays text for str fields, `a,b` is a list for list fields,
    anything else is read as YAML (`3`, `1e-3`, `true`, `null`, `[1, 2]`, `{a: 1}`)."""
    if raw is None:  # a bare --flag
        if annotation is not None and not _accepts(annotation, (bool,)):
            raise ConfigError(f"'--{key}' was given without a value; expected {_type_name(annotation)}")
        return True
    stripped = raw.strip()
    if stripped.lower() in ("null", "none", "~") and (annotation is None or _accepts(annotation, (type(None),))):
        return None
    if stripped[:1] in ("[", "{"):
        return _override_yaml(key, raw)
    if annotation is not None and _accepts(annotation, (list, tuple)) and not _accepts(annotation, (str,)):
        return [part.strip() for part in raw.split(",") if part.strip()]
    if annotation is not None and _accepts(annotation, (str,)):
        return raw
    try:
        return safe_load(raw) if stripped else raw
    except YAMLLimitError as e:
        raise ConfigError(f"'--{key}': {e}") from None
    except yaml.YAMLError:
        return raw


def _override_yaml(key: str, raw: str) -> Any:
    """A `[...]` / `{...}` override value read as YAML; a syntax error is a one-line `ConfigError` naming the key."""
    try:
        return safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"'--{key}': cannot read {raw!r} as YAML ({' '.join(str(e).split())})") from None


def _split_tokens(args: list) -> Iterator[tuple[str, Optional[str], str]]:
    """`(dotted key, raw value or None, token)` for `--a.b v`, `--a.b=v` and `a.b=v`."""
    i = 0
    while i < len(args):
        token, i = args[i], i + 1
        if token.startswith("--") and "=" in token:
            key, raw = token[2:].split("=", 1)
        elif token.startswith("--"):
            key, raw = token[2:], None
            if i < len(args) and not args[i].startswith("--"):
                raw, i = args[i], i + 1
        elif "=" in token and not token.startswith("-"):
            key, raw = token.split("=", 1)
        else:
            raise ConfigError(f"Unexpected argument {token!r}; use '--key value', '--key=value' or 'key=value'")
        if not key or not all(key.split(".")):
            raise ConfigError(f"Invalid override key {key!r} in {token!r}")
        yield key, raw, token


def parse_overrides(args: list, cls: Optional[type] = None) -> dict:
    """Turn override tokens into a nested dict; later overrides win, siblings merge.

    With `cls`, each value is read for the field it sets (see `_cli_value`); without, as YAML.
    """
    tree: dict = {}
    for key, raw, _token in _split_tokens(list(args)):
        parts = key.split(".")
        annotation = _annotation_at(cls, parts) if cls is not None else None
        node = tree
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = _cli_value(key, raw, annotation)
    return tree


def _deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        both = isinstance(merged.get(key), dict) and isinstance(value, dict)
        merged[key] = _deep_merge(merged[key], value) if both else value
    return merged


# ---------------------------------------------------------------- errors
def _dotted(loc: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(loc))


def _unknown_key(cls: type, loc: tuple, value: Any) -> str:
    path = [str(p) for p in loc]
    while isinstance(value, dict) and len(value) == 1:  # report the full dotted key the user wrote
        (child, value), = value.items()
        path.append(str(child))
    valid = [name for name, _ in iter_fields(cls)]
    parent = ".".join(path[:len(loc) - 1])
    siblings = [n for n in valid if "." in n and n.rsplit(".", 1)[0] == parent] if parent else \
        [n for n in valid if "." not in n]
    suffix = ".".join(path[len(loc):])
    guesses = []
    unknown = path[len(loc) - 1]
    leaves = {name.rsplit(".", 1)[-1]: name for name in siblings}
    for close in difflib.get_close_matches(unknown, list(leaves), n=3):
        candidate = f"{leaves[close]}.{suffix}" if suffix else leaves[close]
        if candidate in valid:
            guesses.append(candidate)
    for name in valid:  # also look deeper: `chunk_token` -> `loss.kl.chunk_tokens`
        if "." in name and not suffix and difflib.get_close_matches(unknown, [name.rsplit(".", 1)[1]], cutoff=0.8):
            guesses.append(name)
    message = f"Unknown config key '{'.'.join(path)}'"
    if guesses:
        return message + "; did you mean " + " or ".join(f"'{g}'" for g in dict.fromkeys(guesses)) + "?"
    names = [n.rsplit(".", 1)[-1] for n in siblings]
    return message + f"; valid keys{f' under {parent!r}' if parent else ''}: {', '.join(names)}"


def _describe(cls: type, error: dict) -> str:
    loc, kind, value = tuple(error["loc"]), error["type"], error.get("input")
    where = _dotted(loc)
    if kind == "extra_forbidden":
        return _unknown_key(cls, loc, value)
    if kind == "value_error":
        message = str(error.get("ctx", {}).get("error", error["msg"]))
        return f"Invalid config '{where}': {message}" if where else message
    if kind == "literal_error":
        choices = typing.get_args(_annotation_at(cls, [str(p) for p in loc]) or typing.Literal[None])
        expected = ", ".join(map(repr, choices)) if choices != (None,) else error["ctx"]["expected"]
        return f"Invalid value for '{where}': {value!r}; expected one of: {expected}"
    if kind == "missing":
        return f"Missing required config field '{where}'"
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    return f"Invalid value for '{where}': {error['msg'].lower()}, got {shown}"


def build(cls: type[T], data: Any) -> T:
    """Validate `data` into `cls`, turning pydantic's errors into one-line `ConfigError`s."""
    if not isinstance(data, dict):
        raise ConfigError(f"Expected a mapping for {cls.__name__}, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as error:
        raise ConfigError("; ".join(_describe(cls, e) for e in error.errors()[:3])) from None


def load_config(cls: type[T], path: Union[str, Path, None] = None, overrides: Optional[list] = None) -> T:
    """Load `cls` from an optional YAML file deep-merged with command-line `overrides`."""
    data: dict = {}
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"Config file not found: {file}")
        try:
            loaded = safe_load(file.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"Could not parse YAML config {file}: {' '.join(str(e).split())}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"Config file {file} must hold a mapping at top level, got {type(loaded).__name__}")
        data = loaded or {}
    if overrides:
        data = _deep_merge(data, parse_overrides(list(overrides), cls))
    return build(cls, data)


# ---------------------------------------------------------------- writing and help
def to_dict(config: BaseModel) -> dict:
    """Plain, YAML/JSON-safe nested dict of a config."""
    return config.model_dump(mode="json")


def save_yaml(config: BaseModel, path: Union[str, Path], redact=None) -> Path:
    """Write the config as YAML (creating parent folders); `load_config` reads it back equal.

    `redact` (dict -> dict) is applied to the plain dict before writing (e.g. to hide credentials).
    """
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    data = to_dict(config) if redact is None else redact(to_dict(config))
    file.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return file


def _type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "None"
    if origin is typing.Literal:
        return "{" + ",".join(map(str, args)) + "}"
    if origin in _UNIONS:
        return " | ".join(_type_name(a) for a in args)
    if origin is not None and args:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(_type_name(a) for a in args)}]"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def format_help(cls: type, prog: str, defaults: Optional[BaseModel] = None, preamble: str = "") -> str:
    """`--help`: every dotted field with its type, the default that applies, and its description.

    `defaults` is the config whose values are shown (default: `cls()`, the values a run really starts from).
    """
    # The defaults are valid by construction: building them without the cross-field checks gives the same values
    # (tests/test_cli_launch.py) and keeps `--help` from loading torch (the activation registry).
    values = to_dict(defaults if defaults is not None else cls.model_construct())
    lines = [f"usage: {prog} [-h] [--KEY VALUE | --KEY=VALUE | KEY=VALUE ...]", ""]
    if preamble:
        lines += [preamble, ""]
    lines += ["Nested fields use dotted keys; lists accept 'a,b' or '[a, b]'; null means None.", "", "options:",
              "  -h, --help", "      Show this help message and exit."]
    for dotted, info in iter_fields(cls):
        value: Any = values
        for part in dotted.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if _model_in(info.annotation) is not None:
            lines += ["", f"  {dotted}:"]
        else:
            lines.append(f"  --{dotted} {_type_name(info.annotation)}  (default: {json.dumps(value)})")
        if info.description:
            lines += textwrap.indent(info.description, " " * 6).splitlines()
    return "\n".join(lines) + "\n"


def is_help_requested(args: list) -> bool:
    """True if `-h`/`--help` appears as an option (not as the value of a preceding `--key`)."""
    i = 0
    while i < len(args):
        if args[i] in ("-h", "--help"):
            return True
        takes_value = args[i].startswith("--") and "=" not in args[i]
        i += 2 if takes_value and i + 1 < len(args) and not args[i + 1].startswith("--") else 1
    return False
