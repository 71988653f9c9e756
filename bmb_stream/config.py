"""Composing the configuration (Hydra, from the top-level configs/, typed by the schema in
bmb_stream/config_schema.py) and validating it, so that a bad value ends with one line naming the key
and what it accepts."""

from __future__ import annotations

import difflib
import os
import re
import time
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (ConfigAttributeError, ConfigKeyError, GrammarParseError, InterpolationKeyError,
                              InterpolationResolutionError, InterpolationToMissingValueError, MissingMandatoryValue,
                              UnsupportedInterpolationType, ValidationError)

from bmb_stream import config_schema as schema
from bmb_stream import redaction

GROUPS = ("mode", "method", "model", "dataset", "experiment")


class ConfigError(ValueError):
    """A configuration value is wrong; str() is the one-line message for the user."""


def config_dir() -> Path:
    """configs/ beside the package (source checkout or editable install), or BMB_STREAM_CONFIGS."""
    env = os.environ.get("BMB_STREAM_CONFIGS")
    path = Path(env) if env else Path(__file__).resolve().parent.parent / "configs"
    if not (path / "config.yaml").exists():
        raise ConfigError(f"config folder {path} not found: install with 'pip install -e .' from the source "
                          f"checkout, or set BMB_STREAM_CONFIGS to its configs/ folder")
    return path


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def _hydra_compose(config_name: str, overrides: list[str]) -> DictConfig:
    """Hydra's composition, its errors as one-line ConfigErrors."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    schema.register()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
            return hydra_compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(redact_text(_hydra_message(e, overrides), overrides)) from None


def compose(overrides: list[str]) -> DictConfig:
    """The configuration for these Hydra overrides, validated, with run.dir filled in."""
    cfg = _hydra_compose("config", overrides)
    try:
        _refuse_unread_overrides(cfg, overrides)
        _refuse_null_interpolations(cfg, overrides)
        _without_dataset_folders(cfg)
        _count_class_folders(cfg)
        validate(cfg)
    except InterpolationResolutionError as e:
        raise ConfigError(redact_text(_interpolation_message(e, cfg), overrides)) from None
    except ConfigError as e:
        raise ConfigError(redact_text(str(e), overrides)) from None
    if cfg.run.dir is None:
        name = cfg.experiment_name or cfg.dataset.name
        cfg.run.dir = str(Path("runs") / f"{name}-{cfg.method.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    return cfg


def option_config(group: str, option: str) -> DictConfig:
    """One option of a config group alone, on its schema (e.g. a dataset for `bmb-stream simulate`)."""
    return _hydra_compose(f"{group}/{option}", [])[group]


def _without_dataset_folders(cfg: DictConfig) -> None:
    """A stream run with shards reads its images from them: the dataset's folders, required (???) by the
    dataset's file, are not needed there and become null."""
    if cfg.mode == "stream" and cfg.stream.urls is not None:
        for key in ("root", "list_dir"):
            if key in cfg.dataset.keys() and OmegaConf.is_missing(cfg.dataset, key):  # `in` is False for ???
                cfg.dataset[key] = None


def _refuse_unread_overrides(cfg: DictConfig, overrides: list[str]) -> None:
    """A key given on the command line that the chosen option's schema does not declare (a BMB setting
    with method=fixmatch) is refused, not ignored."""
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        group, _, rest = key.partition(".")
        if "=" not in override or not rest or group not in schema.OPTION_SCHEMAS:
            continue
        node_schema = OmegaConf.get_type(cfg[group])
        for part in rest.split("[")[0].split("."):
            fields = schema.schema_fields(node_schema) if schema.is_schema(node_schema) else None
            if fields is None:
                break  # inside a value (a list): the schema has spoken above
            if part not in fields:
                raise ConfigError(_key_message(key))
            node_schema = schema.section_schema(fields[part])


def _refuse_null_interpolations(cfg: DictConfig, overrides: list[str]) -> None:
    """A value given on the command line that an interpolation turns into null (`${oc.select:no.key}`)
    is refused: null means "none" (no stream.urls: the default simulated stream), which was not what
    was written, unless the interpolation gives null as its default."""
    written = OmegaConf.to_container(cfg, resolve=False)
    for override in overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+")
        if "${" not in value or key.startswith("~"):
            continue
        for leaf, given in _leaves(_lookup(written, key), key):
            says_null = re.search(r",\s*null\s*}", given) if isinstance(given, str) else None  # ${oc.env:X,null}
            if isinstance(given, str) and "${" in given and not says_null and OmegaConf.select(cfg, leaf) is None:
                raise ConfigError(f"{leaf}={given}: the interpolation gives null; refer to a key that has a value, "
                                  f"or write {leaf}=null for none")


