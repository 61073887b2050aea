"""Generic configuration system for (nested) dataclasses.

Configs are plain ``@dataclass`` classes with a docstring literal directly under each field
(EleutherAI ``sparsify`` style).  This module builds them from a YAML file plus command-line
overrides with type coercion and helpful errors, turns them back into YAML-safe dicts and
renders ``--help`` text from the field docstrings.  It never mutates a config it built::

    cfg = load_config(TrainConfig, "run.yaml", ["--loss.sparsity.coeff", "3", "lr=1e-3"])
"""

from __future__ import annotations

import ast
import collections.abc as abc
import dataclasses
import difflib
import inspect
import json
import textwrap
import types
from functools import lru_cache
from pathlib import Path, PurePath
from typing import Any, Iterator, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

__all__ = ["ConfigError", "field_docstrings", "from_dict", "parse_overrides", "load_config", "to_dict",
           "save_yaml", "format_help", "is_help_requested"]

T = TypeVar("T")
_NONE = type(None)
_UNIONS: tuple = (Union, types.UnionType) if hasattr(types, "UnionType") else (Union,)
_TRUE, _FALSE, _NULL = {"true", "yes", "on", "y", "1"}, {"false", "no", "off", "n", "0"}, {"null", "none", "~"}
_SEQ = {list: list, tuple: tuple, set: set, frozenset: frozenset, abc.Sequence: list,
        abc.MutableSequence: list, abc.Set: set, abc.MutableSet: set}
_MAP = (dict, abc.Mapping, abc.MutableMapping)


class ConfigError(ValueError):
    """Invalid configuration: unknown key, wrong type, missing field, bad file or failed check."""


@dataclasses.dataclass(frozen=True)
class _CliValue:
    """A scalar command-line value: the raw text plus its YAML reading (``flag``: given bare)."""

    raw: str
    parsed: Any
    flag: bool = False


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in _NULL)


def _plain(value: Any) -> Any:
    """Replace command-line wrappers by their YAML reading, recursively."""
    if isinstance(value, _CliValue):
        return value.parsed
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, list) else value


def _show(value: Any) -> str:
    text = repr(value.raw if isinstance(value, _CliValue) else _plain(value))
    return text if len(text) <= 80 else text[:77] + "..."


def _type_name(tp: Any) -> str:
    """Readable name of a type annotation, e.g. ``list[int]``, ``str | None``, ``Literal['a']``."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is _NONE:
        return "None"
    if origin is Literal:
        return f"Literal[{', '.join(map(repr, args))}]"
    if origin in _UNIONS:
        return " | ".join(_type_name(a) for a in args)
    if origin is not None and args:
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{getattr(origin, '__name__', origin)}[{inner}]"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _type_error(tp: Any, value: Any, path: str) -> ConfigError:
    return ConfigError(f"Invalid value for '{path}': expected {_type_name(tp)}, got {_show(value)}")


@lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    try:
        return get_type_hints(cls)
    except Exception as e:  # NameError / TypeError from unresolvable or 3.10+-only annotations
        raise TypeError(f"Cannot resolve the annotations of {cls.__qualname__}: {e}. Define config dataclasses "
                        "at module level and, for Python 3.9, write Optional[X] instead of X | None.") from e


@lru_cache(maxsize=None)
def _own_docstrings(cls: type) -> dict[str, str]:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):  # no source (REPL, exec, compiled) or odd indentation
        return {}
    node = next((n for n in tree.body if isinstance(n, ast.ClassDef)), None)
    docs: dict[str, str] = {}
    for stmt, nxt in zip(node.body, node.body[1:]) if node else ():
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[stmt.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def field_docstrings(cls: type) -> dict[str, str]:
    """Map field name -> the docstring written directly under it (base classes included; cached)."""
    return {name: doc for klass in reversed(cls.__mro__[:-1]) for name, doc in _own_docstrings(klass).items()}


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass behind ``tp`` or ``Optional[tp]``, else None."""
    if get_origin(tp) in _UNIONS:
        options = [a for a in get_args(tp) if a is not _NONE]
        tp = options[0] if len(options) == 1 else None
    return tp if _is_dataclass_type(tp) else None


