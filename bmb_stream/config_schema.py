"""The configuration's schema, declared once: every key with its type (Hydra structured configs,
registered in Hydra's ConfigStore) and, in each field's metadata, the range or choices `validate`
checks. The YAML files under configs/ hold the values: each one names its schema first in its
defaults list (`/schema/<group>/<option>@_here_`, the root config `schema`), so Hydra converts and
type-checks every value as it composes.

The root config's fields carry their defaults here (configs/config.yaml only chooses the groups); a
group option's fields default to ??? (MISSING) where each option's YAML file gives the value (a key
that no file gives is reported as required), and an algorithm's schema (bmb_stream/algorithms/)
carries its own defaults. Accepted
values of string choices are the tuples below, imported by the code that acts on them; the checks
are bmb_stream/config_checks.py."""

import dataclasses
import os
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig

from bmb_stream.algorithms import ALGORITHMS
from bmb_stream.config_checks import (  # noqa: F401
    COUNT,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    SECONDS,
    Check,
    anything,
    boolean,
    choice,
    device,
    integer,
    key,
    number,
    pixel_fractions,
    resume_mode,
    shard_urls,
    text,
)
from bmb_stream.errors import ConfigError

MODES = ("offline", "stream")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine", "fixmatch_cosine")
SHARD_ERRORS = ("fail", "skip")
RATIO_ROUNDINGS = ("ceil", "round")
RANDAUGMENT_KINDS = ("reference", "torchvision")
AUGMENT_PLACES = ("loader", "device")
WANDB_MODES = ("online", "offline", "disabled")
STATISTICS = ("final", "best", "mean_last_20", "median_last_20")  # what a run reports over its evaluations


# --- the root config: everything but the groups method, model and dataset ---------------------------
@dataclass
class Run:
    dir: str | None = None  # null: runs/<experiment>-<method>-<time>
    allow_nonempty: bool = False  # true: a new run may write into a folder that holds other files


@dataclass
class Train:
    steps: int = key(POSITIVE, 1000)  # offline mode; a stream run lasts as long as its stream
    eval_every: int = key(POSITIVE, 100)  # offline mode: evaluate every this many steps (and after the last)
    batch_labeled: int = key(POSITIVE, 64)  # per rank (the whole run's with global_batch)
    batch_unlabeled: int = key(POSITIVE, 64)
    # true: the batches above are the whole run's, split evenly over the ranks, so that a protocol keeps its
    # batch, steps and learning rate on any number of processes; false: each rank's
    global_batch: bool = False
    ema_decay: float = key(number(0, 1, open_high=True), 0.999)  # 0 turns the EMA model off (the raw weights are evaluated)
    ema_warmup: bool = False  # decay min(ema_decay, (1 + t) / (10 + t))
    num_workers: int = key(COUNT, 2)  # DataLoader workers of the labeled set (offline: of both sets)
    amp: bool = False  # bfloat16 autocast (GPU or CPU)
    channels_last: bool = False  # NHWC memory format for the model and its inputs
    compile: bool = False  # torch.compile the backbone (the first steps compile it: minutes for ResNet-50)
    log_every: int = key(POSITIVE, 10)  # steps between log points: step scalars (steps.jsonl, TensorBoard, W&B), progress


@dataclass
class Optim:
    name: str = key(choice(*OPTIMIZERS), "adam")
    lr: float = key(number(0, open_low=True), 0.002)
    momentum: float = key(number(0, 1), 0.9)  # sgd only
    nesterov: bool = True  # sgd only
    weight_decay: float = key(NON_NEGATIVE, 0.0)  # coupled L2 in the optimizer
    wd_shrink: float = key(NON_NEGATIVE, 0.02)  # the reference's decay: weights *= 1 - wd_shrink * lr after each step
    wd_shrink_buffers: bool = False  # the reference's shrink also scales the batch-norm running statistics
    schedule: str = key(choice(*SCHEDULES), "constant")  # cosine: to 0; fixmatch_cosine: cos(7 pi t / 16 T)


@dataclass
class Stream:
    # shard URLs: a brace pattern, a list, or a folder; local, file://, http(s)://, s3://
    urls: Any = key(shard_urls(), None)
    labeled_urls: Any = key(shard_urls(), None)  # the seed set's shards (null: the one the stream's manifest names)
    test_urls: Any = key(shard_urls(), None)  # the test set's shards (null: the one the stream's manifest names)
    recipe: str | None = None  # with no urls: simulate this recipe of streams/ once, cached in cache_dir
    cache_dir: str = "~/.cache/bmb-stream/streams"
    shards_per_experience: int = key(POSITIVE, 2)
    max_experiences: int | None = key(integer(1, nullable=True), None)  # required for a resampled (endless) stream
    shuffle_shards: bool = False  # shuffle the shard order once, with the seed
    resampled: bool = False  # draw shards with replacement, endlessly
    num_workers: int = key(COUNT, 2)  # DataLoader workers reading the stream (0: in the main process)
    passes: int = key(POSITIVE, 1)  # reads of each experience's shards before the next experience
    eval_every: int = key(POSITIVE, 1)  # evaluate after every this many experiences (and after the last)
    labeled_pool: int = key(COUNT, 1000)  # capacity of the class-balanced pool of labeled samples met in the stream
    keep_checkpoints: int = key(COUNT, 3)  # experience-boundary checkpoints kept besides checkpoints/last.pt
    on_shard_error: str = key(choice(*SHARD_ERRORS), "fail")  # fail: a bad shard ends the run | skip: skip it, count it


