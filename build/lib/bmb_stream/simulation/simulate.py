"""Simulated long-tailed streams: a recipe (streams/*.yaml) becomes stream shards, the labeled seed
set and the test set as shards, a manifest and a plot of the class prior per shard."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

import bmb_stream
from bmb_stream.config_schema import Dataset
from bmb_stream.datasets.build import load_split
from bmb_stream.datasets.sources import check_image_files
from bmb_stream.errors import ConfigError, WriteFailed
from bmb_stream.shards.manifest import FORMAT, MANIFEST, PLOT, earlier_output, incomplete, read_our_manifest
from bmb_stream.shards.writing import ShardSample, write_set, write_shard, writer_pool
from bmb_stream.simulation.priors import shard_priors
from bmb_stream.simulation.recipes import Recipe, dataset_config
from bmb_stream.storage.atomic import write_json
from bmb_stream.storage.upload import ShardDestination

STREAM_PREFIXES = ("stream-", "labeled-", "test-")
def plan_stream(recipe: Recipe, targets: np.ndarray, available: np.ndarray, num_classes: int) -> dict:
    """Which pool indices go into which shard, and whether each is labeled: deterministic for the seed.

    Samples are drawn without replacement, per class, until a class runs out; then the stream stops
    before that shard (on_exhausted=stop) or the class is drawn again from the start (reuse).
    """
    rng = np.random.default_rng(recipe.seed)
    num_shards, per_shard = recipe.shards, recipe.samples_per_shard
    if recipe.prior.schedule == "natural":  # every remaining image once, in a random order
        order = rng.permutation(available)[: num_shards * per_shard]
        mix = np.bincount(targets[available], minlength=num_classes) / max(1, len(available))
        shards = [{"indices": order[i: i + per_shard], "prior": mix,
                   "labeled": rng.random(len(order[i: i + per_shard])) < recipe.labeled_fraction}
                  for i in range(0, len(order), per_shard)]  # the last shard may be partial
        stopped = None if len(order) == num_shards * per_shard else \
            {"before_shard": len(shards), "classes_exhausted": np.flatnonzero(mix).tolist()}
        return {"shards": shards, "stopped_early": stopped, "reused_samples": 0}
    priors = shard_priors(recipe.prior, num_classes, num_shards)
    by_class = [rng.permutation(available[targets[available] == c]) for c in range(num_classes)]
    cursor = np.zeros(num_classes, dtype=np.int64)
    passes = np.zeros(num_classes, dtype=np.int64)
    reuse = recipe.on_exhausted == "reuse"
    shards, reused, stopped = [], 0, None
    for i in range(num_shards):
        counts = rng.multinomial(per_shard, priors[i])
        short = [c for c in range(num_classes) if cursor[c] + counts[c] > len(by_class[c])]
        if short and not reuse and i == 0:
            c = short[0]
            raise ConfigError(f"samples_per_shard={per_shard}: the first shard draws {counts[c]} images of class {c}, "
                              f"which has {len(by_class[c])} for the stream; lower samples_per_shard= or set "
                              f"on_exhausted=reuse")
        if short and not reuse:
            stopped = {"before_shard": i, "classes_exhausted": short}
            break
        picked = []
        for c in np.flatnonzero(counts):
            if len(by_class[c]) == 0:
                raise ConfigError(f"class {c} has no images left for the stream")
            for _ in range(counts[c]):
                if cursor[c] == len(by_class[c]):  # reuse: the class starts over, in a new order
                    by_class[c] = rng.permutation(by_class[c])
                    cursor[c] = 0
                    passes[c] += 1
                picked.append(by_class[c][cursor[c]])
                cursor[c] += 1
                reused += int(passes[c] > 0)
        picked = np.asarray(picked, dtype=np.int64)[rng.permutation(len(picked))]
        labeled = rng.random(len(picked)) < recipe.labeled_fraction
        shards.append({"indices": picked, "labeled": labeled, "prior": priors[i]})
    return {"shards": shards, "stopped_early": stopped, "reused_samples": reused}


def _check_out(dest: ShardDestination, manifest: dict, overwrite: bool) -> bool:
    """True when the destination already holds this very stream; raise when it holds something else."""
    names = set(dest.names())
    old = read_our_manifest(dest, names)
    if old is not None:
        same = (old.get("recipe") == manifest["recipe"] and old.get("format") == FORMAT
                and all(f["file"] in names for f in old.get("shards", [])))
        if same:
            return True
        if not overwrite:
            raise ConfigError(f"{dest.out} already holds a different stream ({old.get('recipe_name')}, seed "
                              f"{old.get('recipe', {}).get('seed')}); choose another out= or add overwrite=true")
    elif names and not overwrite and not incomplete(names):
        raise ConfigError(f"{dest.out} is not empty and holds no stream manifest; choose another out= or add overwrite=true")
    return False


def simulate(recipe_name: str, recipe: dict, out: str | Path, overwrite: bool = False, progress: bool = True) -> dict:
    """Write the stream to a folder or `s3://bucket/prefix`; returns the manifest. An identical stream
    already there is kept as is."""
    typed = Recipe.from_dict(recipe)
    ds_cfg = dataset_config(typed)
    num_classes = ds_cfg.num_classes
    try:  # a bad schedule fails here, before any data is read or any file touched
        shard_priors(typed.prior, num_classes, typed.shards)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"prior: {e}") from None
    manifest = {"format": FORMAT, "version": bmb_stream.__version__, "recipe_name": recipe_name, "recipe": recipe}
    dest = ShardDestination(out)
    try:
        if _check_out(dest, manifest, overwrite):
            return json.loads(dest.read(MANIFEST))
        manifest = _write_stream(recipe_name, typed, ds_cfg, manifest, dest, earlier_output(dest, STREAM_PREFIXES),
                                 progress)
    except WriteFailed as e:
        raise dest.failed(e) from None
    finally:
        dest.close()
    return manifest


def _write_stream(recipe_name: str, recipe: Recipe, ds_cfg: Dataset, manifest: dict, dest: ShardDestination,
                  replace: list[str], progress: bool) -> dict:
    num_classes = ds_cfg.num_classes
    split = load_split(ds_cfg, recipe.seed)
    train, test, names, seed_set = split.train, split.test, split.class_names, split.labeled
    available = np.setdiff1d(np.arange(len(train)), seed_set)  # the stream never repeats a seed-set image
    if recipe.samples_per_shard > len(available):
        raise ConfigError(f"samples_per_shard={recipe.samples_per_shard}: more than the {len(available)} images "
                          f"{recipe.dataset} has for the stream (its training images less the seed set); "
                          f"lower it to at most {len(available)}")
    plan = plan_stream(recipe, train.targets, available, num_classes)
    test_idx = _test_indices(recipe, test.targets, num_classes)
    # a bad image file stops here, before anything is written or uploaded
    check_image_files(train, np.concatenate([seed_set, *(s["indices"] for s in plan["shards"])]), progress)
    check_image_files(test, test_idx, progress)
    out = dest.prepare(replace)  # a staging folder: the output is put in place only once complete
    max_samples = recipe.max_samples_per_set_shard or 10_000
    shorter_side = recipe.shorter_side  # larger images stored downscaled to it (shards.encode_image)
    total = sum(len(s["indices"]) for s in plan["shards"]) + len(seed_set) + len(test_idx)
    bar = tqdm(total=total, desc=f"simulate {recipe_name}", unit="img", disable=not progress)
    with writer_pool(os.cpu_count() or 1) as pool:
        jobs = []
        for i, shard in enumerate(plan["shards"]):
            samples = [ShardSample(f"s{i:06d}-{j:06d}", int(idx), int(train.targets[idx]), bool(lab),
                                   {"shard": i, "source_index": int(idx)})
                       for j, (idx, lab) in enumerate(zip(shard["indices"], shard["labeled"]))]
            jobs.append(pool.submit(write_shard, out / f"stream-{i:06d}.tar", train, samples, num_classes, True,
                                    shorter_side))
        entries = []
        for job, shard in zip(jobs, plan["shards"]):
            entries.append({**job.result(), "prior": np.round(shard["prior"], 6).tolist()})
            dest.publish(out / entries[-1]["file"])
            bar.update(entries[-1]["samples"])
        labeled_set = write_set(out, "labeled", train, seed_set, True, num_classes, max_samples, pool, bar,
                                publish=dest.publish, shorter_side=shorter_side)
        test_set = write_set(out, "test", test, test_idx, True, num_classes, max_samples, pool, bar,
                             publish=dest.publish, shorter_side=shorter_side)
    bar.close()
    manifest.update({
        "num_classes": num_classes, "class_names": list(names) or [str(c) for c in range(num_classes)],
        "on_exhausted": recipe.on_exhausted, "stopped_early": plan["stopped_early"],
        "reused_samples": plan["reused_samples"],
        "shards": entries, "labeled_set": labeled_set, "test_set": test_set,
    })
    plot_priors(manifest, out / PLOT)
    write_json(out / MANIFEST, manifest)  # last: a folder with a manifest is a complete stream
    dest.finish([out / PLOT, out / MANIFEST])
    return manifest


def _test_indices(recipe: Recipe, targets: np.ndarray, num_classes: int) -> np.ndarray:
    """The whole test set, or with `test_per_class` the first n of each class in a seeded order."""
    if not recipe.test_per_class:
        return np.arange(len(targets))
    order = np.random.default_rng(recipe.seed).permutation(len(targets))
    return np.sort(np.concatenate([order[targets[order] == c][: recipe.test_per_class]
                                   for c in range(num_classes)]))


def plot_priors(manifest: dict, path: Path) -> None:
    from bmb_stream.evaluation.plots import plt, save_figure  # matplotlib on its file backend

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
    save_figure(fig, path)
