"""Secrets never leave the process: the user information of URLs (`user:password@host`, a token as the
user name) and signed-URL tokens (`?sig=...`, `X-Amz-Signature=...`, `api-key=...`) are blanked wherever
a URL is printed or stored (messages, the printed resume command, config.yaml, checkpoints), and so are
the values of keys that name a credential (`storage.s3.secret_access_key=...`)."""

from __future__ import annotations

import re

from omegaconf import DictConfig, OmegaConf

REDACTED = "<redacted>"

# `scheme://userinfo@host`: all of the userinfo (a user name is often a token: `https://ghp_...@host`). Up
# to the last `@` before the path, as URL parsers split it: a password may hold an unescaped `@`.
_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s?#]*@")
# names that carry a credential or a signature: these words of a name (`x-api-key`: x, api, key), or a
# name holding one of the longer words once its `-`, `_` and `.` are dropped (`X-Amz-Signature`, `apiKey`)
SECRET_PARAMS = ("sig", "key", "auth", "pass", "pwd", "pw", "code", "jwt")
SECRET_WORDS = ("signature", "credential", "token", "secret", "password", "passwd", "passphrase", "apikey",
                "accesskey", "privatekey", "authorization", "jwt")
_PARAM = re.compile(r"(?P<head>[?&;](?P<name>[^=&#\s?;]+)=)(?P<secret>[^&#\s'\";]*)")


def names_secret(name: str) -> bool:
    """Whether a key or query parameter name says its value is a credential, whatever its case and
    separators (`api-key`, `API_KEY`, `apiKey`)."""
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    return any(w in SECRET_PARAMS for w in words) or any(word in "".join(words) for word in SECRET_WORDS)


def redact_text(text: str) -> str:
    """`text` with the user information of every URL and every signed-URL token blanked."""
    text = _USERINFO.sub(lambda m: f"{m['head']}{REDACTED}@", text)
    return _PARAM.sub(lambda m: m["head"] + (REDACTED if names_secret(m["name"]) and m["secret"] else m["secret"]),
                      text)


# The configuration and the command line: credentials given as overrides, and config.yaml.

def redacted(cfg) -> DictConfig:
    """A resolved copy of the config (a DictConfig or the schema's dataclasses) without credentials, for
    config.yaml and checkpoints: keys that name a credential read <redacted>, URLs (list items too) lose
    their passwords and signed-URL tokens."""
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)
    return OmegaConf.create(_without_secrets(OmegaConf.to_container(node, resolve=True)))


def _without_secrets(value, key: str = ""):
    if isinstance(value, dict):
        return {name: _without_secrets(v, f"{key}.{name}" if key else str(name)) for name, v in value.items()}
    if isinstance(value, list):
        return [_without_secrets(v, key) for v in value]
    if value is not None and names_secret(key):
        return REDACTED
    return redact_text(value) if isinstance(value, str) else value


def is_credential(override: str) -> bool:
    """Whether a KEY=VALUE argument gives a credential: its key names one, or its value is a section
    (`storage.s3={secret_access_key: ...}`) with a key that does."""
    key, _, value = override.partition("=")
    return names_secret(key.lstrip("+~")) or bool(_section_secrets(value))


def redact_message(text: str, overrides: list[str]) -> str:
    """`text` with the values of credential overrides blanked, and every URL's user information and
    signed-URL token. A value is blanked where it stands as a token of its own, however short: not
    inside a longer word."""
    secrets = {v for override in filter(is_credential, overrides) for v in _credential_values(override)}
    for given in sorted(secrets, key=len, reverse=True):  # the whole value before the parts it holds
        text = re.sub(rf"(?<![\w-]){re.escape(given)}(?![\w-])", REDACTED, text)
    return redact_text(text)


# a run of characters between a list's or a section's punctuation, not a key (followed by `:`)
_SCALAR = re.compile(r"""[^\s{}\[\],:'"]+(?![^\s{}\[\],:'"])(?!\s*:)""")


def _credential_values(override: str) -> set[str]:
    """The secrets a credential override gives: its whole value when its key names a credential, else
    the values of the section's keys that do; each as typed, unquoted, and the scalars it holds (a
    message may show a list or a section spaced otherwise)."""
    key, _, value = override.partition("=")
    found = set()
    for v in [value] if names_secret(key.lstrip("+~")) else _section_secrets(value):
        without_interpolations = re.sub(r"\$\{[^{}]*\}", " ", v)  # they name keys and variables, no secret
        found |= {v.strip(), v.strip().strip("'\""), *_SCALAR.findall(without_interpolations)}
    return {v for v in found if v and v != "null"}


def _section_secrets(value: str) -> list[str]:
    """The values, as typed, of the keys naming a credential in a section `{name: value, ...}`, at any depth."""
    if value.lstrip()[:1] != "{":
        return []
    return [_value_at(value, m.end()) for m in re.finditer(r"([\w.-]+)\s*:\s*", value) if names_secret(m[1])]


def _value_at(text: str, start: int) -> str:
    """The value that starts at `start` in a section: up to the `,` or closing bracket that ends it."""
    depth = 0
    for i, c in enumerate(text[start:], start):
        if c in "{[":
            depth += 1
        elif c in "}]" and depth:
            depth -= 1
        elif c in "}]," and not depth:
            return text[start:i].strip()
    return text[start:].strip()
