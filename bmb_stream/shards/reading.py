"""Reading shards: decoding untrusted shards into samples and batches, and the shard error policy.

Only the keys of the shard contract are read (an image, `cls`, `gt.cls`, `json`); nothing is
unpickled, and no member, image or class index is taken on trust: a tar member over
MAX_MEMBER_BYTES is not read, an image over MAX_IMAGE_PIXELS (datasets/images.py) is not decoded (a
decompression bomb declares a huge size in a few bytes), a class outside 0..num_classes-1 is refused,
`json` must be an object, and a shard that gives no sample at all (an empty tar file, one of folders
or other files, a device, a broken link) is an error too. Each is a ShardError naming the shard and the
sample, handed to the error policy (handler_for): raised, or skipped and counted under
stream.on_shard_error=skip. A stream sample that is a test sample ends the run under either policy.
Image members may have any extension of IMAGE_EXTENSIONS, in any case (`.PNG`, `.Jpeg`, `.tiff`).
`gt.cls`, the hidden true class of a simulated sample, travels beside the batch for monitoring and
never enters the training step.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import Dataset

from bmb_stream.datasets.images import IMAGE_EXTENSIONS, decode_rgb
from bmb_stream.errors import DataError, SampleError, ShardError, StorageUnavailable, UnusableImage, few_of
from bmb_stream.storage.object_store import open_url

WANTED_SUFFIXES = tuple(f".{k}" for k in IMAGE_EXTENSIONS) + (".cls", ".gt.cls", ".json")
MAX_MEMBER_BYTES = 64 << 20  # one tar member (an image, a label, metadata): 64 MB, beyond any real image file
def decode_image(data: bytes, where: str = "", shorter_side: int | None = None) -> Image.Image:
    """Encoded bytes -> an RGB image, the size checked from the header before any pixel is decoded
    (`shorter_side`: decode_rgb's, a view's `decode_shorter_side`)."""
    try:
        return decode_rgb(data, shorter_side)
    except UnusableImage as e:
        where = where or "a sample"
        raise SampleError(f"the image of {where} is {e.reason}" if e.too_big
                         else f"cannot decode the image of {where}: {e.reason}") from None


def naming_the_shard(exn: Exception, url: str) -> ShardError:
    """Any failure to read a shard as one line: "cannot read shard <url>: <cause>"."""
    if isinstance(exn, ShardError):  # from the storage: "<url>: <cause>"
        text = str(exn.args[0]) if exn.args else url
        return type(exn)(f"cannot read shard {text}" if text.startswith(url) else text)
    return ShardError(f"cannot read shard {url}: {_cause(exn)}")


def _cause(exn: Exception) -> str:
    if isinstance(exn, FileNotFoundError):
        return "no such file"
    if isinstance(exn, IsADirectoryError):
        return "a folder, not a shard"
    if isinstance(exn, PermissionError):
        return "permission denied"
    text = getattr(exn, "strerror", None) or (str(exn.args[0]) if exn.args else "")
    if isinstance(exn, tarfile.TarError):
        return f"not a tar file, or a truncated one ({text})"
    return f"{type(exn).__name__}: {text}" if text else type(exn).__name__


@dataclass(frozen=True)
class Oversized:
    """Stands for a tar member over MAX_MEMBER_BYTES, left unread; the sample that holds it is refused."""

    size: int


@dataclass
class Unread:
    """The members of a tar that give no sample: how many are files, and a few names (a folder's ends in /)."""

    files: int = 0
    names: list[str] = field(default_factory=list)

    def note(self, info: tarfile.TarInfo) -> None:
        self.files += info.isreg()
        if len(self.names) < 5:
            self.names.append(info.name + "/" * info.isdir())


def tar_members(stream, url: str, unread: Unread | None = None):
    """The wanted members of one tar stream, as WebDataset's file samples; the others are noted in
    `unread`. A member's size is known from its header: one over MAX_MEMBER_BYTES is passed over
    without being read."""
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for info in tar:
            if info.isreg() and info.name.lower().endswith(WANTED_SUFFIXES):
                data = tar.extractfile(info).read() if info.size <= MAX_MEMBER_BYTES else Oversized(info.size)
                yield {"fname": info.name, "data": data, "__url__": url}
            elif unread is not None:
                unread.note(info)
            tar.members = []  # a stream of any length: forget the members already passed


def tar_samples(url: str):
    """The samples of one shard (members grouped by key, as WebDataset does; extensions in any case).
    A shard that gives none is a ShardError: it would count as read and add nothing."""
    local = url.removeprefix("file://")
    if "://" not in local and os.path.islink(local) and not os.path.exists(local):
        raise ShardError(f"{url}: a broken symbolic link (to {os.readlink(local)}, which is not there); point it at "
                         f"a shard, or remove it")
    if "://" not in local and _special(local):
        raise ShardError(f"{url}: not a regular file (a device, a FIFO or a socket); a shard is a tar file")
    unread = Unread()
    samples = 0
    with open_url(url) as stream:
        for sample in wds.tariterators.group_by_keys(tar_members(stream, url, unread)):
            samples += 1
            yield sample
    if samples:
        return
    if not unread.names:
        raise ShardError(f"{url}: no samples in it: the tar file is empty; write it again, or leave it out")
    found = f"found: {few_of(unread.names)}"
    if not unread.files:
        raise ShardError(f"{url}: no samples in it: the tar file holds no files, only folders or links ({found}); "
                         f"a sample is files named <key>.<ext>, one of them an image")
    raise ShardError(f"{url}: no samples in it: none of its files is an image ({', '.join(IMAGE_EXTENSIONS)}), "
                     f"a cls or a json ({found}); a sample is files named <key>.<ext>, one of them an image")


def _special(path: str) -> bool:
    """A device, FIFO or socket: reading one may block for ever (a FIFO) or give no end (/dev/zero)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # missing or unreachable: opening it names the cause
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


SKIPPED = "__skipped__"  # the key of the marker that stands for a skipped shard or sample
ShardErrorHandler = Callable[[ShardError, str], dict]  # (the error, its shard's URL) -> a skip marker, or raises


def skip_marker(url: str, error: str) -> dict:
    """What stands in the stream for a skipped shard or sample: the main process counts it."""
    return {SKIPPED: url, "error": error}


def fail_on_error(error: ShardError, url: str) -> dict:
    """stream.on_shard_error=fail: a shard or sample that cannot be read ends the run, the error naming it."""
    raise error from None


def skip_and_count(error: ShardError, url: str) -> dict:
    """stream.on_shard_error=skip: the shard or sample gives way to one skip marker, which the main process
    counts (StreamRun). Storage that stays unreachable past the retry budget still ends the run: that is
    not the shard's fault, and the run resumes once the storage is back."""
    if isinstance(error, StorageUnavailable):
        raise error from None
    return skip_marker(url, str(error))


SHARD_ERROR_HANDLERS: dict[str, ShardErrorHandler] = {"fail": fail_on_error, "skip": skip_and_count}


def handler_for(on_shard_error: str) -> ShardErrorHandler:
    """The handler that stream.on_shard_error names: the one place the setting is read."""
    if str(on_shard_error) not in SHARD_ERROR_HANDLERS:
        raise ValueError(f"stream.on_shard_error={on_shard_error}: must be fail or skip")
    return SHARD_ERROR_HANDLERS[str(on_shard_error)]


def read_shards(handler: ShardErrorHandler = fail_on_error):
    """Pipeline stage: shard URLs -> raw samples, one shard at a time. A shard that cannot be read goes
    to the handler, named, after whatever samples it gave before the failure."""

    def stage(shards):
        for shard in shards:
            url = shard["url"]
            try:
                yield from tar_samples(url)
            except Exception as exn:  # noqa: BLE001 - any failure, named; the handler raises it or skips the shard
                yield handler(naming_the_shard(exn, url), url)

    return stage


def guarded(step: Callable[[dict], dict], handler: ShardErrorHandler, url_key: str) -> Callable[[dict], dict]:
    """A per-sample stage under the error policy: a skip marker passes through untouched, and a sample
    whose `step` raises a ShardError goes to the handler (its shard's URL under `url_key`)."""

    def stage(sample: dict) -> dict:
        if SKIPPED in sample:
            return sample
        try:
            return step(sample)
        except ShardError as error:
            return handler(error, sample.get(url_key))

    return stage


def parse_sample(sample: dict, num_classes: int | None = None) -> dict:
    """Raw tar members of one sample -> {key, url, image bytes, cls (-1: unlabeled), gt (-1: unknown)};
    a malformed sample is a ShardError naming it. With num_classes, a class must be below it."""
    where = f"sample {sample.get('__key__')} in {sample.get('__url__')}"
    for name, value in sample.items():
        if isinstance(value, Oversized):
            raise SampleError(f"{where}: its {name} member is {value.size:,} bytes, over the limit of "
                             f"{MAX_MEMBER_BYTES >> 20} MB per member (MAX_MEMBER_BYTES)")
    image = next((sample[k] for k in IMAGE_EXTENSIONS if k in sample), None)
    if image is None:
        raise SampleError(f"{where} has no image ({', '.join(IMAGE_EXTENSIONS)})")
    out = {"key": sample["__key__"], "url": sample.get("__url__"), "image": image, "cls": -1, "gt": -1}
    try:
        if "cls" in sample:
            out["cls"] = _class(sample["cls"], "cls", where, num_classes)
        if "gt.cls" in sample:
            out["gt"] = _class(sample["gt.cls"], "gt.cls", where, num_classes)
    except ValueError as e:
        raise SampleError(f"{where}: bad cls ({e})") from None
    if "json" in sample:
        out["json"] = _metadata(sample["json"], where)
    return out


def _metadata(data: bytes, where: str) -> dict:
    """A `json` member: a JSON object. Hostile ones (nested past the recursion limit, numbers of
    thousands of digits or past a float's range, bytes that are not UTF-8) are a bad sample, not a crash."""
    try:
        value = json.loads(data, parse_float=_finite, parse_constant=_finite)
    except (ValueError, RecursionError) as e:
        raise SampleError(f"{where}: its json is not valid JSON ({_json_problem(e)})") from None
    if not isinstance(value, dict):
        kind = {list: "an array", str: "a string", bool: "true or false", type(None): "null"}.get(type(value), "a number")
        raise SampleError(f"{where}: its json is {kind}, not a JSON object")
    return value


class OutOfRange(ValueError):
    """A JSON number past a float's range (1e999) or NaN: Python would read it as inf or nan."""


def _finite(text: str) -> float:
    value = float(text)
    if not np.isfinite(value):
        raise OutOfRange(text)
    return value


def _json_problem(e: Exception) -> str:
    if isinstance(e, RecursionError):
        return "nested too deeply"
    if isinstance(e, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(e, OutOfRange):
        return "a number out of range"
    if isinstance(e, json.JSONDecodeError):
        return f"{e.msg} at line {e.lineno} column {e.colno}"
    return "a number of too many digits"  # Python's limit on the digits of an integer read from text


def _class(data: bytes, name: str, where: str, num_classes: int | None) -> int:
    """A class index, 0..num_classes-1 (an unlabeled sample has no `cls` member; -1 is no class)."""
    value = int(data)
    if value < 0 or (num_classes is not None and value >= num_classes):
        limit = f"0..{num_classes - 1} (dataset.num_classes={num_classes})" if num_classes else "0 or more"
        raise SampleError(f"{where}: {name} is {value}, not a class: a class is {limit}; fix the shard, or the config")
    return value


def sample_stages(urls: list[str], handler: ShardErrorHandler = fail_on_error, num_classes: int | None = None,
                  split_by_rank: bool = True) -> list:
    """The pipeline stages to parsed samples of `urls`, the shards split across DataLoader workers and,
    with `split_by_rank`, across the ranks of a distributed run (RANK / WORLD_SIZE). Shards and samples
    that cannot be read go to `handler`."""
    ranks = [wds.split_by_node] if split_by_rank else []
    return [wds.SimpleShardList(urls), *ranks, wds.split_by_worker, read_shards(handler),
            wds.map(guarded(partial(parse_sample, num_classes=num_classes), handler, "__url__"))]


def shard_samples(urls: list[str], handler: ShardErrorHandler = fail_on_error, num_classes: int | None = None,
                  split_by_rank: bool = True) -> wds.DataPipeline:
    return wds.DataPipeline(*sample_stages(urls, handler, num_classes=num_classes, split_by_rank=split_by_rank))


def image_digest(image: bytes) -> bytes:
    return hashlib.sha256(image).digest()


def sample_index(keys: list[str], images: list[bytes]) -> dict[str, set[bytes]]:
    """Samples by identity, key -> the digests of its images: a digest, not the bytes, is kept. A sample
    is the same key and image; a key alone is not enough (two sets written apart may both number from 0)."""
    index: dict[str, set[bytes]] = {}
    for key, image in zip(keys, images):
        index.setdefault(key, set()).add(image_digest(image))
    return index


def refuse_test_samples(test_samples: dict[str, set[bytes]]) -> Callable[[dict], dict]:
    """Pipeline step: a stream sample that is a test sample ends the run, whatever stream.on_shard_error
    says (a DataError, not a shard's fault). An image is hashed only where its key is a test key."""

    def check(sample: dict) -> dict:
        digests = test_samples.get(sample.get("key"))  # a skip marker has no key
        if digests and image_digest(sample["image"]) in digests:
            raise DataError(f"the stream holds test sample {sample['key']} (shard {sample['url']}): a test set must "
                            f"not be trained on; leave the test shards out of stream.urls, or give a test set of "
                            f"other images (stream.test_urls)")
        return sample

    return check


def make_unlabeled_batches(urls: list[str], views: Callable, batch_size: int,
                           handler: ShardErrorHandler = fail_on_error, num_classes: int | None = None,
                           test_samples: dict[str, set[bytes]] | None = None):
    """Decoded, augmented and batched in the workers: dicts of u_weak, u_strong1, u_strong2, cls, gt,
    the encoded images of the labeled samples (for the labeled pool), and `skipped`: the shards and
    samples left out by the handler (skip_and_count), as (url, error) pairs. A batch may hold no images
    at all (only skips); then u_weak is None. With num_classes, a cls or gt.cls outside 0..num_classes-1 is
    a bad sample (without it, a class past the end would fail later, in the training step). A test
    sample (`test_samples`, a sample_index of the test set) ends the run: the stream may hold test shards
    under a URL that no comparison of URLs finds (served over http, a copy)."""
    test_samples = test_samples or {}

    def to_views(s: dict) -> dict:
        image = decode_image(s["image"], f"sample {s['key']} in {s['url']}", getattr(views, "decode_shorter_side", None))
        weak, strong1, strong2 = views(image)
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

    return wds.DataPipeline(*sample_stages(urls, handler, num_classes), wds.map(refuse_test_samples(test_samples)),
                            wds.map(guarded(to_views, handler, "url")),
                            wds.batched(batch_size, collation_fn=collate, partial=True))


def labeled_samples(urls: list[str], require_cls: bool = True,
                    num_classes: int | None = None) -> tuple[list[bytes], np.ndarray, list[str]]:
    """Every (image bytes, class, key) of some shards, in order: the labeled seed set or the test set,
    whole on every rank of a distributed run."""
    images, labels, keys = [], [], []
    for s in shard_samples(urls, num_classes=num_classes, split_by_rank=False):
        label = s["cls"] if s["cls"] >= 0 else s["gt"]
        if label < 0 or (require_cls and s["cls"] < 0):
            raise SampleError(f"sample {s['key']} in {s['url']} has no cls: labeled and test shards need one")
        decode_image(s["image"], f"sample {s['key']} in {s['url']}")  # fail now, naming it, not mid-training
        images.append(s["image"])
        labels.append(label)
        keys.append(s["key"])
    if not images:
        raise ShardError(f"no samples in {few_of(urls)}: labeled and test shards must hold some")
    return images, np.asarray(labels, dtype=np.int64), keys


def read_labeled_shards(urls: list[str], require_cls: bool = True,
                        num_classes: int | None = None) -> tuple[list[bytes], np.ndarray]:
    """Every (image bytes, class) of some shards, in order (labeled_samples without the keys)."""
    return labeled_samples(urls, require_cls, num_classes)[:2]


class EncodedImages(Dataset):
    """A map-style dataset over encoded images (PNG/JPEG bytes) held in memory."""

    def __init__(self, images: list[bytes], targets, transform: Callable):
        self.images = images
        self.targets = np.asarray(targets, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        image = decode_image(self.images[i], shorter_side=getattr(self.transform, "decode_shorter_side", None))
        return self.transform(image), int(self.targets[i])
