"""The stream's sources: the shard URLs grouped into experiences, the labeled seed set and the test
set (from the manifest beside the shards or from stream.labeled_urls / stream.test_urls), the class
segments, and the per-shard sample counts that the loop checks against what it read.

The test set must be apart from what the run trains on: a test shard that is also a seed or stream
shard, or a test sample that is also a seed sample (the same key and image), ends the run at start-up;
a stream sample that is a test sample (the test shards under another URL, or copied) ends it when read.
The seed and test sets are read whole: stream.on_shard_error=skip applies to the stream's shards only.
Without a manifest, a shard cut at a sample boundary or replaced by a shorter one cannot be told from
a whole one: a one-line warning says so at start-up."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bmb_stream.errors import DataError, FolderBusy, SampleError, ShardError, StorageUnavailable, few_of
from bmb_stream.redaction import redact_text
from bmb_stream.shards.manifest import Manifest, read_manifest
from bmb_stream.shards.reading import image_digest, labeled_samples, sample_index
from bmb_stream.shards.urls import expand_urls, experience_shards
from bmb_stream.simulation.recipes import load_recipe
from bmb_stream.simulation.simulate import simulate
from bmb_stream.storage.locks import FolderLock
from bmb_stream.storage.object_store import S3Settings, read_bytes, use_storage
from bmb_stream.storage.upload import INCOMPLETE


@dataclass
class StreamSource:
    experiences: list[list[str]]
    labeled: tuple[list[bytes], np.ndarray]
    test: tuple[list[bytes], np.ndarray]
    class_names: list[str]
    segments: list[list[int]] | None = None  # classes introduced by each segment
    segment_start: list[int] = field(default_factory=list)  # the experience that introduced each segment
    # each experience's class histogram (its shards', from the manifest; None where unknown): its prior
    histograms: list[np.ndarray] | None = None
    shard_sizes: dict[str, int] = field(default_factory=dict)  # samples per shard file, where a manifest says
    # the test set's samples (key -> image digests), which the stream's readers refuse as they read: the
    # stream is too big to read first
    test_samples: dict[str, set[bytes]] = field(default_factory=dict)

    def size_of(self, url: str) -> int | None:
        """The shard's sample count as its manifest gives it (None where unknown)."""
        return self.shard_sizes.get(_name(url))

    def short_shards(self, shards: list[str], read: Counter, passes: int, skipped: set[str]) -> list[tuple[str, str]]:
        """Shards that yielded fewer samples than their manifest promises (truncated or replaced), as
        (url, error); shards already skipped are not counted twice."""
        short = []
        for url, times in Counter(shards).items():
            expected = self.size_of(url)
            if url not in skipped and expected is not None and read[url] != expected * times * passes:
                short.append((url, f"shard {url}: {read[url] // max(1, times * passes)} samples read, its manifest "
                                   f"says {expected} (truncated or replaced?)"))
        return short


def _name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def _beside(url: str) -> str:
    """The folder of a shard."""
    return url.rsplit("/", 1)[0] if "/" in url else "."


def _manifest_of(urls: list[str], num_classes: int) -> Manifest | None:
    """The checked manifest.json beside the first shard (local, http(s) or s3), if there is one."""
    manifest = read_manifest(_beside(urls[0]))
    if manifest is None and read_bytes(f"{_beside(urls[0])}/{INCOMPLETE}") is not None:
        raise ShardError(f"{_beside(urls[0])} holds an unfinished output of bmb-stream simulate or shards ({INCOMPLETE}, "
                         f"no manifest.json): run that command again to finish it")
    if manifest is not None:
        manifest.check_classes(num_classes)
    return manifest


def _histograms(manifest: Manifest | None, experiences: list[list[str]]) -> list[np.ndarray] | None:
    """Each experience's class histogram, the sum of its shards' (None unless the manifest has every shard's)."""
    hist = manifest.histograms() if manifest is not None else {}
    if not all(_name(url) in hist for shards in experiences for url in shards):
        return None
    return [np.sum([hist[_name(url)] for url in shards], axis=0) for shards in experiences]


