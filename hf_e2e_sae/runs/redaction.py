"""Keeping credentials out of everything a run writes, logs, tracks or publishes.

`redact_secrets` is the one function every writer of a config calls (checkpoint and final
`train_config.yaml`, tracker hparams, the pushed model card and config): values under keys that name a
credential (token, password, secret, api_key, authorization, ...) become "<redacted>", and credentials
inside URLs (`https://user:pw@host`, `?token=...`) are masked. The run itself keeps the real values.
"""
from __future__ import annotations

import re
from typing import Any

REDACTED = "<redacted>"

_SECRET_WORDS = {"token", "password", "passwd", "pwd", "secret", "authorization", "auth", "credential",
                 "credentials", "apikey", "bearer", "cookie", "passphrase"}
_SECRET_PAIRS = {("api", "key"), ("private", "key"), ("access", "key"), ("secret", "key"), ("signing", "key")}
# Tokenizer special tokens are vocabulary, not credentials.
_NOT_SECRET_BEFORE_TOKEN = {"bos", "eos", "pad", "unk", "sep", "cls", "mask", "special", "start", "end"}
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][\w+.-]*://)(?P<user>[^/@\s:]*):(?P<password>[^/@\s]*)@")
_URL_QUERY = re.compile(r"(?P<key>[?&][^=&#\s]+)=(?P<value>[^&#\s]*)")


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


def _redact_string(text: str) -> str:
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", text)
    if "://" in text:
        text = _URL_QUERY.sub(lambda m: f"{m['key']}={REDACTED}" if is_secret_key(m["key"][1:]) else m[0], text)
    return text


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


def config_yaml(config: Any) -> str:
    """A TrainConfig as YAML text with its credentials redacted (what checkpoints and final/ hold)."""
    import yaml

    from ..config.arguments import to_dict

    return yaml.safe_dump(redact_secrets(to_dict(config)), sort_keys=False, allow_unicode=True)
