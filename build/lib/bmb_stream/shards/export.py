"""`bmb-stream shards`: a configured dataset split (labeled, unlabeled, test) written as shards.

Shards of one set are written in parallel threads (image encoding and file reads release the GIL),
JPEG files keep their bytes, and the manifest is written last; a folder gets the split whole once it
is complete (upload.ShardDestination).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

import bmb_stream
from bmb_stream.config_schema import Dataset
from bmb_stream.datasets.build import SplitIndices, load_split
from bmb_stream.errors import ConfigError, WriteFailed
from bmb_stream.shards.manifest import MANIFEST, earlier_output, incomplete
from bmb_stream.shards.writing import write_set, writer_pool
from bmb_stream.storage.atomic import write_json
from bmb_stream.storage.upload import ShardDestination

FORMAT = "bmb-stream-split/1"
SPLIT_PREFIXES = ("labeled-", "unlabeled-", "test-")


def export_split(ds_cfg: Dataset, out: str | Path, *, seed: int = 0, max_samples: int = 10_000,
                 max_bytes: int | None = None, workers: int = 0, overwrite: bool = False,
                 keep_hidden_labels: bool = True, progress: bool = True, shard_multiple: int = 1,
                 shorter_side: int | None = None) -> dict:
    """Write `labeled-*.tar` (with `cls`), `unlabeled-*.tar` (with `gt.cls` unless told not to) and
    `test-*.tar` (with `cls`) for the split the dataset config defines, to a folder or to
    `s3://bucket/prefix` (each shard uploaded as soon as it is written); returns the manifest.
    `shard_multiple`: each set's shard count a multiple of it, shards of equal counts; `shorter_side`:
    larger images stored downscaled to it (shards.encode_image)."""
    if max_samples <= 0:
        raise ConfigError(f"max_samples={max_samples}: must be a positive integer")
    dest = ShardDestination(out)
    try:
        existing = dest.names()
        if existing and not overwrite and not incomplete(existing):
            raise ConfigError(f"{dest.out} is not empty; choose another out= or add overwrite=true")
        split = load_split(ds_cfg, seed)
        split.check_images(progress)  # an undecodable file would be packed as it is: refuse before writing
        return _write_split(ds_cfg, dest, earlier_output(dest, SPLIT_PREFIXES), split, seed=seed,
                            max_samples=max_samples, max_bytes=max_bytes, workers=workers,
                            keep_hidden_labels=keep_hidden_labels, progress=progress, shard_multiple=shard_multiple,
                            shorter_side=shorter_side)
    except WriteFailed as e:
        raise dest.failed(e) from None
    finally:
        dest.close()


def _write_split(ds_cfg: Dataset, dest: ShardDestination, replace: list[str], split: SplitIndices, *, seed: int,
                 max_samples: int, max_bytes: int | None, workers: int, keep_hidden_labels: bool, progress: bool,
                 shard_multiple: int, shorter_side: int | None) -> dict:
    num_classes = int(ds_cfg.num_classes)
    train, test, names, labeled_idx, unlabeled_idx = (split.train, split.test, split.class_names, split.labeled,
                                                      split.unlabeled)
    out = dest.prepare(replace)  # a staging folder: the split is put in place only once complete
    total = len(labeled_idx) + len(unlabeled_idx) + len(test)
    bar = tqdm(total=total, desc=f"shards {ds_cfg.name}", unit="img", disable=not progress)
    shape = {"max_bytes": max_bytes, "publish": dest.publish, "shard_multiple": shard_multiple,
             "shorter_side": shorter_side}
    with writer_pool(workers or os.cpu_count() or 1) as pool:
        sets = {
            "labeled_set": write_set(out, "labeled", train, labeled_idx, True, num_classes, max_samples, pool, bar,
                                     **shape),
            "unlabeled_set": write_set(out, "unlabeled", train, unlabeled_idx, False, num_classes, max_samples, pool,
                                       bar, keep_hidden_labels, **shape),
            "test_set": write_set(out, "test", test, np.arange(len(test)), True, num_classes, max_samples, pool, bar,
                                  **shape),
        }
    bar.close()
    manifest = {"format": FORMAT, "version": bmb_stream.__version__, "seed": seed, "shorter_side": shorter_side,
                "dataset": dataclasses.asdict(ds_cfg), "num_classes": num_classes,
                "class_names": list(names) or [str(c) for c in range(num_classes)], **sets}
    write_json(out / MANIFEST, manifest)
    dest.finish([out / MANIFEST])
    return manifest