def _segments(manifest: Manifest | None, experiences: list[list[str]]) -> tuple[list[list[int]] | None, list[int]]:
    """Classes grouped by the experience in which the stream first shows them (from the manifest)."""
    if manifest is None:
        return None, []
    hist = manifest.histograms()
    seen: set[int] = set()
    segments, starts = [], []
    for k, shards in enumerate(experiences):
        present = set()
        for url in shards:
            h = hist.get(_name(url))
            if h is None:
                return None, []
            present |= set(np.flatnonzero(h).tolist())
        new = sorted(present - seen)
        if new:
            segments.append(new)
            starts.append(k)
            seen |= present
    return segments, starts


def cache_entry(cache_dir: str, name: str, recipe: dict) -> Path:
    """A recipe's folder in the cache, named by its content too: a run of an edited recipe of the same
    name and seed builds its own entry, never over one that another run is reading."""
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]
    return Path(cache_dir).expanduser() / f"{name}-seed{recipe['seed']}-{digest}"


def _simulated(cfg) -> list[str]:
    """No stream.urls: the stream of stream.recipe, simulated once into the cache."""
    s = cfg.stream
    if not s.recipe:
        raise ShardError("stream.urls is not set: give shard URLs (or a stream folder), or stream.recipe to "
                         "simulate a stream")
    name, recipe = load_recipe(s.recipe)
    out = cache_entry(s.cache_dir, name, recipe)
    # one run at a time builds an entry; its lock lives beside it, out of what a rebuild replaces
    lock = FolderLock(out.parent / ".building" / out.name)
    try:
        lock.acquire()
    except FolderBusy as busy:
        raise DataError(f"stream cache {out} is being built by another run (PID {busy.pid or 'unknown'}); wait for it "
                        f"to finish, then run again") from None
    except OSError as e:
        raise DataError(f"stream.cache_dir={s.cache_dir}: cannot write there ({e.strerror or e}); give a writable "
                        f"folder") from None
    try:
        print(f"stream: {name} (simulated once, cached in {out})")
        simulate(name, recipe, out, overwrite=True, progress=cfg.progress)  # our cache: rebuilt if left unfinished
    finally:
        lock.release()
    return expand_urls(str(out))


def _set_urls(which: str, given, manifest: Manifest | None, stream_urls: list[str]) -> list[str]:
    """The seed (labeled) or test set's shards: as given, else those the manifest beside the stream
    names, else the folder's `labeled-*.tar` / `test-*.tar`."""
    if given is not None:
        return expand_urls(given, which)
    if manifest is not None:
        return manifest.urls(which)
    beside = _beside(stream_urls[0])
    try:
        return expand_urls(f"{beside}/", which)
    except StorageUnavailable:
        raise
    except ShardError:
        raise ShardError(f"stream.{which}_urls is required: there is neither a manifest.json nor {which}-*.tar "
                         f"shards beside the stream shards ({beside})") from None


def _read_set(which: str, urls: list[str], num_classes: int):
    """The seed or test set, whole: a bad sample or shard in it ends the run, saying what to do."""
    try:
        return labeled_samples(urls, num_classes=num_classes)
    except StorageUnavailable:
        raise
    except ShardError as e:
        whole = (f"the {'seed' if which == 'labeled' else 'test'} set is read whole (stream.on_shard_error=skip "
                 f"applies to the stream's shards only)")
        if isinstance(e, SampleError):
            raise SampleError(f"{e}; repair or drop that sample: {whole}") from None
        raise type(e)(f"{e}; {whole}") from None


