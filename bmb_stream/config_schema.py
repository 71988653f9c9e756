"""The configuration's schema, declared once: every key with its type (Hydra structured configs,
registered in Hydra's ConfigStore) and, in each field's metadata, the range or choices `validate`
checks. The YAML files under configs/ hold the values: each one names its schema first in its
defaults list (`/schema/<group>/<option>@_here_`, the root config `schema`), so Hydra converts and
type-checks every value as it composes.

Fields default to ??? (MISSING): a YAML file gives the value, and a key that no file gives is reported
as required; an algorithm's schema (bmb_stream/algorithms/) carries its defaults instead. Accepted
values of string choices are the tuples below, imported by the code that acts on them; the checks
are bmb_stream/config_checks.py."""

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from bmb_stream.algorithms import ALGORITHMS
from bmb_stream.config_checks import (COUNT, FRACTION, NON_NEGATIVE, POSITIVE, SECONDS, Check, anything,  # noqa: F401
                                      boolean, choice, device, integer, key, number, pixel_fractions, shard_urls, text)
from bmb_stream.evaluation.summary import STATISTICS

MODES = ("offline", "stream")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine", "fixmatch_cosine")
SHARD_ERRORS = ("fail", "skip")
RATIO_ROUNDINGS = ("ceil", "round")
RANDAUGMENT_KINDS = ("reference", "torchvision")


# --- the root config: everything but the groups method, model and dataset ---------------------------
@dataclass
class Run:
    dir: str | None = MISSING  # null: runs/<experiment>-<method>-<time>
    allow_nonempty: bool = MISSING  # a new run may write into a folder that holds other files


@dataclass
class Train:
    steps: int = key(POSITIVE)
    eval_every: int = key(POSITIVE)
    batch_labeled: int = key(POSITIVE)
    batch_unlabeled: int = key(POSITIVE)
    ema_decay: float = key(number(0, 1, open_high=True))
    ema_warmup: bool = MISSING
    num_workers: int = key(COUNT)
    amp: bool = MISSING
    channels_last: bool = MISSING
    compile: bool = MISSING
    log_every: int = key(POSITIVE)


@dataclass
class Optim:
    name: str = key(choice(*OPTIMIZERS))
    lr: float = key(number(0, open_low=True))
    momentum: float = key(number(0, 1))
    nesterov: bool = MISSING
    weight_decay: float = key(NON_NEGATIVE)
    wd_shrink: float = key(NON_NEGATIVE)
    schedule: str = key(choice(*SCHEDULES))


@dataclass
class Stream:
    urls: Any = key(shard_urls())  # a brace pattern, a list or a folder
    labeled_urls: Any = key(shard_urls())
    test_urls: Any = key(shard_urls())
    recipe: str | None = MISSING
    cache_dir: str = MISSING
    shards_per_experience: int = key(POSITIVE)
    max_experiences: int | None = key(integer(1, nullable=True))
    shuffle_shards: bool = MISSING
    resampled: bool = MISSING
    num_workers: int = key(COUNT)
    passes: int = key(POSITIVE)
    eval_every: int = key(POSITIVE)
    labeled_pool: int = key(COUNT)
    keep_checkpoints: int = key(COUNT)
    on_shard_error: str = key(choice(*SHARD_ERRORS))


@dataclass
class S3:
    endpoint_url: str | None = MISSING
    region: str | None = MISSING
    access_key_id: str | None = MISSING
    secret_access_key: str | None = MISSING
    session_token: str | None = MISSING
    path_style: bool = MISSING
    connect_timeout_s: float = key(SECONDS)
    read_timeout_s: float = key(SECONDS)


@dataclass
class Retry:
    budget_s: float = key(number(0, infinite=True))  # inf: retry as long as it takes
    backoff_s: float = key(SECONDS)
    max_backoff_s: float = key(SECONDS)


@dataclass
class Storage:
    s3: S3 = field(default_factory=S3)
    retry: Retry = field(default_factory=Retry)


@dataclass
class Eval:
    batch_size: int = key(POSITIVE)
    headline: str = key(choice(*STATISTICS))


@dataclass
class Config:
    seed: int = key(integer(0, bits=63))  # what torch's generators take, with room for seed + step
    device: str = key(device())
    resume: bool = MISSING
    progress: bool = MISSING
    experiment_name: str | None = MISSING
    run: Run = field(default_factory=Run)
    train: Train = field(default_factory=Train)
    optim: Optim = field(default_factory=Optim)
    stream: Stream = field(default_factory=Stream)
    storage: Storage = field(default_factory=Storage)
    eval: Eval = field(default_factory=Eval)
    method: Any = MISSING  # the groups: typed by the chosen option's schema (OPTION_SCHEMAS below)
    model: Any = MISSING
    dataset: Any = MISSING
    mode: str = key(choice(*MODES))


# --- model -------------------------------------------------------------------------------------------
@dataclass
class Model:
    name: str = MISSING


@dataclass
class SmallCNN(Model):
    width: int = key(POSITIVE)


@dataclass
class ResNet50(Model):
    small_stem: bool = MISSING