@dataclass
class S3:
    """s3:// shards. Null values fall back to boto3's own chain (the AWS_* variables, ~/.aws profiles,
    instance roles)."""
    endpoint_url: str | None = None  # $AWS_ENDPOINT_URL (e.g. http://127.0.0.1:9000 for a local server)
    region: str | None = None  # $AWS_DEFAULT_REGION
    access_key_id: str | None = None  # $AWS_ACCESS_KEY_ID (prefer the variables: config values end up in shell history)
    secret_access_key: str | None = None  # $AWS_SECRET_ACCESS_KEY; never written to config.yaml, checkpoints or logs
    session_token: str | None = None  # $AWS_SESSION_TOKEN (temporary credentials)
    path_style: bool = True  # bucket in the path (most S3-compatible servers); false: virtual-hosted style
    connect_timeout_s: float = key(SECONDS, 10.0)
    read_timeout_s: float = key(SECONDS, 30.0)  # a read that stalls, or trickles under 1 KB/s, this long is retried


@dataclass
class Retry:
    """Transient faults (resets, timeouts, 5xx, throttling) are retried with exponential backoff."""
    budget_s: float = key(number(0, infinite=True), 120.0)  # per fault; then the run stops, resumable (exit 75); inf: no limit
    backoff_s: float = key(SECONDS, 0.5)  # the first wait, doubled after each try
    max_backoff_s: float = key(SECONDS, 15.0)


@dataclass
class Storage:
    s3: S3 = field(default_factory=S3)
    retry: Retry = field(default_factory=Retry)


@dataclass
class Eval:
    batch_size: int = key(POSITIVE, 256)
    headline: str = key(choice(*STATISTICS), "mean_last_20")  # the statistic the run's closing table leads with
    keep_best: bool = False  # keep checkpoints/best.pt: the checkpoint of the best evaluation (balanced accuracy)


@dataclass
class Wandb:
    """Weights & Biases (pip install 'bmb-stream[wandb]'): the same scalars as TensorBoard."""
    enabled: bool = False
    project: str = "bmb-stream"
    entity: str | None = None  # null: your default entity
    name: str | None = None  # null: the run folder's name
    group: str | None = None  # e.g. one sweep's runs
    tags: list[str] = field(default_factory=list)
    mode: str = key(choice(*WANDB_MODES), "online")  # offline: kept under <run.dir>/wandb for `wandb sync`


@dataclass
class Config:
    seed: int = key(integer(0, bits=63), 0)  # what torch's generators take, with room for seed + step
    device: str = key(device(), "auto")  # auto | cpu | cuda
    # true: continue the run in run.dir; auto: continue it where there is one, else start it (one command
    # that starts and restarts a job: Slurm's requeue, torchrun --max-restarts)
    resume: Any = key(resume_mode(), False)
    progress: bool = True  # the progress bar
    experiment_name: str | None = None  # set by each experiment file
    run: Run = field(default_factory=Run)
    train: Train = field(default_factory=Train)
    optim: Optim = field(default_factory=Optim)
    stream: Stream = field(default_factory=Stream)
    storage: Storage = field(default_factory=Storage)
    eval: Eval = field(default_factory=Eval)
    wandb: Wandb = field(default_factory=Wandb)
    method: Any = MISSING  # the groups: typed by the chosen option's schema (OPTION_SCHEMAS below)
    model: Any = MISSING
    dataset: Any = MISSING
    mode: str = key(choice(*MODES))


# --- model -------------------------------------------------------------------------------------------
@dataclass
class Model:
    name: str = MISSING
    # a local state dict to start the backbone from (a run's export, torchvision's ResNet-50 weights, ...)
    pretrained: str | None = None


@dataclass
class SmallCNN(Model):
    width: int = key(POSITIVE, 16)  # channels of the first convolution (doubled at each stage)


@dataclass
class ResNet50(Model):
    small_stem: bool = False  # true: a 3x3 stem without max-pooling, for 32- and 64-pixel images