def warn_missing_classes(what: str, labels: np.ndarray, names: list[str]) -> None:
    """A class absent from the seed or the test set is legal but likely a mistake: say so, once, at start-up."""
    missing = np.flatnonzero(np.bincount(labels, minlength=len(names)) == 0).tolist()
    if missing:
        listed = ", ".join(str(c) if names[c] == str(c) else f"{c} ({names[c]})" for c in missing[:20])
        more = f", ... ({len(missing)} in all)" if len(missing) > 20 else ""
        print(f"bmb-stream: warning: the {what} has no samples of class{'es' if len(missing) > 1 else ''} "
              f"{listed}{more}", file=sys.stderr)


def _same_shards(urls: list[str], others: list[str]) -> list[str]:
    """The shards of `urls` that are also in `others` (a local file under any of its paths)."""
    def where(url: str) -> str:
        return url if "://" in url else os.path.realpath(url)
    theirs = set(map(where, others))
    return list(dict.fromkeys(u for u in urls if where(u) in theirs))


def refuse_shared_shards(stream: list[str], labeled: list[str], test: list[str]) -> None:
    """The test set shares no shard with the seed set or the stream: a run would report accuracy on
    images it trained on."""
    for what, urls in (("the seed set (stream.labeled_urls)", labeled), ("the stream (stream.urls)", stream)):
        shared = _same_shards(test, urls)
        if shared:
            raise DataError(f"{what} and the test set (stream.test_urls) share shards ({few_of(shared)}): the run would "
                            f"report accuracy on images it trained on; give a test set of other images")


def refuse_shared_samples(seed_keys: list[str], seed_images: list[bytes], test: dict[str, set[bytes]]) -> None:
    """No seed sample is a test sample (`test`: a sample_index) under another shard's name."""
    shared = [key for key, image in zip(seed_keys, seed_images) if image_digest(image) in test.get(key, ())]
    if shared:
        raise DataError(f"the seed set and the test set share {len(shared)} sample(s) (the same key and image: "
                        f"{few_of(shared)}): the run would report accuracy on images it trained on; give a test set "
                        f"of other images")


def warn_without_manifest(urls: list[str]) -> None:
    """Only a manifest's sample counts tell a whole shard from one cut at a sample boundary."""
    print(f"bmb-stream: warning: no manifest.json beside the stream shards ({redact_text(_beside(urls[0]))}): "
          f"a shard cut at a sample boundary, or replaced by a shorter one, is read as whole", file=sys.stderr)


def prepare_stream(cfg) -> StreamSource:
    s = cfg.stream
    use_storage(S3Settings.from_config(cfg.storage))
    num_classes = cfg.dataset.num_classes
    urls = _simulated(cfg) if s.urls is None else expand_urls(s.urls)  # null: the recipe; given: must name shards
    manifest = _manifest_of(urls, num_classes)
    experiences = experience_shards(urls, s.shards_per_experience, cfg.seed, s.shuffle_shards,
                                    s.resampled, s.max_experiences)
    labeled_urls = _set_urls("labeled", s.labeled_urls, manifest, urls)
    test_urls = _set_urls("test", s.test_urls, manifest, urls)
    refuse_shared_shards(urls, labeled_urls, test_urls)
    labeled_images, labeled_classes, labeled_keys = _read_set("labeled", labeled_urls, num_classes)
    test_images, test_classes, test_keys = _read_set("test", test_urls, num_classes)
    test = sample_index(test_keys, test_images)
    refuse_shared_samples(labeled_keys, labeled_images, test)
    names = (manifest.class_names if manifest else None) or [str(c) for c in range(num_classes)]
    warn_missing_classes("seed (labeled) set", labeled_classes, names)
    warn_missing_classes("test set", test_classes, names)
    if manifest is None:  # last: a start-up error stays the one line on stderr
        warn_without_manifest(urls)
    segments, starts = _segments(manifest, experiences)
    return StreamSource(experiences, (labeled_images, labeled_classes), (test_images, test_classes), names, segments,
                        starts, _histograms(manifest, experiences), manifest.shard_sizes() if manifest else {}, test)