# --- dataset -----------------------------------------------------------------------------------------
@dataclass
class Dataset:
    name: str = MISSING
    source: str = MISSING
    root: str | None = MISSING  # null: a stream run reads its images from the shards
    num_classes: int = key(integer(2))
    image_size: int = key(POSITIVE)
    labeled_ratio: float | None = key(number(0, 1, open_low=True, nullable=True))
    split_shuffle: bool = MISSING
    mean: list[float] = key(pixel_fractions())  # of pixel values scaled to [0, 1]: within [0, 1]
    std: list[float] = key(pixel_fractions(open_low=True))  # images are divided by it; at most 0.5 for [0, 1] values
    randaugment: str = key(choice(*RANDAUGMENT_KINDS))
    many_threshold: int = key(COUNT)
    few_threshold: int = key(COUNT)


@dataclass
class CountsDataset(Dataset):
    """Long-tailed counts: N_k = n1 * gamma_l ** (-k / (C - 1)) labeled, M_k likewise with m1, gamma_u."""
    n1: int = key(POSITIVE)
    m1: int = key(COUNT)
    gamma_l: float = key(number())
    gamma_u: float = key(number())


@dataclass
class CifarDataset(CountsDataset):
    download: bool = MISSING


@dataclass
class RatioDataset(Dataset):
    """A labeled fraction of each class of a given (long-tailed) training set."""
    labeled_ratio: float = key(FRACTION)
    ratio_rounding: str = key(choice(*RATIO_ROUNDINGS))


@dataclass
class ImageNetLTDataset(RatioDataset):
    list_dir: str | None = MISSING  # null: root
    train_list: str = MISSING
    test_list: str = MISSING


# Each group's options' schemas by name (/schema/<group>/<name> in a YAML's defaults list); a method's
# is its algorithm's `Config` (bmb_stream/algorithms/), with its defaults.
OPTION_SCHEMAS = {
    "method": {name: algorithm.Config for name, algorithm in ALGORITHMS.items()},
    "model": {"small_cnn": SmallCNN, "wrn28_2": Model, "resnet50": ResNet50},
    "dataset": {"counts": CountsDataset, "cifar": CifarDataset, "ratio": RatioDataset, "imagenet_lt": ImageNetLTDataset},
}


def register() -> None:
    """Put the schemas in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="schema", node=Config)
    for group, options in OPTION_SCHEMAS.items():
        for name, schema in options.items():
            store.store(group=f"schema/{group}", name=name, node=schema)


# --- looking fields up -------------------------------------------------------------------------------
def schema_fields(schema: type) -> dict[str, dataclasses.Field]:
    """The schema's fields, each with its type resolved (a schema written under `from __future__ import
    annotations` declares them as strings)."""
    hints = typing.get_type_hints(schema)
    fields = dataclasses.fields(schema)
    for f in fields:
        f.type = hints.get(f.name, f.type)
    return {f.name: f for f in fields}


def is_schema(t) -> bool:
    """Whether `t` is a schema class (a dataclass), as OmegaConf.get_type gives for a typed node."""
    return isinstance(t, type) and dataclasses.is_dataclass(t)


def section_schema(f: dataclasses.Field) -> type | None:
    """The schema of a field that is itself a section, else None."""
    return f.type if is_schema(f.type) else None


def field_check(f: dataclasses.Field) -> Check:
    """The field's declared check, else one its type implies (for the values of an open node)."""
    if "check" in f.metadata:
        return f.metadata["check"]
    if section_schema(f):
        return (lambda v: isinstance(v, DictConfig)), "a section of keys, not a value"
    args = typing.get_args(f.type)
    nullable = type(None) in args
    base = next((a for a in args if a is not type(None)), f.type) if nullable else f.type
    checks: dict[Any, Callable[[], Check]] = {bool: boolean, str: lambda: text(nullable),
                                              int: lambda: integer(nullable=nullable),
                                              float: lambda: number(nullable=nullable)}
    return checks.get(base, anything)()


def find_field(dotted: str) -> dataclasses.Field | None:
    """The field of a dotted key (`train.steps`, `dataset.mean[1]`); a group's key is the first of its
    options' schemas that declares it."""
    parts, candidates = dotted.split("[")[0].split("."), [Config]
    for i, part in enumerate(parts):
        found = next((schema_fields(s)[part] for s in candidates if part in schema_fields(s)), None)
        if found is None or i == len(parts) - 1:
            return found
        options = OPTION_SCHEMAS.get(part) if i == 0 else None
        candidates = list(options.values()) if options else [section_schema(found)] if section_schema(found) else []
    return None


def known_keys() -> list[str]:
    """Every dotted key some option of the schema declares."""
    keys: list[str] = []

    def walk(schema: type, prefix: str) -> None:
        for name, f in schema_fields(schema).items():
            if name in OPTION_SCHEMAS and schema is Config:
                for option in OPTION_SCHEMAS[name].values():
                    walk(option, f"{name}.")
            elif section_schema(f):
                walk(section_schema(f), f"{prefix}{name}.")
            elif f"{prefix}{name}" not in keys:
                keys.append(f"{prefix}{name}")
    walk(Config, "")
    return keys

