"""Keeping credentials out of everything a run writes, logs, tracks or publishes.

`redact_secrets` is the one function every writer of a config calls (checkpoint and final
`train_config.yaml`, tracker hparams, the pushed model card and config): values under keys that name a
credential (token, password, secret, signature, api_key, authorization, ...) become "<redacted>", and inside
any string: URL user-info (`https://TOKEN@host`, `https://user:pw@host`), signed-URL query parameters (S3
`X-Amz-Signature` / `-Credential` / `-Security-Token`, GCS `X-Goog-Signature` / `-Credential`, Azure SAS `sig`,
`?token=...`) and `Authorization` headers (`Bearer ...`, `Basic ...`) are masked. `redacted_argv` does the same
to `sys.argv` while a tracker starts (wandb records the command line). The run itself keeps the real values.
"""
from __future__ import annotations

import contextlib
import re
import sys
from typing import Any, Iterator

REDACTED = "<redacted>"

_SECRET_WORDS = {"token", "password", "passwd", "pwd", "secret", "authorization", "auth", "credential",
                 "credentials", "apikey", "bearer", "cookie", "passphrase", "signature"}
# Query parameters of signed URLs that are credentials by name alone (Azure SAS: sig=...).
_SIGNED_URL_KEYS = {"sig"}
_SECRET_PAIRS = {("api", "key"), ("private", "key"), ("access", "key"), ("secret", "key"), ("signing", "key")}
# Tokenizer special tokens are vocabulary, not credentials.
_NOT_SECRET_BEFORE_TOKEN = {"bos", "eos", "pad", "unk", "sep", "cls", "mask", "special", "start", "end"}
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][\w+.-]*://)(?P<user>[^/@\s:?#]*)(?::(?P<password>[^/@\s?#]*))?@")
_URL_QUERY = re.compile(r"(?P<key>[?&][^=&#\s]+)=(?P<value>[^&#\s]*)")
_AUTH_HEADER = re.compile(r"(?P<name>(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)(?P<scheme>(?:bearer|basic|token|"
                          r"digest)\s+)?(?P<value>[^\s\"',;]+)", re.IGNORECASE)
_AUTH_SCHEME = re.compile(r"\b(?P<scheme>bearer|basic)\s+(?P<value>[A-Za-z0-9\-._~+/]{8,}=*)", re.IGNORECASE)


def _words(key: str) -> list:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key)  # apiKey -> api_Key
    return [w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w]


def is_secret_key(key: Any) -> bool:
    """Whether a config key names a credential (`hf_token`, `password`, `api_key`, `Authorization`, ...)."""
    words = _words(str(key))
    for i, word in enumerate(words):
        if word == "token" and i > 0 and words[i - 1] in _NOT_SECRET_BEFORE_TOKEN:
            continue
        if word in _SECRET_WORDS or (i > 0 and (words[i - 1], word) in _SECRET_PAIRS):
            return True
    return False


def _userinfo(match: re.Match) -> str:
    """`https://user:pw@` keeps the user name; `https://TOKEN@` (a token as the user name) loses it whole."""
    if match["password"] is None:
        return f"{match['scheme']}{REDACTED}@"
    return f"{match['scheme']}{match['user']}:{REDACTED}@"


def _is_secret_query_key(key: str) -> bool:
    return key.lower() in _SIGNED_URL_KEYS or is_secret_key(key)


def _looks_like_credential(value: str) -> bool:
    """`Bearer <value>` / `Basic <value>` outside a header: a credential, not prose ("Basic usage")."""
    return any(c.isdigit() or c in "+/=_-." for c in value) or any(c.isupper() for c in value[1:])


def _redact_string(text: str) -> str:
    text = _URL_USERINFO.sub(_userinfo, text)
    if "://" in text:
        text = _URL_QUERY.sub(lambda m: f"{m['key']}={REDACTED}" if _is_secret_query_key(m["key"][1:]) else m[0],
                              text)
    text = _AUTH_HEADER.sub(lambda m: f"{m['name']}{m['scheme'] or ''}{REDACTED}", text)
    return _AUTH_SCHEME.sub(lambda m: f"{m['scheme']} {REDACTED}" if _looks_like_credential(m["value"]) else m[0],
                            text)


def redact_secrets(value: Any) -> Any:
    """A copy of a config tree (dicts, lists, strings) with every credential replaced by `REDACTED`.

    A value under a credential-like key is replaced whole unless it is None or a bool (`use_auth_token: true`
    is a switch, not a secret).
    """
    if isinstance(value, dict):
        return {k: (REDACTED if is_secret_key(k) and v is not None and not isinstance(v, bool) else redact_secrets(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_secrets(v) for v in value)
    if isinstance(value, str):
        return _redact_string(value)
    return value


def redact_argv(argv: list) -> list:
    """A command line with its credentials masked: `key=VALUE` and `--key VALUE` / `--key=VALUE` where the key
    names a credential (`data.load_kwargs.token=...`, `--hub_token ...`), and credentials inside any argument
    (URL user-info, signed-URL parameters, Authorization headers)."""
    out, hide_next = [], False
    for arg in map(str, argv):
        key, eq, value = arg.partition("=")
        if hide_next:
            out.append(REDACTED)
        elif eq and key and not key.startswith("-" * 3) and is_secret_key(key) and value.lower() not in _SWITCHES:
            out.append(f"{key}={REDACTED}")
        else:
            out.append(_redact_string(arg))
        hide_next = not hide_next and not eq and arg.startswith("--") and is_secret_key(arg)
    return out


_SWITCHES = {"", "true", "false", "null", "none"}  # `use_auth_token=true` is a switch, not a secret


@contextlib.contextmanager
def redacted_argv() -> Iterator[None]:
    """`sys.argv` (the same list object) redacted inside the block, restored after: for code that records the
    command line, such as `wandb.init` (its run metadata stores `sys.argv`, uploaded when online)."""
    saved = list(sys.argv)
    sys.argv[:] = redact_argv(saved)
    try:
        yield
    finally:
        sys.argv[:] = saved


def config_yaml(config: Any) -> str:
    """A TrainConfig as YAML text with its credentials redacted (what checkpoints and final/ hold)."""
    import yaml

    from ..config.arguments import to_dict

    return yaml.safe_dump(redact_secrets(to_dict(config)), sort_keys=False, allow_unicode=True)
