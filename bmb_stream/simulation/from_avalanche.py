"""An Avalanche benchmark as a bmb-stream stream: its train stream written as stream shards, one
experience per group of `shards_per_experience` shards, a fraction of each experience's images labeled
(`cls`) and the rest unlabeled with their classes hidden as `gt.cls`; the first experience's labeled
images are the labeled seed set; the test stream, whole, is the test set. The manifest records each
shard's class histogram, so the continual-learning metrics see each experience's classes. Then

    bmb-stream stream.urls=OUT/stream-{000000..NNNNNN}.tar stream.shards_per_experience=K dataset=...

streams it as a simulated stream is streamed (docs/usage.md, "Avalanche benchmarks").

Images may be PIL images or tensors (uint8, or float in [0, 1]); gray images are stored with 3 equal
channels. A benchmark's own transforms are applied as its `eval` mode gives them (no augmentation).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.functional import pil_to_tensor

import bmb_stream
from bmb_stream.datasets.sources import ImagePool
from bmb_stream.errors import ConfigError, WriteFailed
from bmb_stream.shards.manifest import FORMAT, MANIFEST, earlier_output, incomplete
from bmb_stream.shards.writing import ShardSample, write_set, write_shard, writer_pool
from bmb_stream.simulation.simulate import STREAM_PREFIXES
from bmb_stream.storage.atomic import write_json
from bmb_stream.storage.upload import ShardDestination


def as_uint8_image(x) -> torch.Tensor:
    """A (3, H, W) uint8 tensor of an image: PIL, uint8 tensor, or float tensor in [0, 1]."""
    if not isinstance(x, torch.Tensor):
        x = pil_to_tensor(x)
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.is_floating_point():
        x = (x * 255).round().clamp(0, 255).to(torch.uint8)
    if x.dtype != torch.uint8 or x.dim() != 3 or x.shape[0] not in (1, 3):
        raise ConfigError(f"an image of shape {tuple(x.shape)} and type {x.dtype}: expected (1 or 3, H, W), "
                          f"uint8 or float in [0, 1]")
    return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x


def image_pool(dataset, what: str) -> ImagePool:
    """A dataset's images (its eval-mode transforms applied) and classes, in memory."""
    dataset = dataset.eval() if hasattr(dataset, "eval") else dataset
    images, classes = [], []
    for i in range(len(dataset)):
        sample = dataset[i]
        images.append(as_uint8_image(sample[0]))
        classes.append(int(sample[1]))
    if not images:
        raise ConfigError(f"{what} has no images")
    if len({tuple(x.shape) for x in images}) > 1:
        raise ConfigError(f"{what}: images of different sizes; resize them to one size in the benchmark's transform")
    return ImagePool(torch.stack(images), np.asarray(classes, dtype=np.int64), what)


def write_avalanche_benchmark(benchmark, out: str | Path, *, labeled_fraction: float = 0.1,
                              shards_per_experience: int = 1, seed: int = 0, class_names: list[str] | None = None,
                              overwrite: bool = False) -> dict:
    """Write `benchmark` (anything with `train_stream` and `test_stream` of experiences with a `dataset`)
    to a folder or `s3://bucket/prefix`; returns the manifest. The labeled images of each experience are
    chosen with `seed`."""
    if not 0.0 < labeled_fraction <= 1.0:
        raise ConfigError(f"labeled_fraction={labeled_fraction}: must be in (0, 1]")
    if shards_per_experience < 1:
        raise ConfigError(f"shards_per_experience={shards_per_experience}: must be a positive integer")
    train = [image_pool(exp.dataset, f"train experience {k}") for k, exp in enumerate(benchmark.train_stream)]
    test_pools = [image_pool(exp.dataset, f"test experience {k}") for k, exp in enumerate(benchmark.test_stream)]
    test = ImagePool(torch.cat([p.images for p in test_pools]), np.concatenate([p.targets for p in test_pools]), "test")
    num_classes = int(getattr(benchmark, "n_classes", 0) or 1 + max(int(p.targets.max()) for p in train + [test]))
    recipe = {"source": "avalanche", "benchmark": type(benchmark).__name__, "labeled_fraction": labeled_fraction,
              "shards_per_experience": shards_per_experience, "seed": seed}
    manifest = {"format": FORMAT, "version": bmb_stream.__version__, "recipe_name": "avalanche", "recipe": recipe}
    dest = ShardDestination(out)
    try:
        names = dest.names()
        if names and not overwrite and not incomplete(names):
            raise ConfigError(f"{dest.out} is not empty; choose another out= or pass overwrite=True")
        out_dir = dest.prepare(earlier_output(dest, STREAM_PREFIXES))
        rng = np.random.default_rng(seed)
        entries, seed_set = [], None
        with writer_pool(os.cpu_count() or 1) as executor:
            jobs = []
            for k, pool in enumerate(train):
                order = rng.permutation(len(pool))
                labeled = np.zeros(len(pool), dtype=bool)
                labeled[order[: max(1, round(labeled_fraction * len(pool)))]] = True
                if k == 0:  # the first experience's labeled images are the seed set, not streamed
                    seed_set, order = np.sort(order[labeled[order]]), order[~labeled[order]]
                if len(order) < shards_per_experience:
                    raise ConfigError(f"train experience {k} has {len(order)} image(s) to stream, fewer than "
                                      f"shards_per_experience={shards_per_experience}")
                for part in np.array_split(order, shards_per_experience):
                    i = len(jobs)
                    samples = [ShardSample(f"e{k:04d}-{int(j):08d}", int(j), int(pool.targets[j]), bool(labeled[j]),
                                           {"experience": k, "source_index": int(j)}) for j in part]
                    jobs.append(executor.submit(write_shard, out_dir / f"stream-{i:06d}.tar", pool, samples,
                                                num_classes))
            for job in jobs:
                entries.append(job.result())
                dest.publish(out_dir / entries[-1]["file"])
            labeled_set = write_set(out_dir, "labeled", train[0], seed_set, True, num_classes, 10_000, executor,
                                    publish=dest.publish)
            test_set = write_set(out_dir, "test", test, np.arange(len(test)), True, num_classes, 10_000, executor,
                                 publish=dest.publish)
        manifest.update({"num_classes": num_classes,
                         "class_names": list(class_names) if class_names else [str(c) for c in range(num_classes)],
                         "on_exhausted": "stop", "stopped_early": None, "reused_samples": 0,
                         "shards": entries, "labeled_set": labeled_set, "test_set": test_set})
        write_json(out_dir / MANIFEST, manifest)  # last: a folder with a manifest is a complete stream
        dest.finish([out_dir / MANIFEST])
    except WriteFailed as e:
        raise dest.failed(e) from None
    finally:
        dest.close()
    return manifest
