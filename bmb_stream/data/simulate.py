"""Simulated long-tailed streams: a recipe (streams/*.yaml) becomes stream shards, the labeled seed
set and the test set as shards, a manifest and a plot of the class prior per shard."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from tqdm import tqdm

import bmb_stream
from bmb_stream.data.object_store import ShardDestination
from bmb_stream.data.datasets import check_labels, load_pools, split_indices
from bmb_stream.data.priors import shard_priors
from bmb_stream.data.shards import ShardSample, write_set, write_shard

MANIFEST = "manifest.json"
FORMAT = "bmb-stream-shards/1"


class StreamError(ValueError):
    """A recipe or an output folder is wrong; str() is the one-line message for the user."""


def recipe_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "streams"


def load_recipe(name_or_path: str, overrides: list[str] = ()) -> tuple[str, dict]:
    """The recipe's name and its resolved content, with KEY=VALUE overrides applied."""
    path = Path(name_or_path)
    if not path.suffix:
        path = recipe_dir() / f"{name_or_path}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in recipe_dir().glob("*.yaml")))
        raise StreamError(f"recipe {name_or_path!r} not found; shipped recipes: {known}")
    base = OmegaConf.load(path)
    OmegaConf.set_struct(base, True)  # a misspelt key is an error, except where keys depend on the choice:
    for open_key in ("dataset_overrides", "prior"):  # any dataset key, and each schedule's own parameters
        if open_key in base:
            OmegaConf.set_struct(base[open_key], False)
    try:
        merged = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
        recipe = OmegaConf.to_container(merged, resolve=True, throw_on_missing=True)
    except Exception as e:  # omegaconf's errors name the key
        raise StreamError(f"recipe {path.stem}: {str(e).splitlines()[0]}") from None
    return path.stem, recipe


def dataset_config(recipe: dict):
    from bmb_stream.config import config_dir

    cfg = OmegaConf.load(config_dir() / "dataset" / f"{recipe['dataset']}.yaml")
    cfg = OmegaConf.merge(cfg, recipe.get("dataset_overrides") or {})
    try:
        OmegaConf.to_container(cfg, throw_on_missing=True)
    except Exception as e:
        raise StreamError(f"dataset_overrides: {str(e).splitlines()[0]} (e.g. root=/path/to/data)") from None
    return cfg


def plan_stream(recipe: dict, targets: np.ndarray, available: np.ndarray, num_classes: int) -> dict:
    """Which pool indices go into which shard, and whether each is labeled: deterministic for the seed.

    Samples are drawn without replacement, per class, until a class runs out; then the stream stops
    before that shard (on_exhausted=stop) or the class is drawn again from the start (reuse).
    """
    rng = np.random.default_rng(int(recipe["seed"]))
    num_shards, per_shard = int(recipe["shards"]), int(recipe["samples_per_shard"])
    if recipe["prior"].get("schedule") == "natural":  # every remaining image once, in a random order
        order = rng.permutation(available)[: num_shards * per_shard]
        mix = np.bincount(targets[available], minlength=num_classes) / max(1, len(available))
        shards = [{"indices": order[i: i + per_shard], "prior": mix,
                   "labeled": rng.random(len(order[i: i + per_shard])) < float(recipe["labeled_fraction"])}
                  for i in range(0, len(order), per_shard)]
        return {"shards": shards, "stopped_early": None, "reused_samples": 0}  # the last shard may be partial
    priors = shard_priors(recipe["prior"], num_classes, num_shards)
    by_class = [rng.permutation(available[targets[available] == c]) for c in range(num_classes)]
    cursor = np.zeros(num_classes, dtype=np.int64)
    passes = np.zeros(num_classes, dtype=np.int64)
    reuse = recipe["on_exhausted"] == "reuse"
    shards, reused, stopped = [], 0, None
    for i in range(num_shards):
        counts = rng.multinomial(per_shard, priors[i])
        short = [c for c in range(num_classes) if cursor[c] + counts[c] > len(by_class[c])]
        if short and not reuse:
            stopped = {"before_shard": i, "classes_exhausted": short}
            break
        picked = []
        for c in np.flatnonzero(counts):
            if len(by_class[c]) == 0:
                raise StreamError(f"class {c} has no images left for the stream")
            for _ in range(counts[c]):
                if cursor[c] == len(by_class[c]):  # reuse: the class starts over, in a new order
                    by_class[c] = rng.permutation(by_class[c])
                    cursor[c] = 0
                    passes[c] += 1
                picked.append(by_class[c][cursor[c]])
                cursor[c] += 1
                reused += int(passes[c] > 0)
        picked = np.asarray(picked, dtype=np.int64)[rng.permutation(len(picked))]
        labeled = rng.random(len(picked)) < float(recipe["labeled_fraction"])
        shards.append({"indices": picked, "labeled": labeled, "prior": priors[i]})
    return {"shards": shards, "stopped_early": stopped, "reused_samples": reused}


def _check_out(dest: ShardDestination, manifest: dict, overwrite: bool) -> bool:
    """True when the destination already holds this very stream; raise when it holds something else."""
    names = set(dest.names())
    existing = dest.read(MANIFEST) if MANIFEST in names else None
    if existing is not None:
        old = json.loads(existing)
        same = (old.get("recipe") == manifest["recipe"] and old.get("format") == FORMAT
                and all(f["file"] in names for f in old.get("shards", [])))
        if same:
            return True
        if not overwrite:
            raise StreamError(f"{dest.out} already holds a different stream ({old.get('recipe_name')}, seed "
                              f"{old.get('recipe', {}).get('seed')}); choose another out= or add overwrite=true")
    elif names and not overwrite:
        raise StreamError(f"{dest.out} is not empty and holds no stream manifest; choose another out= or add overwrite=true")
    return False


