"""The shard stream: shard URLs, experiences, decoding of untrusted shards, the labeled pool.

Only the keys of the shard contract are read (an image, `cls`, `gt.cls`, `json`); nothing is
unpickled. `gt.cls`, the hidden true class of a simulated sample, travels beside the batch for
monitoring and never enters the training step.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import webdataset as wds
from braceexpand import braceexpand
from PIL import Image
from torch.utils.data import Dataset

from bmb_stream.data.errors import ShardError, StorageUnavailable
from bmb_stream.data.shards import IMAGE_KEYS

WANTED_SUFFIXES = tuple(f".{k}" for k in IMAGE_KEYS) + (".cls", ".gt.cls", ".json")


def expand_urls(urls) -> list[str]:
    """A brace pattern, a list of patterns, a folder of shards or an s3:// key prefix (every `.tar`
    object whose key starts with it, e.g. `s3://bucket/imagenet/unlabeled-`) -> the list of shard URLs."""
    if urls is None:
        return []
    if isinstance(urls, str):
        path = Path(urls)
        if "://" not in urls and path.is_dir():
            return sorted(str(p) for p in path.glob("*.tar"))
        urls = [urls]
    out = []
    for pattern in urls:
        pattern = str(pattern)
        if pattern.startswith("s3://") and not pattern.endswith(".tar") and "{" not in pattern:  # a key prefix
            from bmb_stream.data.object_store import list_objects

            out += list_objects(pattern)
            continue
        out += list(braceexpand(str(pattern)))
    return [u[len("file://"):] if u.startswith("file://") else u for u in out]


def experience_shards(urls: list[str], shards_per_experience: int, seed: int, shuffle: bool,
                      resampled: bool, max_experiences: int | None) -> list[list[str]]:
    """The shards of each experience: in order (or shuffled once with the seed); a resampled stream
    draws every experience's shards with replacement and is bounded by max_experiences."""
    if not urls:
        raise ShardError("stream.urls names no shards")
    rng = np.random.default_rng(seed)
    if resampled:
        if not max_experiences:
            raise ShardError("a resampled stream is endless: set stream.max_experiences")
        return [[urls[i] for i in rng.integers(0, len(urls), shards_per_experience)] for _ in range(max_experiences)]
    order = [urls[i] for i in rng.permutation(len(urls))] if shuffle else list(urls)
    groups = [order[i: i + shards_per_experience] for i in range(0, len(order), shards_per_experience)]
    return groups[:max_experiences] if max_experiences else groups


def _select(name: str) -> bool:
    return name.endswith(WANTED_SUFFIXES)


def decode_image(data: bytes, where: str = "") -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")
    except OSError as e:  # PIL's UnidentifiedImageError and truncated images are OSErrors
        raise ShardError(f"cannot decode the image of {where or 'a sample'}: {e}") from None


def naming_the_shard(exn: Exception, url: str | None = None) -> ShardError:
    """Any failure to read a shard as a ShardError whose message names it."""
    if isinstance(exn, ShardError):  # WebDataset appends the URL to args: keep the message alone
        return type(exn)(exn.args[0]) if exn.args else exn
    where = [url] if url else [str(exn.filename)] if getattr(exn, "filename", None) else \
        [a for a in exn.args if isinstance(a, str) and ("/" in a or "://" in a)]
    text = getattr(exn, "strerror", None) or (str(exn.args[0]) if exn.args else type(exn).__name__)
    error = StorageUnavailable if isinstance(exn, StorageUnavailable) else ShardError
    return error(f"cannot read shard {where[-1] if where else '?'}: {type(exn).__name__}: {text}")


SKIPPED = "__skipped__"  # the key of the marker that stands for a skipped shard or sample


def read_shards(on_error: str = "fail", skip_urls: frozenset = frozenset()):
    """Pipeline stage: shard URLs -> raw samples, one shard at a time. A shard that cannot be read
    ends the run (`fail`) or is replaced by one marker sample that the main process counts (`skip`).
    Storage that stays unreachable past the retry budget always ends the run (it is not the shard's fault).
    `skip_urls` are skipped without reading: a resumed run replays the skips it made before its checkpoint."""

    def stage(shards):
        for shard in shards:
            url = shard["url"]
            if url in skip_urls:
                yield {SKIPPED: url, "error": f"{url}: skipped before the checkpoint"}
                continue
            try:
                yield from wds.tariterators.tarfile_samples([dict(shard)], select_files=_select)
            except Exception as exn:  # noqa: BLE001 - named and re-raised, or skipped on request
                error = naming_the_shard(exn, url)
                if on_error != "skip" or isinstance(error, StorageUnavailable):
                    raise error from None
                yield {SKIPPED: url, "error": str(error)}

    return stage


def parse_sample(sample: dict, on_error: str = "fail") -> dict:
    """Raw tar members of one sample -> {key, url, image bytes, cls (-1: unlabeled), gt (-1: unknown)};
    under on_error=skip a malformed sample becomes a skip marker."""
    if SKIPPED in sample:
        return sample
    try:
        return _parse(sample)
    except ShardError as e:
        if on_error != "skip":
            raise
        return {SKIPPED: sample.get("__url__"), "error": str(e)}


def _parse(sample: dict) -> dict:
    image = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
    if image is None:
        raise ShardError(f"sample {sample.get('__key__')} in {sample.get('__url__')} has no image "
                         f"({', '.join(IMAGE_KEYS)})")
    out = {"key": sample["__key__"], "url": sample.get("__url__"), "image": image, "cls": -1, "gt": -1}
    try:
        if "cls" in sample:
            out["cls"] = int(sample["cls"])
        if "gt.cls" in sample:
            out["gt"] = int(sample["gt.cls"])
        if "json" in sample:
            out["json"] = json.loads(sample["json"])
    except ValueError as e:
        raise ShardError(f"sample {out['key']} in {out['url']}: bad cls/json ({e})") from None
    return out