def _walk(cls: type, prefix: str = "", seen: tuple = ()) -> Iterator[tuple[str, dataclasses.Field, Any, type]]:
    """Yield ``(dotted name, field, type, owner class)`` for every init field, depth first."""
    for f in dataclasses.fields(cls):
        if f.init:
            hint = _hints(cls)[f.name]
            yield _join(prefix, f.name), f, hint, cls
            sub = _dataclass_in(hint)
            if sub is not None and sub not in seen + (cls,):  # stop at self-referencing configs
                yield from _walk(sub, _join(prefix, f.name), seen + (cls,))


def _coerce(tp: Any, value: Any, path: str) -> Any:
    """Convert ``value`` to the annotation ``tp`` or raise ConfigError naming ``path``."""
    origin, args = get_origin(tp), get_args(tp)
    cli = value if isinstance(value, _CliValue) else None
    plain = _plain(value)
    if cli and cli.flag and not (tp in (bool, Any) or (origin in _UNIONS and bool in args)):
        raise ConfigError(f"'--{path}' was given without a value; expected {_type_name(tp)}")
    if tp is Any:
        return plain
    if origin in _UNIONS:
        if _NONE in args and _is_null(plain):
            return None
        options = [a for a in args if a is not _NONE]
        exact = [a for a in options if type(plain) is (get_origin(a) or a)]
        for option in exact + options:
            try:
                return _coerce(option, value, path)
            except ConfigError:
                if len(options) == 1:
                    raise
        raise _type_error(tp, value, path)
    if origin is Literal:
        for cand in [plain, cli.raw] if cli else [plain]:
            for choice in args:
                if (type(cand) is type(choice) and cand == choice) or (isinstance(cand, str) and cand == str(choice)):
                    return choice
        choices = ", ".join(map(repr, args))
        raise ConfigError(f"Invalid value for '{path}': {_show(value)}; expected one of: {choices}")
    if _is_dataclass_type(tp):
        if isinstance(plain, tp):
            return plain
        if isinstance(value, abc.Mapping):
            return from_dict(tp, value, path)
        raise _type_error(tp, value, path)
    container = origin or tp
    if container in _SEQ:
        if cli or isinstance(plain, str):  # "a, b" -> ["a", "b"] ("" -> [])
            items: list = [s.strip() for s in (cli.raw if cli else plain).split(",") if s.strip()]
        elif isinstance(value, (list, tuple, set, frozenset)):
            items = list(value)
        elif plain is None or isinstance(plain, abc.Mapping):
            raise _type_error(tp, value, path)
        else:
            items = [value]
        if container is tuple and args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                raise ConfigError(f"Invalid value for '{path}': expected {len(args)} items, got {_show(value)}")
            return tuple(_coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, items)))
        elem = args[0] if args else Any
        return _SEQ[container](_coerce(elem, v, f"{path}[{i}]") for i, v in enumerate(items))
    if container in _MAP:
        if not isinstance(value, abc.Mapping):
            raise _type_error(tp, value, path)
        kt, vt = args if len(args) == 2 else (Any, Any)
        return {_coerce(kt, k, f"{path}.{k}"): _coerce(vt, v, f"{path}.{k}") for k, v in value.items()}
    v = cli.raw if cli else plain  # scalars: coerce the raw text (avoids YAML's 0123 / 1.10 surprises)
    if tp is bool:
        if isinstance(v, bool) or (isinstance(v, int) and v in (0, 1)):
            return bool(v)
        if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
            return v.strip().lower() in _TRUE
    elif tp in (int, float):
        if isinstance(v, (int, float)) and not isinstance(v, bool) and (tp is float or float(v).is_integer()):
            return tp(v)
        if isinstance(v, str):
            for parse in (int, float) if tp is int else (float,):
                try:
                    number = parse(v.strip())
                except ValueError:
                    continue
                if tp is float or float(number).is_integer():
                    return tp(number)
    elif tp is str:
        if isinstance(v, str) or (isinstance(v, (int, float)) and not isinstance(v, bool)):
            return str(v)
    elif tp is _NONE:
        if _is_null(plain):
            return None
    elif isinstance(tp, type) and issubclass(tp, PurePath):
        if isinstance(v, (str, PurePath)):
            return tp(v)
    elif isinstance(tp, type) and isinstance(plain, tp):
        return plain
    raise _type_error(tp, value, path)


