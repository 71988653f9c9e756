"""Composing the configuration (Hydra, from the top-level configs/, typed by the schema in
bmb_stream/config_schema.py) and validating it, so that a bad value ends with one line naming the key
and what it accepts."""

from __future__ import annotations

import os
import re
import time
import typing
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    InterpolationResolutionError,
    MissingMandatoryValue,
)

from bmb_stream import config_schema as schema
from bmb_stream.config_messages import (
    as_typed,
    hydra_message,
    interpolation_message,
    key_message,
    lookup,
    no_such_key,
    unless_secret,
)
from bmb_stream.config_schema import config_dir
from bmb_stream.errors import ConfigError
from bmb_stream.redaction import redact_message


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
        raise ConfigError(redact_message(hydra_message(e, overrides), overrides)) from None


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The configuration for these Hydra overrides (the command line's KEY=VALUE; none: the default job),
    validated, with run.dir filled in."""
    overrides = list(overrides)
    _refuse_loose_booleans(overrides)
    cfg = _hydra_compose("config", overrides)
    try:
        _refuse_unread_overrides(cfg, overrides)
        _refuse_null_interpolations(cfg, overrides)
        _without_dataset_folders(cfg)
        _count_class_folders(cfg)
        validate(cfg)
    except InterpolationResolutionError as e:
        raise ConfigError(redact_message(interpolation_message(e, cfg), overrides)) from None
    except ConfigError as e:
        raise ConfigError(redact_message(str(e), overrides)) from None
    if cfg.run.dir is None:
        name = cfg.experiment_name or cfg.dataset.name
        cfg.run.dir = str(Path("runs") / f"{name}-{cfg.method.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    return cfg


def typed(cfg: DictConfig | schema.Config) -> schema.Config:
    """The configuration as the schema's dataclasses, every interpolation resolved: what the run, its
    learner, algorithm and data read. The DictConfig ends at composition and validation."""
    return cfg if isinstance(cfg, schema.Config) else OmegaConf.to_object(cfg)


def stored_config(path: str | Path) -> schema.Config:
    """A run folder's config.yaml as the schema's objects: each group on the option schema that declares
    every key it holds, the closest such one; keys that a later version added take their defaults."""
    return config_from_stored(OmegaConf.load(path), str(path))


def config_from_stored(stored: DictConfig, source: str) -> schema.Config:
    """`stored_config` of a config already read (`source`: where from, for messages)."""
    path = source
    cfg = OmegaConf.merge(OmegaConf.structured(schema.Config),
                          {k: v for k, v in stored.items() if k not in schema.OPTION_SCHEMAS})
    for group, options in schema.OPTION_SCHEMAS.items():
        keys = set(stored[group].keys())
        fitting = [s for s in options.values() if keys <= set(schema.schema_fields(s))]
        if group == "method" and stored.method.name in options:
            fitting = [options[stored.method.name]]
        if not fitting:
            raise ConfigError(f"{path}: its {group} section ({', '.join(sorted(keys))}) fits no {group} schema")
        closest = min(fitting, key=lambda s: len(schema.schema_fields(s)))
        cfg[group] = OmegaConf.merge(OmegaConf.structured(closest), stored[group])
    return OmegaConf.to_object(cfg)


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


def _refuse_loose_booleans(overrides: list[str]) -> None:
    """A boolean key takes true or false: OmegaConf would also read yes/no/on/off (and `train.amp=yes`
    would start a job the user may not have meant)."""
    for override in overrides:
        key, _, value = override.partition("=")
        f = schema.find_field(key.lstrip("+~"))
        if f is not None and bool in (f.type, *typing.get_args(f.type)):
            if value.strip("'\"").lower() not in ("true", "false", "null") and not value.startswith("${"):
                raise ConfigError(f"{key.lstrip('+~')}={unless_secret(key, value)}: must be true or false")


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
                raise ConfigError(key_message(key))
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
        for leaf, given in _leaves(lookup(written, key), key):
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
        from bmb_stream.datasets.sources import class_folders

        d.num_classes = len(class_folders(train))


def _check(cond: bool, key: str, accepted: str, value) -> None:
    if not cond:
        raise ConfigError(f"{key}={as_typed(value)}: must be {accepted}")


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
    root = cfg.dataset.root
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
            raise ConfigError(f"{key}={unless_secret(key, as_typed(written[name]))}: must be {accepted}")
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
    if d.labeled_ratio is None and "gamma_l" in d:
        _check(d.gamma_l != 0 and d.gamma_u != 0, "dataset.gamma_l", "non-zero (and dataset.gamma_u too)", d.gamma_l)


def check_simulated_stream(cfg: schema.Config) -> None:
    """Without stream.urls, stream mode simulates stream.recipe: it must be a stream of the configured
    dataset, so that a run never reports one dataset while training on another."""
    recipe = cfg.stream.recipe
    if not recipe:
        raise ConfigError("stream.urls is required in stream mode (shard URLs or a stream folder), "
                          "or stream.recipe=NAME to simulate one of streams/")
    path = Path(recipe) if Path(recipe).suffix else schema.shipped_dir("streams") / f"{recipe}.yaml"
    if not path.exists():
        return  # load_recipe names the shipped recipes
    streamed = OmegaConf.load(path).get("dataset")
    if streamed != cfg.dataset.name:
        experiment = f"experiment={cfg.experiment_name} " if cfg.experiment_name else ""
        raise ConfigError(f"{experiment}dataset={cfg.dataset.name} in stream mode without stream.urls would train on "
                          f"stream.recipe={recipe}, a {streamed} stream: give stream.urls=... (shards of "
                          f"{cfg.dataset.name}), a recipe of it (stream.recipe=...), or --mode offline for the "
                          f"offline protocol")
