"""Composing the configuration (Hydra, from the top-level configs/) and validating it, so that a bad
value ends with one line naming the key and what it accepts."""

from __future__ import annotations

import difflib
import os
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from bmb_stream.evaluation.summary import STATISTICS
from omegaconf.errors import MissingMandatoryValue

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


def compose(overrides: list[str]) -> DictConfig:
    """The configuration for these Hydra overrides, validated, with run.dir filled in."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(redact_text(_hydra_message(e, overrides), overrides)) from None
    validate(cfg)
    if cfg.run.dir is None:
        name = cfg.experiment_name or cfg.dataset.name
        cfg.run.dir = str(Path("runs") / f"{name}-{cfg.method.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    return cfg


def _hydra_message(error: Exception, overrides: list[str]) -> str:
    text = str(error).strip().splitlines()[0]
    if type(error).__name__ == "OverrideParseException":
        return f"cannot parse the overrides ({text}); write KEY=VALUE, quoting lists: 'key=[1,2]'"
    if text.startswith("Could not override '"):
        key = text.split("'")[1]
        known = _known_keys()
        if key in known:  # a key of the default config that the chosen option of its group lacks
            return f"{key}: not a key of this configuration (the chosen {key.split('.')[0]} option has no such key)"
        return f"{key}: no such configuration key{_did_you_mean(key, known)} (see bmb-stream --help)"
    for group in GROUPS:
        if f"'{group}/" in text or f"{group}/" in text and "Could not find" in text:
            chosen = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+~") == group), "?")
            return (f"{group}={chosen}: unknown option; accepted: {', '.join(group_options(group))}"
                    f"{_did_you_mean(chosen, group_options(group))}")
    return text


def _did_you_mean(word: str, known) -> str:
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _known_keys() -> list[str]:
    """Every key of the default configuration, dotted."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        cfg = hydra_compose(config_name="config")
    keys, stack = [], [("", OmegaConf.to_container(cfg))]
    while stack:
        prefix, node = stack.pop()
        for k, v in node.items():
            (stack.append((f"{prefix}{k}.", v)) if isinstance(v, dict) else keys.append(f"{prefix}{k}"))
    return keys


def _check(cond: bool, key: str, accepted: str, cfg: DictConfig) -> None:
    if not cond:
        raise ConfigError(f"{key}={_shown(OmegaConf.select(cfg, key))}: must be {accepted}")


