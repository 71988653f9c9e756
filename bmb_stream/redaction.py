"""Secrets never leave the process: the user information of URLs (`user:password@host`, a token as the
user name) and signed-URL tokens (`?sig=...`, `X-Amz-Signature=...`, `api-key=...`) are blanked wherever
a URL is printed or stored (messages, the printed resume command, config.yaml, checkpoints), and so are
the values of keys that name a credential (`storage.s3.secret_access_key=...`)."""

from __future__ import annotations

import re

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
