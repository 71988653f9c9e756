"""Hydra's and OmegaConf's errors said as one line for the user: the key, the value as typed (a
credential's never), what it must be, and a guess at a misspelt key or option."""

from __future__ import annotations

import difflib
import re
import typing

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    GrammarParseError,
    InterpolationKeyError,
    InterpolationResolutionError,
    InterpolationToMissingValueError,
    UnsupportedInterpolationType,
    ValidationError,
)

from bmb_stream import config_schema as schema
from bmb_stream import redaction
from bmb_stream.config_schema import GROUPS, config_dir, group_options
from bmb_stream.errors import first_line
from bmb_stream.redaction import is_credential


def unless_secret(key: str, shown: str) -> str:
    """A value as shown in a message: <redacted> for a key that names a credential."""
    return redaction.REDACTED if redaction.names_secret(key) and shown != "null" else shown


def as_typed(value) -> str:
    """A value as the user wrote it: a float key's 0 reads 0, not 0.0."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, (list, ListConfig)):
        return f"[{', '.join(as_typed(v) for v in value)}]"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def parsed_override(override: str):
    """Hydra's reading of one KEY=VALUE override, or None where its grammar cannot read it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_override(override)
    except HydraException:
        return None


def hydra_message(error: Exception, overrides: list[str]) -> str:
    text = first_line(error)
    if type(error).__name__ == "OverrideParseException":
        unread = next((o for o in overrides if is_credential(o) and parsed_override(o) is None), None)
        if unread is not None:  # Hydra's text quotes the part of the value it read
            key = unread.partition("=")[0].lstrip("+~")
            return (f"{key}={redaction.REDACTED}: cannot parse the value (not shown: it may be a secret); write "
                    f"KEY=VALUE, quoting a value that is one string: '{key}=\"VALUE\"'")
        return f"cannot parse the overrides ({text}); write KEY=VALUE, quoting lists: 'key=[1,2]'"
    if text.startswith("Could not override '"):
        return key_message(text.split("'")[1])
    cause = error
    while cause is not None and getattr(cause, "full_key", None) is None:
        cause = cause.__cause__ or cause.__context__
    message = omegaconf_message(cause, overrides) if cause is not None else None
    if message:  # from an override, or from a file: "In 'experiment/x': ... raised while composing config"
        return message + (f" (in {config_dir() / text.split(chr(39))[1]}.yaml)" if text.startswith("In '") else "")
    for group in GROUPS:
        if f"'{group}/" in text or f"{group}/" in text and "Could not find" in text:
            chosen = override_value(overrides, group) or "?"
            return (f"{group}={chosen}: unknown option; accepted: {', '.join(group_options(group))}"
                    f"{did_you_mean(chosen, group_options(group))}")
    return text


def omegaconf_message(error, overrides: list[str]) -> str | None:
    """A key the chosen options lack, or a value Hydra could not convert to its key's type
    (train.steps=abc), said as `validate` says it."""
    if isinstance(error, (ConfigKeyError, ConfigAttributeError)):
        return key_message(error.full_key)
    if isinstance(error, GrammarParseError):  # `${foo` without its closing brace
        key = override_key(error.full_key, overrides)
        detail = "" if redaction.names_secret(key) else f" ({first_line(error)})"  # it may quote the value
        return (f"{key}={unless_secret(key, override_value(overrides, key) or '?')}: not a valid interpolation"
                f"{detail}; write ${{KEY}} or ${{oc.env:NAME}}, or \\$ for a literal $")
    if not isinstance(error, ValidationError):
        return None
    key = error.full_key.split("[")[0]
    parent = error.object_type
    f = schema.schema_fields(parent).get(error.key) if schema.is_schema(parent) else schema.find_field(key)
    if f is None:
        return None
    typed = override_value(overrides, key)
    shown = typed if typed is not None else as_typed(error.value)
    accepted = schema.field_check(f)[1]
    if float in (f.type, *typing.get_args(f.type)) and not _is_number(error.value):
        accepted = f"a number ({accepted})"
    return f"{key}={unless_secret(key, shown)}: must be {accepted}"


