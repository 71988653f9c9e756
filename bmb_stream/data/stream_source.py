"""The stream's sources: the shard URLs grouped into experiences, the labeled seed set and the test
set (from the manifest beside the shards or from stream.labeled_urls / stream.test_urls), the class
segments, and the per-shard sample counts that the loop checks against what it read."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bmb_stream.data.errors import ShardError, StorageUnavailable
from bmb_stream.data.manifest import Manifest, read_manifest
from bmb_stream.data.object_store import S3Settings, use_storage
from bmb_stream.data.simulate import load_recipe, simulate
from bmb_stream.data.stream import expand_urls, experience_shards, read_labeled_shards


@dataclass
class StreamSource:
    experiences: list[list[str]]
    labeled: tuple[list[bytes], np.ndarray]
    test: tuple[list[bytes], np.ndarray]
    class_names: list[str]
    segments: list[list[int]] | None = None  # classes introduced by each segment
    segment_start: list[int] = field(default_factory=list)  # the experience that introduced each segment
    shard_sizes: dict[str, int] = field(default_factory=dict)  # samples per shard file, where a manifest says

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
    if manifest is not None:
        manifest.check_classes(num_classes)
    return manifest


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


def _simulated(cfg) -> list[str]:
    """No stream.urls: the stream of stream.recipe, simulated once into the cache."""
    s = cfg.stream
    if not s.recipe:
        raise ShardError("stream.urls is not set: give shard URLs (or a stream folder), or stream.recipe to "
                         "simulate a stream")
    name, recipe = load_recipe(s.recipe)
    out = Path(s.cache_dir).expanduser() / f"{name}-seed{recipe['seed']}"
    print(f"stream: {name} (simulated once, cached in {out})")
    simulate(name, recipe, out, overwrite=True, progress=cfg.progress)  # our cache: rebuilt if the recipe changed
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


def warn_missing_classes(what: str, labels: np.ndarray, names: list[str]) -> None:
    """A class absent from the seed or the test set is legal but likely a mistake: say so, once, at start-up."""
    missing = np.flatnonzero(np.bincount(labels, minlength=len(names)) == 0).tolist()
    if missing:
        listed = ", ".join(str(c) if names[c] == str(c) else f"{c} ({names[c]})" for c in missing[:20])
        more = f", ... ({len(missing)} in all)" if len(missing) > 20 else ""
        print(f"bmb-stream: warning: the {what} has no samples of class{'es' if len(missing) > 1 else ''} "
              f"{listed}{more}", file=sys.stderr)


def prepare_stream(cfg) -> StreamSource:
    s = cfg.stream
    use_storage(S3Settings.from_config(cfg.get("storage")))
    num_classes = cfg.dataset.num_classes
    urls = _simulated(cfg) if s.urls is None else expand_urls(s.urls)  # null: the recipe; given: must name shards
    manifest = _manifest_of(urls, num_classes)
    experiences = experience_shards(urls, s.shards_per_experience, cfg.seed, s.shuffle_shards,
                                    s.resampled, s.max_experiences)
    labeled = read_labeled_shards(_set_urls("labeled", s.labeled_urls, manifest, urls), num_classes=num_classes)
    test = read_labeled_shards(_set_urls("test", s.test_urls, manifest, urls), num_classes=num_classes)
    names = (manifest.class_names if manifest else None) or [str(c) for c in range(num_classes)]
    warn_missing_classes("seed (labeled) set", labeled[1], names)
    warn_missing_classes("test set", test[1], names)
    segments, starts = _segments(manifest, experiences)
    return StreamSource(experiences, labeled, test, names, segments, starts, manifest.shard_sizes() if manifest else {})