def _leaves(value, key: str):
    """(dotted key, value) of every scalar in a value (`stream.urls[1]` for a list item)."""
    if isinstance(value, dict):
        for name, v in value.items():
            yield from _leaves(v, f"{key}.{name}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{key}[{i}]")
    else:
        yield key, value


def _count_class_folders(cfg: DictConfig) -> None:
    """An image folder dataset without dataset.num_classes has as many classes as <root>/train has
    sub-folders, as torchvision's ImageFolder counts them."""
    d = cfg.dataset
    if d.source != "imagefolder" or not OmegaConf.is_missing(d, "num_classes") or OmegaConf.is_missing(d, "root"):
        return
    train = Path(str(d.root)) / "train"
    if d.root is not None and train.is_dir():
        from bmb_stream.data.sources import class_folders

        d.num_classes = len(class_folders(train))


def first_line(error: BaseException) -> str:
    """The first line of an error's message; its type's name where the message is empty."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def parsed_override(override: str):
    """Hydra's reading of one KEY=VALUE override, or None where its grammar cannot read it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_override(override)
    except HydraException:
        return None


def _hydra_message(error: Exception, overrides: list[str]) -> str:
    text = first_line(error)
    if type(error).__name__ == "OverrideParseException":
        unread = next((o for o in overrides if is_credential(o) and parsed_override(o) is None), None)
        if unread is not None:  # Hydra's text quotes the part of the value it read
            key = unread.partition("=")[0].lstrip("+~")
            return (f"{key}={redaction.REDACTED}: cannot parse the value (not shown: it may be a secret); write "
                    f"KEY=VALUE, quoting a value that is one string: '{key}=\"VALUE\"'")
        return f"cannot parse the overrides ({text}); write KEY=VALUE, quoting lists: 'key=[1,2]'"
    if text.startswith("Could not override '"):
        return _key_message(text.split("'")[1])
    cause = error
    while cause is not None and getattr(cause, "full_key", None) is None:
        cause = cause.__cause__ or cause.__context__
    message = _omegaconf_message(cause, overrides) if cause is not None else None
    if message:  # from an override, or from a file: "In 'experiment/x': ... raised while composing config"
        return message + (f" (in {config_dir() / text.split(chr(39))[1]}.yaml)" if text.startswith("In '") else "")
    for group in GROUPS:
        if f"'{group}/" in text or f"{group}/" in text and "Could not find" in text:
            chosen = _override_value(overrides, group) or "?"
            return (f"{group}={chosen}: unknown option; accepted: {', '.join(group_options(group))}"
                    f"{_did_you_mean(chosen, group_options(group))}")
    return text


def _omegaconf_message(error, overrides: list[str]) -> str | None:
    """A key the chosen options lack, or a value Hydra could not convert to its key's type
    (train.steps=abc), said as `validate` says it."""
    if isinstance(error, (ConfigKeyError, ConfigAttributeError)):
        return _key_message(error.full_key)
    if isinstance(error, GrammarParseError):  # `${foo` without its closing brace
        key = _override_key(error.full_key, overrides)
        detail = "" if redaction.names_secret(key) else f" ({first_line(error)})"  # it may quote the value
        return (f"{key}={_secret_shown(key, _override_value(overrides, key) or '?')}: not a valid interpolation"
                f"{detail}; write ${{KEY}} or ${{oc.env:NAME}}, or \\$ for a literal $")
    if not isinstance(error, ValidationError):
        return None
    key = error.full_key.split("[")[0]
    parent = error.object_type
    f = schema.schema_fields(parent).get(error.key) if schema.is_schema(parent) else schema.find_field(key)
    if f is None:
        return None
    typed = _override_value(overrides, key)
    shown = typed if typed is not None else _shown(error.value)
    return f"{key}={_secret_shown(key, shown)}: must be {schema.field_check(f)[1]}"


def _override_key(full_key: str, overrides: list[str]) -> str:
    """The key an error names; Hydra keeps the overrides' text in hydra.overrides.task[i]."""
    task = re.fullmatch(r"hydra\.overrides\.task\[(\d+)\]", full_key or "")
    if task and int(task[1]) < len(overrides):
        return overrides[int(task[1])].split("=", 1)[0].lstrip("+~")
    return full_key


