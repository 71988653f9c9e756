"""Writing WebDataset shards in the project's format: per sample `__key__`, one image (`png`, `jpg`,
`jpeg` or `webp`), optional `cls` (the sample is labeled), optional `gt.cls` (the hidden true class
of an unlabeled sample, for monitoring only) and optional `json` metadata.

Shards are written with WebDataset's TarWriter at a fixed mtime, so the same samples give
byte-identical tar files, and renamed into place only when complete.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from bmb_stream.atomic import atomic_write
from bmb_stream.data.sources import ImagePool

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")
SUFFIX_TO_KEY = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".webp": "webp"}


@dataclass(frozen=True)
class ShardSample:
    key: str
    index: int                # position in the image pool
    label: int                # the true class
    labeled: bool             # written as `cls` when True, as `gt.cls` (if kept) when False
    meta: dict | None = None


def encode_image(pool: ImagePool, index: int) -> tuple[str, bytes]:
    """(key, bytes): in-memory images become PNG; files keep their bytes (a JPEG stays a JPEG)."""
    if isinstance(pool.images, torch.Tensor):
        array = pool.images[index].permute(1, 2, 0).numpy()
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
        return "png", buf.getvalue()
    path = Path(pool.images[index])
    key = SUFFIX_TO_KEY.get(path.suffix.lower())
    if key is None:  # other formats are converted once to PNG
        with Image.open(path) as img:
            buf = io.BytesIO()
            img.convert("RGB").save(buf, format="PNG")
        return "png", buf.getvalue()
    return key, path.read_bytes()


def write_shard(path: str | Path, pool: ImagePool, samples: list[ShardSample], num_classes: int,
                keep_hidden_labels: bool = True) -> dict:
    """Write one shard atomically; returns its manifest entry (file, counts, class histogram)."""
    path = Path(path)
    histogram = np.zeros(num_classes, dtype=np.int64)
    labeled = 0
    with atomic_write(path) as f, wds.TarWriter(f, encoder=False, mtime=0, user="bmb", group="bmb") as sink:
        for s in samples:
            image_key, data = encode_image(pool, s.index)
            obj = {"__key__": s.key, image_key: data}
            if s.labeled:
                obj["cls"] = str(s.label).encode()
                labeled += 1
            elif keep_hidden_labels:
                obj["gt.cls"] = str(s.label).encode()
            if s.meta:
                obj["json"] = json.dumps(s.meta, sort_keys=True).encode()
            sink.write(obj)
            histogram[s.label] += 1
    return {"file": path.name, "samples": len(samples), "labeled": labeled, "class_histogram": histogram.tolist()}


TAR_MEMBER_OVERHEAD = 1024  # a tar header and padding per member, at most


def chunk_indices(pool: ImagePool, indices: np.ndarray, max_samples: int, max_bytes: int | None = None) -> list[np.ndarray]:
    """Cut `indices` into shards of at most `max_samples` samples and about `max_bytes` bytes: image
    files count their size, in-memory images their raw pixel bytes (PNG rarely exceeds them)."""
    if not max_bytes:
        return [indices[i: i + max_samples] for i in range(0, len(indices), max_samples)] or [indices[:0]]
    if isinstance(pool.images, torch.Tensor):
        sizes = np.full(len(indices), pool.images[0].numel() + 3 * TAR_MEMBER_OVERHEAD)
    else:
        sizes = np.asarray([os.path.getsize(pool.images[i]) + 3 * TAR_MEMBER_OVERHEAD for i in indices])
    chunks, start, used = [], 0, 0
    for n, size in enumerate(sizes):
        if n > start and (n - start >= max_samples or used + size > max_bytes):
            chunks.append(indices[start:n])
            start, used = n, 0
        used += size
    chunks.append(indices[start:])
    return chunks


def write_set(out: Path, prefix: str, pool: ImagePool, indices: np.ndarray, labeled: bool, num_classes: int,
              max_samples: int, executor=None, progress=None, keep_hidden_labels: bool = True,
              max_bytes: int | None = None, publish=None) -> dict:
    """Write a whole set (e.g. the labeled seed set or the test set) as `prefix-000000.tar`, ... ;
    `publish(path)` is called as each shard is complete (an upload to object storage)."""
    chunks = chunk_indices(pool, indices, max_samples, max_bytes)
    jobs = []
    for n, chunk in enumerate(chunks):
        samples = [ShardSample(f"{prefix}-{int(i):08d}", int(i), int(pool.targets[i]), labeled) for i in chunk]
        args = (out / f"{prefix}-{n:06d}.tar", pool, samples, num_classes, keep_hidden_labels)
        jobs.append(executor.submit(write_shard, *args) if executor else args)
    entries = []
    for job in jobs:
        entries.append(job.result() if executor else write_shard(*job))
        if publish is not None:
            publish(out / entries[-1]["file"])
        if progress is not None:
            progress.update(entries[-1]["samples"])
    histogram = np.sum([e["class_histogram"] for e in entries], axis=0).tolist()
    return {"files": [e["file"] for e in entries], "samples": int(sum(e["samples"] for e in entries)),
            "class_histogram": histogram, "shards": entries}
