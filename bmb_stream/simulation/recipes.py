"""Stream recipes (streams/*.yaml): loaded with KEY=VALUE overrides, checked, and their dataset
resolved on the dataset schema."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from bmb_stream.errors import ConfigError, first_line

MAX_SHARDS = 100_000  # the plan holds a prior per shard and class, and every image's index:
MAX_STREAM_IMAGES = 100_000_000  # bounds that keep it in memory and far above any real stream


def recipe_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "streams"


def load_recipe(name_or_path: str, overrides: list[str] = ()) -> tuple[str, dict]:
    """The recipe's name and its resolved content, with KEY=VALUE overrides applied."""
    path = Path(name_or_path)
    if not path.suffix:
        path = recipe_dir() / f"{name_or_path}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in recipe_dir().glob("*.yaml")))
        raise ConfigError(f"recipe {name_or_path!r} not found; shipped recipes: {known}")
    base = OmegaConf.load(path)
    OmegaConf.set_struct(base, True)  # a misspelt key is an error, except where keys depend on the choice:
    for open_key in ("dataset_overrides", "prior"):  # any dataset key, and each schedule's own parameters
        if open_key in base:
            OmegaConf.set_struct(base[open_key], False)
    try:
        merged = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
        recipe = OmegaConf.to_container(merged, resolve=True, throw_on_missing=True)
    except Exception as e:  # omegaconf's errors name the key
        raise ConfigError(f"recipe {path.stem}: {first_line(e)}") from None
    return path.stem, recipe


def check_recipe(recipe: dict) -> None:
    """The recipe's own values; a wrong one is a one-line ConfigError naming its key."""
    def number(value, kind=int) -> bool:
        return isinstance(value, kind) and not isinstance(value, bool)

    if recipe.get("on_exhausted") not in ("stop", "reuse"):
        raise ConfigError(f"on_exhausted={recipe.get('on_exhausted')}: must be stop or reuse")
    for key, low in (("seed", 0), ("shards", 1), ("samples_per_shard", 1), ("max_samples_per_set_shard", 1),
                     ("test_per_class", 1), ("shorter_side", 1)):
        value = recipe.get(key)
        optional = key in ("max_samples_per_set_shard", "test_per_class", "shorter_side")
        if not (optional and value is None) and not (number(value) and value >= low):
            raise ConfigError(f"{key}={value}: must be an integer >= {low}{' or null' if optional else ''}")
    if recipe["shards"] > MAX_SHARDS:
        raise ConfigError(f"shards={recipe['shards']}: at most {MAX_SHARDS:,}; use fewer, larger shards")
    if (total := recipe["shards"] * recipe["samples_per_shard"]) > MAX_STREAM_IMAGES:
        raise ConfigError(f"shards x samples_per_shard = {total:,} images: a stream holds at most "
                          f"{MAX_STREAM_IMAGES:,}; lower shards= or samples_per_shard=")
    fraction = recipe.get("labeled_fraction")
    if not (number(fraction, (int, float)) and 0 <= fraction <= 1):
        raise ConfigError(f"labeled_fraction={fraction}: must be a number in [0, 1]")


def dataset_config(recipe: dict):
    """The recipe's dataset: its option of configs/dataset/ on the dataset schema, with dataset_overrides."""
    from bmb_stream.config import option_config
    from bmb_stream.config_schema import group_options

    name = recipe.get("dataset")
    if name not in group_options("dataset"):
        raise ConfigError(f"dataset={name}: not a dataset config; accepted: {', '.join(group_options('dataset'))}")
    try:
        cfg = OmegaConf.merge(option_config("dataset", name), recipe.get("dataset_overrides") or {})
    except Exception as e:  # a key the dataset has not, or a value of the wrong type
        raise ConfigError(f"dataset_overrides: {first_line(e)}") from None
    try:
        OmegaConf.to_container(cfg, throw_on_missing=True)
    except Exception as e:
        raise ConfigError(f"dataset_overrides: {first_line(e)} (e.g. root=/path/to/data)") from None
    return cfg
