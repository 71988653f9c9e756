"""Stream recipes (streams/*.yaml): loaded with KEY=VALUE overrides, checked, and their dataset
resolved on the dataset schema."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from omegaconf import MISSING as OMEGACONF_MISSING
from omegaconf import OmegaConf

from bmb_stream.config_checks import COUNT, POSITIVE, choice, integer, key, number
from bmb_stream.config_schema import Dataset, shipped_dir
from bmb_stream.errors import ConfigError, first_line
from bmb_stream.simulation.priors import Prior

MAX_SHARDS = 100_000  # the plan holds a prior per shard and class, and every image's index:
MAX_STREAM_IMAGES = 100_000_000  # bounds that keep it in memory and far above any real stream


def recipe_dir() -> Path:
    return shipped_dir("streams")


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


@dataclass(frozen=True)
class Recipe:
    """A recipe's keys, their checks and defaults. The recipe as written (a dict) is what the stream
    cache and the manifest keep; this is how the code reads it."""

    dataset: str  # an option of configs/dataset/
    shards: int = key(POSITIVE)
    samples_per_shard: int = key(POSITIVE)
    labeled_fraction: float = key(number(0, 1))  # stream samples that keep their class (cls)
    prior: Prior | None = None  # the class prior per shard (simulation/priors.py); required
    seed: int = key(COUNT, 0)
    dataset_overrides: dict = field(default_factory=dict)  # any key of the dataset's config (root=...)
    on_exhausted: str = key(choice("stop", "reuse"), "stop")  # a class runs out: stop the stream, or draw it again
    test_per_class: int | None = key(integer(1, nullable=True), None)  # at most this many test images per class
    max_samples_per_set_shard: int | None = key(integer(1, nullable=True), None)  # null: 10,000
    shorter_side: int | None = key(integer(1, nullable=True), None)  # larger images stored downscaled to it

    @classmethod
    def from_dict(cls, recipe: dict) -> Recipe:
        """The recipe's values checked; a wrong one is a one-line ConfigError naming its key."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(recipe) - set(names))
        if unknown:
            raise ConfigError(f"{unknown[0]}: no such key of a recipe; its keys: {', '.join(names)}")
        for f in fields(cls):
            required = f.default in (MISSING, OMEGACONF_MISSING) and f.default_factory is MISSING
            if f.name not in recipe and required:
                raise ConfigError(f"{f.name} is required: add {f.name}=...")
            check = f.metadata.get("check")
            if check is not None and f.name in recipe and not check[0](recipe[f.name]):
                raise ConfigError(f"{f.name}={recipe[f.name]}: must be {check[1]}")
        if recipe["shards"] > MAX_SHARDS:
            raise ConfigError(f"shards={recipe['shards']}: at most {MAX_SHARDS:,}; use fewer, larger shards")
        if (total := recipe["shards"] * recipe["samples_per_shard"]) > MAX_STREAM_IMAGES:
            raise ConfigError(f"shards x samples_per_shard = {total:,} images: a stream holds at most "
                              f"{MAX_STREAM_IMAGES:,}; lower shards= or samples_per_shard=")
        try:
            prior = Prior.from_recipe(recipe.get("prior") or {})
        except (ValueError, TypeError) as e:
            raise ConfigError(f"prior: {e}") from None
        return cls(**{**recipe, "prior": prior, "dataset_overrides": dict(recipe.get("dataset_overrides") or {})})


def dataset_config(recipe: Recipe) -> Dataset:
    """The recipe's dataset: its option of configs/dataset/ with dataset_overrides, as the dataset schema's
    object."""
    from bmb_stream.config import option_config
    from bmb_stream.config_schema import group_options

    name = recipe.dataset
    if name not in group_options("dataset"):
        raise ConfigError(f"dataset={name}: not a dataset config; accepted: {', '.join(group_options('dataset'))}")
    try:
        cfg = OmegaConf.merge(option_config("dataset", name), recipe.dataset_overrides)
    except Exception as e:  # a key the dataset has not, or a value of the wrong type
        raise ConfigError(f"dataset_overrides: {first_line(e)}") from None
    try:
        return OmegaConf.to_object(cfg)
    except Exception as e:
        raise ConfigError(f"dataset_overrides: {first_line(e)} (e.g. root=/path/to/data)") from None
