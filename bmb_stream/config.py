"""Composing the configuration (Hydra, from the top-level configs/) and validating it, so that a bad
value ends with one line naming the key and what it accepts."""

from __future__ import annotations

import os
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
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
        return f"{key}: no such configuration key (see bmb-stream --help for the groups and common keys)"
    for group in GROUPS:
        if f"'{group}/" in text or f"{group}/" in text and "Could not find" in text:
            chosen = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+~") == group), "?")
            return f"{group}={chosen}: unknown option; accepted: {', '.join(group_options(group))}"
    return text


def _check(cond: bool, key: str, accepted: str, cfg: DictConfig) -> None:
    if not cond:
        raise ConfigError(f"{key}={OmegaConf.select(cfg, key)}: must be {accepted}")


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError on the first value out of range or missing."""
    if cfg.mode == "stream" and cfg.stream.urls:  # the shards carry the data: the dataset's folders are not read
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
    _check(cfg.device in ("auto", "cpu", "cuda") or str(cfg.device).startswith("cuda:"), "device", "auto, cpu or cuda", cfg)
    t = cfg.train
    for key in ("steps", "eval_every", "batch_labeled", "batch_unlabeled", "log_every"):
        _check(isinstance(t[key], int) and t[key] > 0, f"train.{key}", "a positive integer", cfg)
    _check(isinstance(t.num_workers, int) and t.num_workers >= 0, "train.num_workers", "an integer >= 0", cfg)
    _check(0 <= t.ema_decay < 1, "train.ema_decay", "in [0, 1) (0 turns the EMA model off)", cfg)
    _check(cfg.optim.name in ("adam", "sgd"), "optim.name", "adam or sgd", cfg)
    _check(cfg.optim.schedule in ("constant", "cosine", "fixmatch_cosine"), "optim.schedule",
           "constant, cosine or fixmatch_cosine", cfg)
    _check(cfg.optim.lr > 0, "optim.lr", "positive", cfg)
    _check(cfg.optim.weight_decay >= 0 and cfg.optim.wd_shrink >= 0, "optim.weight_decay", ">= 0 (and optim.wd_shrink too)", cfg)
    _check(cfg.eval.headline in ("final", "best", "mean_last_20", "median_last_20"), "eval.headline",
           "final, best, mean_last_20 or median_last_20", cfg)
    _check(cfg.eval.batch_size > 0, "eval.batch_size", "a positive integer", cfg)
    _check(cfg.stream.on_shard_error in ("fail", "skip"), "stream.on_shard_error", "fail or skip", cfg)
    r = cfg.storage.retry
    _check(r.budget_s >= 0, "storage.retry.budget_s", ">= 0", cfg)
    _check(0 < r.backoff_s <= r.max_backoff_s, "storage.retry.backoff_s", "positive and <= storage.retry.max_backoff_s", cfg)
    _check(cfg.storage.s3.connect_timeout_s > 0 and cfg.storage.s3.read_timeout_s > 0, "storage.s3.connect_timeout_s",
           "positive (and storage.s3.read_timeout_s too)", cfg)
    m = cfg.method
    _check(m.eval_head in ("std", "bal"), "method.eval_head", "std or bal", cfg)
    if m.name != "supervised":
        _check(0 < m.tau <= 1, "method.tau", "in (0, 1]", cfg)
        _check(m.lambda_u >= 0, "method.lambda_u", ">= 0", cfg)
        _check(m.warmup >= 0, "method.warmup", "an integer >= 0", cfg)
    if m.name == "bmb":
        _check(m.lambda_mb >= 0, "method.lambda_mb", ">= 0", cfg)
        _check(m.bank.capacity > 0, "method.bank.capacity", "a positive integer", cfg)
        _check(m.bank.draw > 0, "method.bank.draw", "a positive integer", cfg)
        _check(m.bank.beta_put >= 0, "method.bank.beta_put", ">= 0", cfg)
        _check(m.bank.beta_get >= 0, "method.bank.beta_get", ">= 0", cfg)
        _check(m.bank.count_floor > 0, "method.bank.count_floor", "positive", cfg)
        _check(m.bank.features in ("strong", "weak"), "method.bank.features", "strong or weak", cfg)
        _check(m.weights.alpha >= 0, "method.weights.alpha", ">= 0", cfg)
        _check(m.weights.unlabeled_source in ("estimate", "labeled"), "method.weights.unlabeled_source",
               "estimate or labeled", cfg)
        _check(m.estimate.kind in ("cumulative", "ema"), "method.estimate.kind", "cumulative or ema", cfg)
        _check(0 <= m.estimate.momentum < 1, "method.estimate.momentum", "in [0, 1)", cfg)
    st = cfg.stream
    _check(isinstance(st.shards_per_experience, int) and st.shards_per_experience > 0, "stream.shards_per_experience",
           "a positive integer", cfg)
    _check(st.max_experiences is None or (isinstance(st.max_experiences, int) and st.max_experiences > 0),
           "stream.max_experiences", "null or a positive integer", cfg)
    _check(isinstance(st.num_workers, int) and st.num_workers >= 0, "stream.num_workers", "an integer >= 0", cfg)
    _check(isinstance(st.passes, int) and st.passes > 0, "stream.passes", "a positive integer", cfg)
    _check(isinstance(st.eval_every, int) and st.eval_every > 0, "stream.eval_every", "a positive integer", cfg)
    _check(isinstance(st.labeled_pool, int) and st.labeled_pool >= 0, "stream.labeled_pool", "an integer >= 0", cfg)
    _check(not st.resampled or st.max_experiences, "stream.max_experiences", "set for a resampled (endless) stream", cfg)
    d = cfg.dataset
    _check(d.num_classes > 1, "dataset.num_classes", "an integer > 1", cfg)
    _check(d.image_size > 0, "dataset.image_size", "a positive integer", cfg)
    if d.get("labeled_ratio") is not None:
        _check(0 < d.labeled_ratio <= 1, "dataset.labeled_ratio", "in (0, 1]", cfg)
    else:
        _check(d.n1 > 0, "dataset.n1", "a positive integer", cfg)
        _check(d.m1 >= 0, "dataset.m1", "an integer >= 0", cfg)
        _check(d.gamma_l != 0 and d.gamma_u != 0, "dataset.gamma_l", "non-zero (and dataset.gamma_u too)", cfg)
    root = d.get("root")
    if root is not None and not Path(str(root)).exists():
        hint = " (apt-get install dataset-fashion-mnist)" if d.source == "fashion_mnist" else ""
        raise ConfigError(f"dataset.root={root}: folder not found{hint}")


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