def _shown(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


# The type and range of every key a user may set, declared once. A spec is (predicate, what it accepts).
def integer(low: int | None = None, nullable: bool = False):
    text = {None: "an integer", 1: "a positive integer"}.get(low, f"an integer >= {low}") + (" or null" if nullable else "")
    return (lambda v: (nullable and v is None)
            or (isinstance(v, int) and not isinstance(v, bool) and (low is None or v >= low))), text


def number(low: float | None = None, high: float | None = None, open_low: bool = False, open_high: bool = False,
           nullable: bool = False):
    if low is not None and high is not None:
        text = f"in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    elif low is not None:
        text = "positive" if low == 0 and open_low else f"{'>' if open_low else '>='} {low}"
    else:
        text = "a number"
    text += " or null" if nullable else ""

    def ok(v) -> bool:
        if nullable and v is None:
            return True
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
            return False
        return ((low is None or (v > low if open_low else v >= low))
                and (high is None or (v < high if open_high else v <= high)))
    return ok, text


def boolean():
    return (lambda v: isinstance(v, bool)), "true or false"


def choice(*options: str):
    return (lambda v: v in options), ", ".join(options[:-1]) + f" or {options[-1]}" if len(options) > 1 else options[0]


def text(nullable: bool = True):
    return (lambda v: isinstance(v, str) or (nullable and v is None)), "a string" + (" or null" if nullable else "")


SCHEDULES = ("constant", "cosine", "fixmatch_cosine")
POSITIVE = integer(1)
SCHEMA = {
    "seed": integer(0), "resume": boolean(), "progress": boolean(),
    "train.steps": POSITIVE, "train.eval_every": POSITIVE, "train.batch_labeled": POSITIVE,
    "train.batch_unlabeled": POSITIVE, "train.log_every": POSITIVE, "train.num_workers": integer(0),
    "train.ema_decay": number(0, 1, open_high=True), "train.ema_warmup": boolean(), "train.amp": boolean(),
    "optim.name": choice("adam", "sgd"), "optim.lr": number(0, open_low=True), "optim.momentum": number(0, 1),
    "optim.nesterov": boolean(), "optim.weight_decay": number(0), "optim.wd_shrink": number(0),
    "optim.schedule": choice(*SCHEDULES),
    "stream.shards_per_experience": POSITIVE, "stream.max_experiences": integer(1, nullable=True),
    "stream.shuffle_shards": boolean(), "stream.resampled": boolean(), "stream.num_workers": integer(0),
    "stream.passes": POSITIVE, "stream.eval_every": POSITIVE, "stream.labeled_pool": integer(0),
    "stream.keep_checkpoints": integer(0), "stream.on_shard_error": choice("fail", "skip"),
    "stream.recipe": text(), "stream.cache_dir": text(nullable=False),
    "storage.s3.path_style": boolean(), "storage.s3.connect_timeout_s": number(0, open_low=True),
    "storage.s3.read_timeout_s": number(0, open_low=True), "storage.retry.budget_s": number(0),
    "storage.retry.backoff_s": number(0, open_low=True), "storage.retry.max_backoff_s": number(0, open_low=True),
    "eval.batch_size": POSITIVE, "eval.headline": choice(*STATISTICS),
    "method.eval_head": choice("std", "bal"), "method.tau": number(0, 1, open_low=True),
    "method.lambda_u": number(0), "method.lambda_mb": number(0), "method.warmup": integer(0),
    "method.bank_warmup": integer(0, nullable=True),
    "method.bank.enabled": boolean(), "method.bank.capacity": POSITIVE, "method.bank.draw": POSITIVE,
    "method.bank.beta_put": number(0), "method.bank.beta_get": number(0),
    "method.bank.count_floor": number(0, open_low=True), "method.bank.features": choice("strong", "weak"),
    "method.bank.reset_after_warmup": boolean(), "method.bank.labeled": boolean(), "method.bank.count_rule": choice("reference", "present"),
    "method.weights.count_rule": choice("reference", "present"),
    "method.weights.enabled": boolean(), "method.weights.alpha": number(0),
    "method.weights.unlabeled_source": choice("estimate", "labeled"),
    "method.estimate.kind": choice("cumulative", "ema"), "method.estimate.momentum": number(0, 1, open_high=True),
    "method.estimate.threshold": boolean(),
    "model.width": POSITIVE, "model.small_stem": boolean(),
    "dataset.num_classes": integer(2), "dataset.image_size": POSITIVE, "dataset.n1": POSITIVE,
    "dataset.m1": integer(0), "dataset.gamma_l": number(), "dataset.gamma_u": number(),
    "dataset.labeled_ratio": number(0, 1, open_low=True, nullable=True), "dataset.split_shuffle": boolean(),
    "dataset.many_threshold": integer(0), "dataset.few_threshold": integer(0),
    "dataset.ratio_rounding": choice("ceil", "round"), "dataset.randaugment": choice("reference", "torchvision"),
}


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError on the first value of the wrong type, out of range or missing."""
    if cfg.mode == "stream" and cfg.stream.urls is not None:  # the shards carry the data: no dataset folders
        for key in ("root", "list_dir"):
            if key in cfg.dataset.keys() and OmegaConf.is_missing(cfg.dataset, key):  # `in` is False for ???
                cfg.dataset[key] = None
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as e:
        key = e.full_key
        hint = " (the folder of the dataset's files)" if key.endswith("root") else ""
        raise ConfigError(f"{key} is required{hint}: add {key}=...") from None
    _check(cfg.mode in ("offline", "stream"), "mode", "offline or stream", cfg)
    _check(isinstance(cfg.device, str) and (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")),
           "device", "auto, cpu, cuda or cuda:N", cfg)
    for key, (ok, accepted) in SCHEMA.items():
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if node is not None and leaf in node:
            _check(ok(node[leaf]), key, accepted, cfg)
    r = cfg.storage.retry
    _check(r.backoff_s <= r.max_backoff_s, "storage.retry.backoff_s", "<= storage.retry.max_backoff_s", cfg)
    _check(not cfg.stream.resampled or cfg.stream.max_experiences, "stream.max_experiences",
           "set for a resampled (endless) stream", cfg)
    d = cfg.dataset
    if d.get("labeled_ratio") is None and "gamma_l" in d:
        _check(d.gamma_l != 0 and d.gamma_u != 0, "dataset.gamma_l", "non-zero (and dataset.gamma_u too)", cfg)
    for key in ("mean", "std"):
        values = d.get(key)
        _check(values is not None and len(values) == 3 and all(number()[0](v) for v in values), f"dataset.{key}",
               "a list of three numbers", cfg)
    root = d.get("root")
    if root is not None and not Path(str(root)).exists():
        hint = " (apt-get install dataset-fashion-mnist)" if d.source == "fashion_mnist" else ""
        raise ConfigError(f"dataset.root={root}: folder not found{hint}")
    if cfg.device.startswith("cuda"):
        import torch

        _check(torch.cuda.is_available(), "device", "auto or cpu: no CUDA device is available here", cfg)


def check_simulated_stream(cfg: DictConfig) -> None:
    """Without stream.urls, stream mode simulates stream.recipe: it must be a stream of the configured
    dataset, so that a run never reports one dataset while training on another."""
    recipe = cfg.stream.recipe
    if not recipe:
        raise ConfigError("stream.urls is required in stream mode (shard URLs or a stream folder), "
                          "or stream.recipe=NAME to simulate one of streams/")
    path = Path(str(recipe)) if Path(str(recipe)).suffix else Path(__file__).resolve().parents[1] / "streams" / f"{recipe}.yaml"
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