def _unknown_key(cls: type, path: str, key: str, value: Any) -> ConfigError:
    suffix = ""
    while isinstance(value, abc.Mapping) and len(value) == 1:  # report the full dotted key the user wrote
        (child, value), = value.items()
        suffix += f".{child}"
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    valid = list(dict.fromkeys(dotted for dotted, *_ in _walk(cls)))  # walk order: stable suggestions
    # A close name is only suggested if the rest of what the user wrote exists under it.
    guesses = [_join(path, m) + suffix for m in difflib.get_close_matches(key, names, n=3)
               if not suffix or (m + suffix) in valid]
    for dotted in valid:  # also look deeper: `coeff` -> `loss.sparsity.coeff`
        if "." in dotted and difflib.get_close_matches(key, [dotted.rsplit(".", 1)[1]], cutoff=0.8):
            guesses.append(_join(path, dotted) + suffix)
    message = f"Unknown config key '{_join(path, key)}{suffix}'"
    if guesses:
        return ConfigError(message + "; did you mean " + " or ".join(f"'{g}'" for g in dict.fromkeys(guesses)) + "?")
    return ConfigError(message + f"; valid keys{f' under {path!r}' if path else ''}: {', '.join(names)}")


def from_dict(cls: type[T], data: abc.Mapping[str, Any], path: str = "") -> T:
    """Build dataclass ``cls`` (recursively) from a mapping, coercing and validating every value.

    ``path`` is the dotted prefix used in error messages.  ValueErrors raised by the class's own
    ``__post_init__`` are re-raised as ConfigError prefixed with ``path``.
    """
    if not _is_dataclass_type(cls):
        raise TypeError(f"{cls!r} is not a dataclass type")
    if not isinstance(data, abc.Mapping):
        raise ConfigError(f"Expected a mapping for '{path or cls.__name__}', got {_show(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown_key(cls, path, str(key), value)
        kwargs[key] = _coerce(_hints(cls)[key], value, _join(path, key))
    missing = [_join(path, n) for n, f in fields.items() if n not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"Missing required config field(s): {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except ValueError as e:  # the class's own __post_init__ checks
        raise ConfigError(f"Invalid config {repr(path) if path else cls.__name__}: {e}") from e


def _deep_merge(base: dict, override: dict) -> dict:
    """Return ``base`` updated by ``override``; nested mappings are merged, not replaced."""
    merged = dict(base)
    for key, value in override.items():
        old = merged.get(key)
        both = isinstance(old, dict) and isinstance(value, dict)
        merged[key] = _deep_merge(old, value) if both else value
    return merged


def _parse_value(raw: str | None) -> Any:
    if raw is None:
        return _CliValue("true", True, flag=True)
    try:
        parsed = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        parsed = raw
    if isinstance(parsed, (list, dict)) and raw.lstrip()[:1] in ("[", "{"):
        return parsed  # YAML flow collection: `[1, 2]`, `{a: 1}`
    return _CliValue(raw, parsed if isinstance(parsed, (_NONE, bool, int, float, str)) else raw)


def _parse_overrides(args: list[str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    i = 0
    while i < len(args):
        token, i = args[i], i + 1
        if token in ("-h", "--help"):
            raise ConfigError("Help requested: check is_help_requested(args) and show format_help(cls) first")
        if token.startswith("--") and "=" in token:
            key, raw = token[2:].split("=", 1)
        elif token.startswith("--"):
            key, raw = token[2:], None  # bare flag unless a value follows
            if i < len(args) and not args[i].startswith("--"):
                raw, i = args[i], i + 1
        elif "=" in token and not token.startswith("-"):
            key, raw = token.split("=", 1)
        else:
            raise ConfigError(f"Unexpected argument {token!r}; use '--key value', '--key=value' or 'key=value'")
        parts = key.split(".")
        if not all(parts):
            raise ConfigError(f"Invalid override key {key!r} in {token!r}")
        value: Any = _parse_value(raw)
        for part in reversed(parts[1:]):
            value = {part: value}
        tree = _deep_merge(tree, {parts[0]: value})
    return tree


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """Turn ``--a.b value``, ``--a.b=value`` and ``a.b=value`` tokens into a nested dict.

    Values are read with ``yaml.safe_load`` (``3``, ``true``, ``null``, ``[1, 2]``; ``1e-3`` stays a
    string that the coercer turns into a float).  A ``--flag`` followed by another ``--`` token or
    by nothing means ``true``.  Later overrides win.
    """
    return _plain(_parse_overrides(args))


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load ``cls`` from an optional YAML file deep-merged with command-line ``overrides``."""
    data: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"Config file not found: {file}")
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ConfigError(f"Could not parse YAML config {file}: {e}") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"Config file {file} must contain a mapping at top level, got {type(loaded).__name__}")
        data = loaded or {}
    if overrides:
        data = _deep_merge(data, _parse_overrides(list(overrides)))
    return from_dict(cls, data)


def _to_plain(value: Any, path: str) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name), _join(path, f.name))
                for f in dataclasses.fields(value) if f.init}
    if isinstance(value, abc.Mapping):
        return {k if isinstance(k, (str, int, float, bool)) else str(k): _to_plain(v, f"{path}.{k}")
                for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        value = sorted(value, key=repr)
    if isinstance(value, (list, tuple)):
        return [_to_plain(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, PurePath):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"Config value at '{path}' cannot be written to YAML: {value!r}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, YAML-safe nested dict of a dataclass instance (Paths -> str, tuples/sets -> lists)."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"to_dict expects a dataclass instance, got {type(cfg).__name__}")
    return _to_plain(cfg, "")


def save_yaml(cfg: Any, path: str | Path) -> Path:
    """Write ``to_dict(cfg)`` as YAML (creating parent folders); ``load_config`` reads it back equal."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True), encoding="utf-8")
    return file


def _default_text(f: dataclasses.Field) -> str:
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        return "required"
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    try:
        return "default: " + json.dumps(_to_plain(value, f.name))
    except (TypeError, ValueError):
        return f"default: {value!r}"


def format_help(cls: type, prog: str = "hf-e2e-sae") -> str:
    """``--help`` text: every dotted field with its type, default and docstring."""
    lines = [f"usage: {prog} [-h] [--KEY VALUE | --KEY=VALUE | KEY=VALUE ...]", ""]
    doc = inspect.cleandoc(cls.__doc__ or "")
    if doc and not doc.startswith(cls.__name__ + "("):  # skip the signature dataclass puts there
        lines += [doc, ""]
    lines += ["Nested fields use dotted keys; lists accept 'a,b' or '[a, b]'; null means None.", "",
              "options:", "  -h, --help", "      Show this help message and exit."]
    for dotted, f, hint, owner in _walk(cls):
        if _dataclass_in(hint) is not None:
            extra = "" if get_origin(hint) not in _UNIONS else f"  ({_default_text(f)})"
            lines += ["", f"  {dotted}: {_type_name(hint)}{extra}"]
        else:
            lines.append(f"  --{dotted} {_type_name(hint)}  ({_default_text(f)})")
        text = field_docstrings(owner).get(f.name)
        if text:
            lines += textwrap.indent(text, " " * 6).splitlines()
    return "\n".join(lines) + "\n"


def is_help_requested(args: list[str]) -> bool:
    """True if ``-h``/``--help`` appears as an option (not as the value of a preceding ``--key``)."""
    i = 0
    while i < len(args):
        if args[i] in ("-h", "--help"):
            return True
        takes_value = args[i].startswith("--") and "=" not in args[i]
        i += 2 if takes_value and i + 1 < len(args) and not args[i + 1].startswith("--") else 1
    return False
