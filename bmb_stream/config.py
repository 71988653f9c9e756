"""Composing the configuration (Hydra, from the top-level configs/, typed by the schema in
bmb_stream/config_schema.py) and validating it, so that a bad value ends with one line naming the key
and what it accepts."""

from __future__ import annotations

import difflib
import os
import time
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, ValidationError

from bmb_stream import config_schema as schema

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
    _refuse_unread_overrides(cfg, overrides)
    _without_dataset_folders(cfg)
    _count_class_folders(cfg)
    validate(cfg)
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
    with method=fixmatch, kept from the experiment's files but never read) is refused, not ignored."""
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


def _hydra_message(error: Exception, overrides: list[str]) -> str:
    text = str(error).strip().splitlines()[0]
    if type(error).__name__ == "OverrideParseException":
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
    if not isinstance(error, ValidationError):
        return None
    key = error.full_key.split("[")[0]
    parent = error.object_type
    f = schema.schema_fields(parent).get(error.key) if schema.is_schema(parent) else schema.find_field(key)
    if f is None:
        return None
    typed = _override_value(overrides, key)
    return f"{key}={typed if typed is not None else _shown(error.value)}: must be {schema.field_check(f)[1]}"


def _override_value(overrides: list[str], key: str) -> str | None:
    """The value the overrides give `key`, as typed."""
    return next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+~") == key), None)


def _key_message(key: str) -> str:
    if key in schema.known_keys():  # a key of some option of its group, but not of the chosen one
        return f"{key}: not a key of this configuration (the chosen {key.split('.')[0]} option has no such key)"
    return _no_such_key(key)


def _no_such_key(key: str) -> str:
    return f"{key}: no such configuration key{_did_you_mean(key, schema.known_keys())} (see bmb-stream --help)"


def _did_you_mean(word: str, known) -> str:
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _check(cond: bool, key: str, accepted: str, value) -> None:
    if not cond:
        raise ConfigError(f"{key}={_shown(value)}: must be {accepted}")


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
    root = cfg.dataset.get("root")
    if root is not None and not Path(root).exists():
        hint = " (apt-get install dataset-fashion-mnist)" if cfg.dataset.source == "fashion_mnist" else ""
        raise ConfigError(f"dataset.root={root}: folder not found{hint}")
    if cfg.device.startswith("cuda"):
        import torch

        _check(torch.cuda.is_available(), "device", "auto or cpu: no CUDA device is available here", cfg.device)


def _check_keys(node: DictConfig, node_schema: type, prefix: str) -> None:
    """Every key of `node` against the check its schema declares. A group's node is typed by the chosen
    option's schema; an open one (schema.CARRIES) is checked against the schema it carries too."""
    own = OmegaConf.get_type(node)
    declared = schema.schema_fields(own if schema.is_schema(own) else node_schema)
    carried = schema.schema_fields(schema.CARRIES[own]) if own in schema.CARRIES else {}
    for name in node:
        f, key = declared.get(name) or carried.get(name), f"{prefix}{name}"
        if f is None:
            raise ConfigError(_no_such_key(key))
        value = node[name]
        ok, accepted = schema.field_check(f)
        _check(ok(value), key, accepted, value)
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


SECRET_KEYS = ("storage.s3.access_key_id", "storage.s3.secret_access_key", "storage.s3.session_token")


def redacted(cfg: DictConfig) -> DictConfig:
    """A copy of the config without credentials, for config.yaml and checkpoints."""
    out = cfg.copy()
    for key in SECRET_KEYS:
        if OmegaConf.select(out, key) is not None:
            OmegaConf.update(out, key, "<redacted>", force_add=False)
    return out


def redact_text(text: str, overrides: list[str]) -> str:
    """`text` with the values of credential overrides (any key naming a secret or key id) blanked."""
    for o in overrides:
        key, _, value = o.partition("=")
        if value and any(word in key.lower() for word in ("secret", "access_key", "password", "token")):
            text = text.replace(value, "<redacted>")
    return text