def _is_number(value) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


def override_key(full_key: str, overrides: list[str]) -> str:
    """The key an error names; Hydra keeps the overrides' text in hydra.overrides.task[i]."""
    task = re.fullmatch(r"hydra\.overrides\.task\[(\d+)\]", full_key or "")
    if task and int(task[1]) < len(overrides):
        return overrides[int(task[1])].split("=", 1)[0].lstrip("+~")
    return full_key


def override_value(overrides: list[str], key: str) -> str | None:
    """The value the overrides give `key`, as typed (without the quotes that make it one string for Hydra)."""
    value = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+~") == key), None)
    quoted = value is not None and len(value) > 1 and value[0] == value[-1] and value[0] in "'\""
    if not quoted:
        return value
    # Hydra's escapes in a quoted string: backslashes before its quote character, or at its end, doubled
    inner = re.sub(rf"((?:\\\\)*)\\{value[0]}", lambda m: m[1][:len(m[1]) // 2] + value[0], value[1:-1])
    return re.sub(r"((?:\\\\)+)$", lambda m: m[1][:len(m[1]) // 2], inner)


def interpolation_message(error: InterpolationResolutionError, cfg: DictConfig) -> str:
    """An interpolation that does not resolve, named with its key and the value as written."""
    key = error.full_key or "?"
    written = unless_secret(key, written_value(cfg, key))
    text = first_line(error)
    if isinstance(error, InterpolationKeyError):
        missing = text.split("'")[1] if text.count("'") >= 2 else "?"
        why = f"{missing} is no key of this configuration{did_you_mean(missing, schema.known_keys())}"
    elif isinstance(error, UnsupportedInterpolationType):
        why = f"no resolver is named {text.rpartition(' ')[2]} (oc.env:NAME reads an environment variable)"
    elif isinstance(error, InterpolationToMissingValueError):
        why = "it refers to a key that has no value"
    elif isinstance(error, ValidationError) and schema.find_field(key) is not None:  # resolved, of the wrong type
        why = f"what it gives (not shown: it may be a secret) is not {schema.field_check(schema.find_field(key))[1]}"
    elif "Environment variable '" in text:
        name = text.split("Environment variable '")[1].split("'")[0]
        why = f"the environment variable {name} is not set; set it, or give a default: ${{oc.env:{name},VALUE}}"
    elif text.startswith("Recursive interpolation"):
        why = "the interpolation refers back to itself"
    elif redaction.names_secret(key):  # the resolver's own words may quote the value
        why = type(error).__name__
    else:
        why = text.partition("raised while resolving interpolation: ")[2] or text
    return f"{key}={written}: cannot resolve the interpolation: {why}"


def written_value(cfg: DictConfig, key: str):
    """The value of a dotted key (`stream.urls[1]`) as written, interpolations unresolved."""
    value = lookup(OmegaConf.to_container(cfg, resolve=False), key)
    return "?" if value is ABSENT else as_typed(value)


ABSENT = object()


def lookup(container, key: str):
    """The value of a dotted key (`stream.urls[1]`) in plain dicts and lists, else ABSENT."""
    for part in key.replace("[", ".").replace("]", "").split("."):
        try:
            container = container[int(part) if isinstance(container, list) else part]
        except (KeyError, IndexError, ValueError, TypeError):
            return ABSENT
    return container


def key_message(key: str) -> str:
    if key in schema.known_keys():  # a key of some option of its group, but not of the chosen one
        return f"{key}: not a key of this configuration (the chosen {key.split('.')[0]} option has no such key)"
    return no_such_key(key)


def no_such_key(key: str) -> str:
    return f"{key}: no such configuration key{did_you_mean(key, schema.known_keys())} (see bmb-stream --help)"


def did_you_mean(word: str, known) -> str:
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""