# --- dataset -----------------------------------------------------------------------------------------
@dataclass
class Dataset:
    name: str = MISSING
    source: str = MISSING
    root: str | None = MISSING  # null: a stream run reads its images from the shards
    num_classes: int = key(integer(2))
    image_size: int = key(POSITIVE)
    labeled_ratio: float | None = key(number(0, 1, open_low=True, nullable=True), None)  # null: counts n1, gamma_l
    ratio_rounding: str = key(choice(*RATIO_ROUNDINGS), "ceil")  # of a class's labeled_ratio share
    split_shuffle: bool = True  # false: the first images of each class in file order (a protocol's split)
    mean: list[float] = key(pixel_fractions())  # of pixel values scaled to [0, 1]: within [0, 1]
    std: list[float] = key(pixel_fractions(open_low=True))  # images are divided by it; at most 0.5 for [0, 1] values
    # the strong view's RandAugment: reference (the BMB code's, before the crop) | torchvision
    randaugment: str = key(choice(*RANDAUGMENT_KINDS), "torchvision")
    # where the strong views' RandAugment and Cutout run: loader (the workers, on PIL images) | device (on the
    # collated batch, where the model runs; the workers then only decode, resize, crop and flip)
    augment_on: str = key(choice(*AUGMENT_PLACES), "loader")
    many_threshold: int = key(COUNT, 100)  # classes with more labeled images are many-shot
    few_threshold: int = key(COUNT, 20)  # classes with fewer are few-shot (medium between)


@dataclass
class CountsDataset(Dataset):
    """Long-tailed counts: N_k = n1 * gamma_l ** (-k / (C - 1)) labeled, M_k likewise with m1, gamma_u."""
    n1: int = key(POSITIVE)
    m1: int = key(COUNT)
    gamma_l: float = key(number())
    gamma_u: float = key(number())


@dataclass
class CifarDataset(CountsDataset):
    download: bool = False  # true: torchvision fetches CIFAR into root


@dataclass
class RatioDataset(Dataset):
    """A labeled fraction of each class of a given (long-tailed) training set."""
    labeled_ratio: float = key(FRACTION)


@dataclass
class ImageNetLTDataset(RatioDataset):
    list_dir: str | None = None  # the folder of the list files (null: root)
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


OFFLINE_ONLY = ("train.steps", "train.eval_every")  # a stream run lasts as long as its stream


def key_modes(dotted: str) -> str:
    """The modes that read a key."""
    return "offline mode" if dotted in OFFLINE_ONLY else "stream mode" if dotted.startswith("stream.") else "both modes"


def _field_at(schema: type, parts: list[str]) -> dataclasses.Field | None:
    for i, part in enumerate(parts):
        f = schema_fields(schema).get(part)
        if f is None or i == len(parts) - 1:
            return f
        schema = section_schema(f)
        if schema is None:
            return None
    return None


def _shown_default(f: dataclasses.Field) -> str:
    value = f.default
    return "true" if value is True else "false" if value is False else "null" if value is None else str(value)


def key_reference() -> list[tuple[str, str, str, str]]:
    """Every key (a group's `name` aside: it is the option chosen): what it accepts, its default (or
    that each option's file sets it) and the modes that read it; a group's key names the options that
    declare it where not all do."""
    rows = []
    for dotted in known_keys():
        group, _, rest = dotted.partition(".")
        options = OPTION_SCHEMAS.get(group, {})
        if options and rest == "name":
            continue
        fields = {n: _field_at(s, rest.split(".")) for n, s in options.items()} if options else {"": find_field(dotted)}
        declared = {n: f for n, f in fields.items() if f is not None}
        defaults = {_shown_default(f) for f in declared.values() if f.default is not MISSING}
        unset = any(f.default is MISSING for f in declared.values())
        default = (("set by the option's file" if options else "chosen in configs/config.yaml") if unset and not defaults else
                   f"default {defaults.pop()}" if len(defaults) == 1 and not unset else "default per option")
        where = f" ({', '.join(declared)})" if options and len(declared) < len(options) else ""
        rows.append((dotted, field_check(next(iter(declared.values())))[1], default, key_modes(dotted) + where))
    return rows


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


# The config groups and their options: the accepted values of `mode=`, `method=`, `model=`, `dataset=`, `experiment=`.

GROUPS = ("mode", "method", "model", "dataset", "experiment")


def shipped_dir(name: str) -> Path:
    """A folder the project ships beside its code, `configs` or `streams`: inside the package when installed
    from a wheel (setup.py puts it there), at the top of the source checkout otherwise."""
    package = Path(__file__).resolve().parent
    return package / name if (package / name).is_dir() else package.parent / name


def config_dir() -> Path:
    """The configuration's folder: the shipped configs/, or BMB_STREAM_CONFIGS."""
    env = os.environ.get("BMB_STREAM_CONFIGS")
    path = Path(env) if env else shipped_dir("configs")
    if not (path / "config.yaml").exists():
        raise ConfigError(f"config folder {path} not found: reinstall bmb-stream (pip install bmb-stream, or "
                          f"pip install -e . in the source checkout), or set BMB_STREAM_CONFIGS to a configs/ folder")
    return path


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))
