"""Writing WebDataset shards in the project's format: per sample `__key__`, one image (`png`, `jpg`,
`jpeg` or `webp`), optional `cls` (the sample is labeled), optional `gt.cls` (the hidden true class
of an unlabeled sample, for monitoring only) and optional `json` metadata.

Shards are written with WebDataset's TarWriter at a fixed mtime, so the same samples give
byte-identical tar files, and renamed into place only when complete. With `shorter_side`, images
larger than that are stored downscaled (ImageNet at 256 px: the training views resize to 256 first,
and a worker then decodes under half the pixels of a 500x375 JPEG).
"""

from __future__ import annotations

import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from bmb_stream.datasets.sources import ImagePool
from bmb_stream.storage.atomic import atomic_write

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")
SUFFIX_TO_KEY = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".webp": "webp"}


@dataclass(frozen=True)
class ShardSample:
    key: str
    index: int                # position in the image pool
    label: int                # the true class
    labeled: bool             # written as `cls` when True, as `gt.cls` (if kept) when False
    meta: dict | None = None


JPEG_QUALITY = 90  # of a JPEG re-encoded after a downscale


def _encoded(img: Image.Image, key: str) -> tuple[str, bytes]:
    buf = io.BytesIO()
    if key == "jpg":
        img.convert("RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
    else:
        img.save(buf, format="PNG")
    return key, buf.getvalue()


def downscaled(img: Image.Image, shorter_side: int) -> Image.Image | None:
    """The image with its shorter side brought down to `shorter_side` (as torchvision's Resize(shorter_side)
    sizes it, antialiased); None when it is not larger."""
    w, h = img.size
    if min(w, h) <= shorter_side:
        return None
    size = (shorter_side, int(shorter_side * h / w)) if w <= h else (int(shorter_side * w / h), shorter_side)
    return img.convert("RGB").resize(size, Image.BILINEAR)


def encode_image(pool: ImagePool, index: int, shorter_side: int | None = None) -> tuple[str, bytes]:
    """(key, bytes): in-memory images become PNG; files keep their bytes (a JPEG stays a JPEG), except
    those with a shorter side over `shorter_side`, stored downscaled (a JPEG as a JPEG of quality 90)."""
    if isinstance(pool.images, torch.Tensor):
        img = Image.fromarray(np.ascontiguousarray(pool.images[index].permute(1, 2, 0).numpy()))
        return _encoded((downscaled(img, shorter_side) if shorter_side else None) or img, "png")
    path = Path(pool.images[index])
    key = SUFFIX_TO_KEY.get(path.suffix.lower())
    if key is None or shorter_side:
        with Image.open(path) as img:
            small = downscaled(img, shorter_side) if shorter_side else None
            if small is not None:
                return _encoded(small, "jpg" if key in ("jpg", "jpeg") else "png")
            if key is None:  # other formats are converted once to PNG
                return _encoded(img.convert("RGB"), "png")
    return key, path.read_bytes()


def write_shard(path: str | Path, pool: ImagePool, samples: list[ShardSample], num_classes: int,
                keep_hidden_labels: bool = True, shorter_side: int | None = None) -> dict:
    """Write one shard atomically; returns its manifest entry (file, counts, class histogram)."""
    path = Path(path)
    histogram = np.zeros(num_classes, dtype=np.int64)
    labeled = 0
    with atomic_write(path) as f, wds.TarWriter(f, encoder=False, mtime=0, user="bmb", group="bmb") as sink:
        for s in samples:
            image_key, data = encode_image(pool, s.index, shorter_side)
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


@contextmanager
def writer_pool(workers: int):
    """Threads that write shards; after a failure or Ctrl-C the shards not started are never written."""
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


TAR_MEMBER_OVERHEAD = 1024  # a tar header and padding per member, at most


def chunk_indices(pool: ImagePool, indices: np.ndarray, max_samples: int, max_bytes: int | None = None,
                  shard_multiple: int = 1) -> list[np.ndarray]:
    """Cut `indices` into shards of at most `max_samples` samples and about `max_bytes` bytes: image
    files count their size, in-memory images their raw pixel bytes (PNG rarely exceeds them). With
    `shard_multiple` (ranks x workers, say) the shard count is rounded up to a multiple of it and the
    samples are dealt into shards of equal counts (within one), so every rank and worker reads as many."""
    chunks = _chunks(pool, indices, max_samples, max_bytes)
    if shard_multiple > 1 and len(indices):
        count = -(-len(chunks) // shard_multiple) * shard_multiple
        chunks = np.array_split(indices, min(count, len(indices)))
    return chunks


def _chunks(pool: ImagePool, indices: np.ndarray, max_samples: int, max_bytes: int | None) -> list[np.ndarray]:
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
              max_bytes: int | None = None, publish=None, shard_multiple: int = 1,
              shorter_side: int | None = None) -> dict:
    """Write a whole set (e.g. the labeled seed set or the test set) as `prefix-000000.tar`, ... ;
    `publish(path)` is called as each shard is complete (an upload to object storage)."""
    chunks = chunk_indices(pool, indices, max_samples, max_bytes, shard_multiple)
    jobs = []
    for n, chunk in enumerate(chunks):
        samples = [ShardSample(f"{prefix}-{int(i):08d}", int(i), int(pool.targets[i]), labeled) for i in chunk]
        args = (out / f"{prefix}-{n:06d}.tar", pool, samples, num_classes, keep_hidden_labels, shorter_side)
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