def simulate(recipe_name: str, recipe: dict, out: str | Path, overwrite: bool = False, progress: bool = True) -> dict:
    """Write the stream to a folder or `s3://bucket/prefix`; returns the manifest. An identical stream
    already there is kept as is."""
    if recipe.get("on_exhausted") not in ("stop", "reuse"):
        raise StreamError(f"on_exhausted={recipe.get('on_exhausted')}: must be stop or reuse")
    for key in ("shards", "samples_per_shard"):
        if int(recipe[key]) <= 0:
            raise StreamError(f"{key}={recipe[key]}: must be a positive integer")
    if not 0 <= float(recipe["labeled_fraction"]) <= 1:
        raise StreamError(f"labeled_fraction={recipe['labeled_fraction']}: must be in [0, 1]")
    ds_cfg = dataset_config(recipe)
    num_classes = int(ds_cfg.num_classes)
    try:  # a bad schedule fails here, before any data is read or any file touched
        shard_priors(recipe["prior"], num_classes, int(recipe["shards"]))
    except ValueError as e:
        raise StreamError(str(e)) from None
    manifest = {"format": FORMAT, "version": bmb_stream.__version__, "recipe_name": recipe_name, "recipe": recipe}
    dest = ShardDestination(out)
    try:
        if _check_out(dest, manifest, overwrite):
            return json.loads(dest.read(MANIFEST))
        manifest = _write_stream(recipe_name, recipe, ds_cfg, manifest, dest, overwrite, progress)
    finally:
        dest.close()
    return manifest


def _write_stream(recipe_name: str, recipe: dict, ds_cfg, manifest: dict, dest: ShardDestination, overwrite: bool,
                  progress: bool) -> dict:
    num_classes = int(ds_cfg.num_classes)
    train, test, names = load_pools(ds_cfg)
    check_labels(train, test, num_classes)
    seed_set, _ = split_indices(ds_cfg, train.targets, int(recipe["seed"]))
    available = np.setdiff1d(np.arange(len(train)), seed_set)  # the stream never repeats a seed-set image
    plan = plan_stream(recipe, train.targets, available, num_classes)
    test_idx = np.arange(len(test))
    if recipe.get("test_per_class"):  # a smaller test set: the first n of each class in a seeded order
        order = np.random.default_rng(int(recipe["seed"])).permutation(len(test))
        test_idx = np.sort(np.concatenate([order[test.targets[order] == c][: int(recipe["test_per_class"])]
                                           for c in range(num_classes)]))
    if overwrite:
        dest.remove([n for n in dest.names() if _is_stream_file(n)])
    out = dest.prepare()
    max_samples = int(recipe.get("max_samples_per_set_shard", 10_000))
    total = sum(len(s["indices"]) for s in plan["shards"]) + len(seed_set) + len(test_idx)
    bar = tqdm(total=total, desc=f"simulate {recipe_name}", unit="img", disable=not progress)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        jobs = []
        for i, shard in enumerate(plan["shards"]):
            samples = [ShardSample(f"s{i:06d}-{j:06d}", int(idx), int(train.targets[idx]), bool(lab),
                                   {"shard": i, "source_index": int(idx)})
                       for j, (idx, lab) in enumerate(zip(shard["indices"], shard["labeled"]))]
            jobs.append(pool.submit(write_shard, out / f"stream-{i:06d}.tar", train, samples, num_classes))
        entries = []
        for job, shard in zip(jobs, plan["shards"]):
            entries.append({**job.result(), "prior": np.round(shard["prior"], 6).tolist()})
            dest.publish(out / entries[-1]["file"])
            bar.update(entries[-1]["samples"])
        labeled_set = write_set(out, "labeled", train, seed_set, True, num_classes, max_samples, pool, bar,
                                publish=dest.publish)
        test_set = write_set(out, "test", test, test_idx, True, num_classes, max_samples, pool, bar,
                             publish=dest.publish)
    bar.close()
    manifest.update({
        "num_classes": num_classes, "class_names": list(names) or [str(c) for c in range(num_classes)],
        "on_exhausted": recipe["on_exhausted"], "stopped_early": plan["stopped_early"],
        "reused_samples": plan["reused_samples"],
        "shards": entries, "labeled_set": labeled_set, "test_set": test_set,
    })
    plot_priors(manifest, out / "plots" / "stream_prior.png")
    write_json(out / MANIFEST, manifest)  # last: a folder with a manifest is a complete stream
    dest.finish([out / "plots" / "stream_prior.png", out / MANIFEST])
    return manifest


def _is_stream_file(name: str) -> bool:
    return name.endswith(".tar") or name == MANIFEST or name.startswith("plots/")


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def plot_priors(manifest: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    prior = np.asarray([s["prior"] for s in manifest["shards"]])
    seen = np.asarray([s["class_histogram"] for s in manifest["shards"]], dtype=float)
    seen = seen / np.maximum(seen.sum(1, keepdims=True), 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, data, title in ((axes[0], prior, "class prior per shard"), (axes[1], seen, "classes drawn per shard")):
        im = ax.imshow(data, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set(xlabel="class", title=title)
        fig.colorbar(im, ax=ax)
    axes[0].set_ylabel("shard")
    fig.suptitle(f"{manifest['recipe_name']} (seed {manifest['recipe']['seed']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
