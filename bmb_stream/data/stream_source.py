"""The stream's sources: the shard URLs grouped into experiences, the labeled seed set and the test
set (from the manifest beside the shards or from stream.labeled_urls / stream.test_urls), the class
segments, and the per-shard sample counts that the loop checks against what it read."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bmb_stream.data.errors import ShardError
from bmb_stream.data.object_store import S3Settings, read_bytes, use_storage
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

    def short_shards(self, shards: list[str], read: Counter, passes: int, skipped: set[str]) -> list[tuple[str, str]]:
        """Shards that yielded fewer samples than their manifest promises (truncated or replaced), as
        (url, error); shards already skipped are not counted twice."""
        short = []
        for url, times in Counter(shards).items():
            expected = self.shard_sizes.get(_name(url))
            if url not in skipped and expected is not None and read[url] != expected * times * passes:
                short.append((url, f"shard {url}: {read[url] // max(1, times * passes)} samples read, its manifest "
                                   f"says {expected} (truncated or replaced?)"))
        return short


def _name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def _manifest_of(urls: list[str]) -> tuple[dict | None, str | None]:
    """The manifest.json beside the first shard (local, http(s) or s3), and that folder."""
    if not urls:
        return None, None
    folder = urls[0].rsplit("/", 1)[0] if "/" in urls[0] else "."
    data = read_bytes(f"{folder}/manifest.json")
    return (json.loads(data) if data is not None else None), folder


def _segments(manifest: dict | None, experiences: list[list[str]]) -> tuple[list[list[int]] | None, list[int]]:
    """Classes grouped by the experience in which the stream first shows them (from the manifest)."""
    if manifest is None:
        return None, []
    hist = {s["file"]: np.asarray(s["class_histogram"]) for s in manifest.get("shards", [])}
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


def prepare_stream(cfg) -> StreamSource:
    s = cfg.stream
    use_storage(S3Settings.from_config(cfg.get("storage")))
    urls = expand_urls(s.urls)
    if not urls:
        if not s.recipe:
            raise ShardError("stream.urls is empty: give shard URLs, or stream.recipe to simulate a stream")
        cache = Path(s.cache_dir).expanduser()
        name, recipe = load_recipe(s.recipe)
        out = cache / f"{name}-seed{recipe['seed']}"
        print(f"stream: {name} (simulated once, cached in {out})")
        simulate(name, recipe, out, overwrite=True, progress=bool(cfg.progress))  # our cache: rebuilt if the recipe changed
        urls = sorted(str(p) for p in out.glob("stream-*.tar"))
    manifest, folder = _manifest_of(urls)
    experiences = experience_shards(urls, int(s.shards_per_experience), int(cfg.seed), bool(s.shuffle_shards),
                                    bool(s.resampled), s.max_experiences)

    def from_manifest(key: str, given) -> list[str]:
        if given:
            return expand_urls(given)
        if manifest is not None and key in manifest:
            return [f"{folder}/{f}" for f in manifest[key]["files"]]
        raise ShardError(f"stream.{'labeled' if key == 'labeled_set' else 'test'}_urls is required "
                         f"(no manifest.json beside the stream names one)")

    labeled = read_labeled_shards(from_manifest("labeled_set", s.labeled_urls))
    test = read_labeled_shards(from_manifest("test_set", s.test_urls))
    num_classes = int(cfg.dataset.num_classes)
    for what, (_, labels) in (("labeled", labeled), ("test", test)):
        if labels.max() >= num_classes:
            raise ShardError(f"the {what} shards have class {labels.max()} but dataset.num_classes={num_classes}")
    names = (manifest or {}).get("class_names") or [str(c) for c in range(num_classes)]
    segments, starts = _segments(manifest, experiences)
    sizes = {e["file"]: int(e["samples"]) for e in (manifest or {}).get("shards", [])}
    return StreamSource(experiences, labeled, test, names, segments, starts, sizes)