def _override_value(overrides: list[str], key: str) -> str | None:
    """The value the overrides give `key`, as typed (without the quotes that make it one string for Hydra)."""
    value = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+~") == key), None)
    quoted = value is not None and len(value) > 1 and value[0] == value[-1] and value[0] in "'\""
    if not quoted:
        return value
    # Hydra's escapes in a quoted string: backslashes before its quote character, or at its end, doubled
    inner = re.sub(rf"((?:\\\\)*)\\{value[0]}", lambda m: m[1][:len(m[1]) // 2] + value[0], value[1:-1])
    return re.sub(r"((?:\\\\)+)$", lambda m: m[1][:len(m[1]) // 2], inner)


def _interpolation_message(error: InterpolationResolutionError, cfg: DictConfig) -> str:
    """An interpolation that does not resolve, named with its key and the value as written."""
    key = error.full_key or "?"
    written = _secret_shown(key, _written_value(cfg, key))
    text = first_line(error)
    if isinstance(error, InterpolationKeyError):
        missing = text.split("'")[1] if text.count("'") >= 2 else "?"
        why = f"{missing} is no key of this configuration{_did_you_mean(missing, schema.known_keys())}"
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


def _written_value(cfg: DictConfig, key: str):
    """The value of a dotted key (`stream.urls[1]`) as written, interpolations unresolved."""
    value = _lookup(OmegaConf.to_container(cfg, resolve=False), key)
    return "?" if value is _ABSENT else _shown(value)


_ABSENT = object()


def _lookup(container, key: str):
    """The value of a dotted key (`stream.urls[1]`) in plain dicts and lists, else _ABSENT."""
    for part in key.replace("[", ".").replace("]", "").split("."):
        try:
            container = container[int(part) if isinstance(container, list) else part]
        except (KeyError, IndexError, ValueError, TypeError):
            return _ABSENT
    return container


def _key_message(key: str) -> str:
    if key in schema.known_keys():  # a key of some option of its group, but not of the chosen one
        return f"{key}: not a key of this configuration (the chosen {key.split('.')[0]} option has no such key)"
    return no_such_key(key)


def no_such_key(key: str) -> str:
    return f"{key}: no such configuration key{_did_you_mean(key, schema.known_keys())} (see bmb-stream --help)"


def _did_you_mean(word: str, known) -> str:
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _check(cond: bool, key: str, accepted: str, value) -> None:
    if not cond:
        raise ConfigError(f"{key}={_shown(value)}: must be {accepted}")


def _secret_shown(key: str, shown: str) -> str:
    """A value as shown in a message: <redacted> for a key that names a credential."""
    return redaction.REDACTED if redaction.names_secret(key) and shown != "null" else shown


def _shown(value) -> str:
    """A value as the user wrote it: a float key's 0 reads 0, not 0.0."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, (list, ListConfig)):
        return f"[{', '.join(_shown(v) for v in value)}]"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError on the first value missing, of the wrong type or out of range; `cfg` is not changed."""
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as e:
        key = e.full_key
        hint = {"root": " (the folder of the dataset's files)",
                "num_classes": " (an image folder's: counted from <root>/train when that folder exists)"}.get(
                    key.rpartition(".")[2], "")
        raise ConfigError(f"{key} is required{hint}: add {key}=...") from None
    _check_keys(cfg, schema.Config, "")
    _check_relations(cfg)
    for key in ("run.dir", "stream.cache_dir"):  # written to by libraries (TensorBoard) that take only text
        folder = OmegaConf.select(cfg, key)
        if isinstance(folder, str) and not _is_text(folder):
            raise ConfigError(f"{key}={os.fsencode(folder).decode('utf-8', 'backslashreplace')}: the folder's name is "
                              f"not valid UTF-8; choose a name in UTF-8")
    root = cfg.dataset.get("root")
    if root is not None and not Path(root).exists():
        hint = " (apt-get install dataset-fashion-mnist)" if cfg.dataset.source == "fashion_mnist" else ""
        raise ConfigError(f"dataset.root={root}: folder not found{hint}")
    if cfg.device.startswith("cuda"):
        import torch

        _check(torch.cuda.is_available(), "device", "auto or cpu: no CUDA device is available here", cfg.device)


def _is_text(value: str) -> bool:
    """False for a name that came in as bytes that are not UTF-8 (kept as surrogates)."""
    try:
        value.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _check_keys(node: DictConfig, node_schema: type, prefix: str) -> None:
    """Every key of `node` against the check its schema declares (a group's node is typed by the chosen
    option's schema)."""
    own = OmegaConf.get_type(node)
    declared = schema.schema_fields(own if schema.is_schema(own) else node_schema)
    written = OmegaConf.to_container(node, resolve=False)  # a value is shown as written: `${seed}`, not its value
    for name in node:
        f, key = declared.get(name), f"{prefix}{name}"
        if f is None:
            raise ConfigError(no_such_key(key))
        value = node[name]
        ok, accepted = schema.field_check(f)
        if not ok(value):
            raise ConfigError(f"{key}={_secret_shown(key, _shown(written[name]))}: must be {accepted}")
        sub = schema.section_schema(f) or (OmegaConf.get_type(value) if isinstance(value, DictConfig) else None)
        if schema.is_schema(sub):
            _check_keys(value, sub, f"{key}.")


def _check_relations(cfg: DictConfig) -> None:
    """The checks that involve more than one key."""
    r = cfg.storage.retry
    _check(r.backoff_s <= r.max_backoff_s, "storage.retry.backoff_s", "<= storage.retry.max_backoff_s", r.backoff_s)
    _check(not cfg.stream.resampled or cfg.stream.max_experiences, "stream.max_experiences",
           "set for a resampled (endless) stream", cfg.stream.max_experiences)
    d = cfg.dataset
    if d.get("labeled_ratio") is None and "gamma_l" in d:
        _check(d.gamma_l != 0 and d.gamma_u != 0, "dataset.gamma_l", "non-zero (and dataset.gamma_u too)", d.gamma_l)


def check_simulated_stream(cfg: DictConfig) -> None:
    """Without stream.urls, stream mode simulates stream.recipe: it must be a stream of the configured
    dataset, so that a run never reports one dataset while training on another."""
    recipe = cfg.stream.recipe
    if not recipe:
        raise ConfigError("stream.urls is required in stream mode (shard URLs or a stream folder), "
                          "or stream.recipe=NAME to simulate one of streams/")
    path = Path(recipe) if Path(recipe).suffix else Path(__file__).resolve().parents[1] / "streams" / f"{recipe}.yaml"
    if not path.exists():
        return  # load_recipe names the shipped recipes
    streamed = OmegaConf.load(path).get("dataset")
    if streamed != cfg.dataset.name:
        experiment = f"experiment={cfg.experiment_name} " if cfg.get("experiment_name") else ""
        raise ConfigError(f"{experiment}dataset={cfg.dataset.name} in stream mode without stream.urls would train on "
                          f"stream.recipe={recipe}, a {streamed} stream: give stream.urls=... (shards of "
                          f"{cfg.dataset.name}), a recipe of it (stream.recipe=...), or --mode offline for the "
                          f"offline protocol")


def redacted(cfg: DictConfig) -> DictConfig:
    """A resolved copy of the config without credentials, for config.yaml and checkpoints: keys that name
    a credential read <redacted>, URLs (list items too) lose their passwords and signed-URL tokens."""
    return OmegaConf.create(_without_secrets(OmegaConf.to_container(cfg, resolve=True)))


def _without_secrets(value, key: str = ""):
    if isinstance(value, dict):
        return {name: _without_secrets(v, f"{key}.{name}" if key else str(name)) for name, v in value.items()}
    if isinstance(value, list):
        return [_without_secrets(v, key) for v in value]
    if value is not None and redaction.names_secret(key):
        return redaction.REDACTED
    return redaction.redact_text(value) if isinstance(value, str) else value


def is_credential(override: str) -> bool:
    """Whether a KEY=VALUE argument gives a credential: its key names one, or its value is a section
    (`storage.s3={secret_access_key: ...}`) with a key that does."""
    key, _, value = override.partition("=")
    return redaction.names_secret(key.lstrip("+~")) or bool(_section_secrets(value))


def redact_text(text: str, overrides: list[str]) -> str:
    """`text` with the values of credential overrides blanked, and every URL's user information and
    signed-URL token. A value is blanked where it stands as a token of its own, however short: not
    inside a longer word."""
    secrets = {v for override in filter(is_credential, overrides) for v in _credential_values(override)}
    for given in sorted(secrets, key=len, reverse=True):  # the whole value before the parts it holds
        text = re.sub(rf"(?<![\w-]){re.escape(given)}(?![\w-])", redaction.REDACTED, text)
    return redaction.redact_text(text)


# a run of characters between a list's or a section's punctuation, not a key (followed by `:`)
_SCALAR = re.compile(r"""[^\s{}\[\],:'"]+(?![^\s{}\[\],:'"])(?!\s*:)""")


def _credential_values(override: str) -> set[str]:
    """The secrets a credential override gives: its whole value when its key names a credential, else
    the values of the section's keys that do; each as typed, unquoted, and the scalars it holds (a
    message may show a list or a section spaced otherwise)."""
    key, _, value = override.partition("=")
    found = set()
    for v in [value] if redaction.names_secret(key.lstrip("+~")) else _section_secrets(value):
        without_interpolations = re.sub(r"\$\{[^{}]*\}", " ", v)  # they name keys and variables, no secret
        found |= {v.strip(), v.strip().strip("'\""), *_SCALAR.findall(without_interpolations)}
    return {v for v in found if v and v != "null"}


def _section_secrets(value: str) -> list[str]:
    """The values, as typed, of the keys naming a credential in a section `{name: value, ...}`, at any depth."""
    if value.lstrip()[:1] != "{":
        return []
    return [_value_at(value, m.end()) for m in re.finditer(r"([\w.-]+)\s*:\s*", value) if redaction.names_secret(m[1])]


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