def sample_stages(urls: list[str], on_error: str = "fail", skip_urls: frozenset = frozenset()) -> list:
    """The pipeline stages to parsed samples of `urls`, the shards split across ranks and DataLoader workers."""
    return [wds.SimpleShardList(urls), wds.split_by_node, wds.split_by_worker, read_shards(on_error, skip_urls),
            wds.map(partial(parse_sample, on_error=on_error))]


def shard_samples(urls: list[str], on_error: str = "fail") -> wds.DataPipeline:
    return wds.DataPipeline(*sample_stages(urls, on_error))


def make_unlabeled_batches(urls: list[str], views: Callable, batch_size: int, on_error: str = "fail",
                           skip_urls: frozenset = frozenset()):
    """Decoded, augmented and batched in the workers: dicts of u_weak, u_strong1, u_strong2, cls, gt,
    the encoded images of the labeled samples (for the labeled pool), and `skipped`: the shards and
    samples left out under on_error=skip, as (url, error) pairs. A batch may hold no images at all
    (only skips); then u_weak is None."""

    def to_views(s: dict) -> dict:
        if SKIPPED in s:
            return s
        try:
            weak, strong1, strong2 = views(decode_image(s["image"], f"sample {s['key']} in {s['url']}"))
        except ShardError as e:
            if on_error != "skip":
                raise
            return {SKIPPED: s["url"], "error": str(e)}
        return {"views": (weak, strong1, strong2), "cls": s["cls"], "gt": s["gt"], "url": s["url"],
                "image": s["image"] if s["cls"] >= 0 else None}

    def collate(items: list[dict]) -> dict:
        skipped = [(s[SKIPPED], s["error"]) for s in items if SKIPPED in s]
        samples = [s for s in items if SKIPPED not in s]
        if not samples:
            return {"u_weak": None, "skipped": skipped, "labeled_images": [], "urls": []}
        w, s1, s2 = (torch.stack([s["views"][i] for s in samples]) for i in range(3))
        return {"u_weak": w, "u_strong1": s1, "u_strong2": s2,
                "cls": torch.tensor([s["cls"] for s in samples]), "gt": torch.tensor([s["gt"] for s in samples]),
                "labeled_images": [(s["image"], s["cls"]) for s in samples if s["image"] is not None],
                "urls": [s["url"] for s in samples], "skipped": skipped}

    return wds.DataPipeline(*sample_stages(urls, on_error, skip_urls), wds.map(to_views),
                            wds.batched(batch_size, collation_fn=collate, partial=True))


def read_labeled_shards(urls: list[str], require_cls: bool = True) -> tuple[list[bytes], np.ndarray]:
    """Every (image bytes, class) of some shards, in order: the labeled seed set or the test set."""
    images, labels = [], []
    for s in shard_samples(urls):
        label = s["cls"] if s["cls"] >= 0 else s["gt"]
        if label < 0 or (require_cls and s["cls"] < 0):
            raise ShardError(f"sample {s['key']} in {s['url']} has no cls: labeled and test shards need one")
        decode_image(s["image"], f"sample {s['key']} in {s['url']}")  # fail now, naming it, not mid-training
        images.append(s["image"])
        labels.append(label)
    if not images:
        raise ShardError(f"no samples in {urls[:3]}{'...' if len(urls) > 3 else ''}")
    return images, np.asarray(labels, dtype=np.int64)


class EncodedImages(Dataset):
    """A map-style dataset over encoded images (PNG/JPEG bytes) held in memory."""

    def __init__(self, images: list[bytes], targets, transform: Callable):
        self.images = images
        self.targets = np.asarray(targets, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(decode_image(self.images[i])), int(self.targets[i])


class PreparedImages(Dataset):
    """A dataset whose deterministic transform was applied once, up front (a small test set:
    evaluating it after every experience then costs no decoding)."""

    def __init__(self, dataset: Dataset):
        items = [dataset[i] for i in range(len(dataset))]
        self.images = torch.stack([x for x, _ in items])
        self.targets = np.asarray([y for _, y in items], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.images[i], int(self.targets[i])


@dataclass
class LabeledPool:
    """Labeled samples met in the stream, bounded and class-balanced: when full, a random entry of
    the most represented class leaves. Part of the learner's persistent state."""

    capacity: int
    num_classes: int
    seed: int = 0

    def __post_init__(self):
        self.images: list[bytes] = []
        self.labels: list[int] = []
        self.generator = torch.Generator().manual_seed(self.seed)

    def add(self, image: bytes, label: int) -> None:
        if self.capacity <= 0:
            return
        if len(self.labels) >= self.capacity:
            counts = np.bincount(self.labels, minlength=self.num_classes)
            biggest = int(counts.argmax())
            if counts[label] >= counts[biggest]:  # the newcomer's class is already the largest
                return
            members = [i for i, c in enumerate(self.labels) if c == biggest]
            victim = members[int(torch.randint(len(members), (), generator=self.generator))]
            self.images[victim], self.labels[victim] = image, label
            return
        self.images.append(image)
        self.labels.append(label)

    def class_counts(self) -> list[int]:
        return np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=self.num_classes).tolist()

    def state_dict(self) -> dict:
        return {"images": list(self.images), "labels": list(self.labels), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.images, self.labels = list(state["images"]), [int(x) for x in state["labels"]]
        self.generator.set_state(state["generator"])
