"""The stream manifest: `manifest.json` beside the shards (a local folder, http(s) or s3), read and
checked here and only here.

A stream folder's manifest names its stream shards (`shards[*].file`, with each shard's `samples`
and `class_histogram`), its seed set (`labeled_set.files`) and its test set (`test_set.files`), and
`class_names`. It is untrusted input like the shards: it is checked whole at start-up, so that a bad
one stops the run with one line naming its field, not with a traceback hours later (the class
names, for one, are used only by the plots at the end of a run).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from bmb_stream.errors import ShardError
from bmb_stream.storage.object_store import read_bytes
from bmb_stream.storage.upload import INCOMPLETE, ShardDestination

MANIFEST = "manifest.json"
FORMAT = "bmb-stream-shards/1"  # the `format` of a manifest this package writes
PLOT = "plots/stream_prior.png"  # the class-prior plot a simulated stream keeps beside its manifest
# what a folder of shards means for each key: the manifest's entry, else the shards named so
SETS = {"stream": ("shards", "stream-*.tar"), "labeled": ("labeled_set", "labeled-*.tar"),
        "test": ("test_set", "test-*.tar")}
FIX = "fix it, or write the stream again (bmb-stream simulate ... overwrite=true)"


@dataclass(frozen=True)
class Manifest:
    url: str
    shards: list[dict] = field(default_factory=list)  # each with file, samples, class_histogram
    sets: dict[str, list[str]] = field(default_factory=dict)  # labeled_set, test_set, unlabeled_set -> files
    class_names: list[str] | None = None
    num_classes: int | None = None

    @property
    def folder(self) -> str:
        return self.url.rsplit("/", 1)[0]

    def urls(self, which: str) -> list[str]:
        """The URLs of the stream shards (`stream`), the seed set (`labeled`) or the test set (`test`)."""
        entry = SETS[which][0]
        files = [s["file"] for s in self.shards] if which == "stream" else self.sets.get(entry, [])
        if not files:
            key = "stream.urls" if which == "stream" else f"stream.{which}_urls"
            raise ShardError(f"manifest {self.url}: no {entry} in it; name the shards in {key}")
        return [f"{self.folder}/{f}" for f in files]

    def shard_sizes(self) -> dict[str, int]:
        return {s["file"]: s["samples"] for s in self.shards}

    def histograms(self) -> dict[str, np.ndarray]:
        return {s["file"]: np.asarray(s["class_histogram"], dtype=np.int64) for s in self.shards}

    def check_classes(self, num_classes: int) -> None:
        """The manifest describes a dataset of num_classes classes (else the run would fail late)."""
        counts = [("num_classes", self.num_classes), ("class_names", None if self.class_names is None else
                                                        len(self.class_names))]
        counts += [(f"shards[{i}].class_histogram", len(s["class_histogram"])) for i, s in enumerate(self.shards)]
        for name, n in counts:
            if n is not None and n != num_classes:
                raise ShardError(f"manifest {self.url}: {name} has {n} classes but dataset.num_classes={num_classes}; "
                                 f"set dataset.num_classes (or the dataset the stream was made from) to match")


def read_manifest(folder: str) -> Manifest | None:
    """The checked manifest of a folder of shards, or None when it has none."""
    url = f"{folder.rstrip('/')}/{MANIFEST}"
    try:
        data = read_bytes(url)
    except ShardError as e:  # the storage's own message starts with the URL
        raise type(e)(f"cannot read the manifest {e}") from None
    except OSError as e:  # a local one: a folder that may not be read, a path too long
        raise ShardError(f"cannot read the manifest {url}: {e.strerror or e}") from None
    return None if data is None else parse_manifest(data, url)


def parse_manifest(data: bytes, url: str) -> Manifest:
    try:
        m = json.loads(data)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError both are
        raise ShardError(f"manifest {url}: not valid JSON ({e}); {FIX}") from None
    _check(isinstance(m, dict), url, "its top level", "is not a JSON object")
    shards = m.get("shards", [])
    _check(isinstance(shards, list), url, "shards", "is not a list")
    for i, s in enumerate(shards):
        where = f"shards[{i}]"
        _check(isinstance(s, dict), url, where, "is not an object with file, samples and class_histogram")
        _check(_is_file(s.get("file")), url, f"{where}.file", "is not a file name in the manifest's folder")
        _check(_is_count(s.get("samples")), url, f"{where}.samples", "is not an integer >= 0")
        histogram = s.get("class_histogram")
        _check(isinstance(histogram, list) and all(map(_is_count, histogram)), url, f"{where}.class_histogram",
               "is not a list of integers >= 0")
    sets = {}
    for name in ("labeled_set", "test_set", "unlabeled_set"):
        if name in m:
            files = m[name].get("files") if isinstance(m[name], dict) else None
            _check(isinstance(files, list) and files and all(map(_is_file, files)), url, f"{name}.files",
                   "is not a list of the set's file names")
            sets[name] = files
    names, n = m.get("class_names"), m.get("num_classes")
    _check(names is None or (isinstance(names, list) and all(isinstance(x, str) for x in names)), url,
           "class_names", "is not a list of strings")
    _check(n is None or _is_count(n), url, "num_classes", "is not an integer >= 0")
    return Manifest(url, shards, sets, names, n)


def _check(ok: bool, url: str, name: str, problem: str) -> None:
    if not ok:
        raise ShardError(f"manifest {url}: {name} {problem}; {FIX}")


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _is_file(x) -> bool:
    """A plain file name: a manifest names files in its own folder, never elsewhere."""
    return isinstance(x, str) and x not in ("", ".", "..") and "/" not in x and "\\" not in x


# The writing side: which files of an output folder are ours, so that a new output replaces only them.

def manifest_files(manifest: dict) -> list[str]:
    """The shards a manifest of ours lists: a stream's (`shards`) or a split's (`*_set`)."""
    files = [entry["file"] for entry in manifest.get("shards", [])]
    for key in ("labeled_set", "unlabeled_set", "test_set"):
        files += list(manifest.get(key, {}).get("files", []))
    return files


def read_our_manifest(dest: ShardDestination, names) -> dict | None:
    """The destination's manifest.json if it is a readable manifest of ours, else None."""
    if MANIFEST not in names:
        return None
    try:
        old = json.loads(dest.read(MANIFEST))
        manifest_files(old)  # raises for file lists not of our making
    except (ValueError, TypeError, AttributeError, KeyError):
        return None
    return old if str(old.get("format", "")).startswith("bmb-stream-") else None


def earlier_output(dest: ShardDestination, prefixes: tuple[str, ...]) -> list[str]:
    """What an earlier run of ours left in `dest`, the only files a new output replaces: the files its
    manifest lists, the manifest and our plot, or, without a manifest of ours, the shards named with
    our `prefixes`; and the marker of an output left incomplete. Every other file is the user's and stays."""
    names = dest.names()
    old = read_our_manifest(dest, names)
    if old is None:
        return [n for n in names if n.endswith(".tar") and n.startswith(prefixes) or n == INCOMPLETE]
    ours = {MANIFEST, PLOT, INCOMPLETE, *manifest_files(old)}
    return [n for n in names if n in ours]


def incomplete(names) -> bool:
    """The destination holds an output of ours left incomplete (its manifest never came): a retry replaces it."""
    return INCOMPLETE in names and MANIFEST not in names
