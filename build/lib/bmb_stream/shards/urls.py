"""Shard URLs: what `stream.urls`, `stream.labeled_urls` and `stream.test_urls` name (brace patterns,
local folders, s3 prefixes, a folder's manifest), counted before they are expanded, and the shards
of each experience."""

from __future__ import annotations

import errno
import os
import re
import stat
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
from braceexpand import UnbalancedBracesError, braceexpand, make_char_range

from bmb_stream.errors import ShardError, few_of
from bmb_stream.shards.manifest import SETS, read_manifest
from bmb_stream.storage.object_store import list_objects

# the shards one brace pattern may name, counted before anything is expanded: a range one digit too
# long names ten times as many, and ten million URLs fill gigabytes of memory before a shard is read
MAX_SHARD_URLS = 1_000_000
URL_KEYS = {"stream": "stream.urls", "labeled": "stream.labeled_urls", "test": "stream.test_urls"}


def expand_urls(urls, which: str = "stream") -> list[str]:
    """Shard URLs from a brace pattern, a list of them, a folder or an s3:// key prefix. A folder (a
    local one, an s3:// prefix ending in `/` or naming a folder, an http(s) URL ending in `/`) means
    its `which` shards: stream, labeled (the seed set) or test; those its manifest.json names, else
    `which-*.tar`. A key prefix such as `s3://bucket/x/stream-` means every `.tar` under it.
    None gives []; anything else that names no shard (an empty folder, no such file) is a ShardError."""
    if urls is None:
        return []
    patterns = [urls] if isinstance(urls, str) else [str(u) for u in urls]
    key = f"{URL_KEYS[which]}={urls if isinstance(urls, str) else patterns}"
    out = [u for p in patterns if p for u in _expand(p.removeprefix("file://"), which, key)]
    if not out:
        raise ShardError(f"{key}: names no shards; give a folder, a brace pattern or a list of shard URLs")
    local = [u for u in out if "://" not in u]
    if local and not any(_local_stat(u, key) for u in local):
        raise ShardError(f"{key}: no such file or folder ({few_of(local)})")
    return out


def _expand(pattern: str, which: str, key: str) -> list[str]:
    if "://" not in pattern and _is_folder(pattern, key):
        try:  # every entry: a link to a device or to nothing is named by the reader, not left out unsaid
            names = os.listdir(pattern)
        except OSError as e:
            raise _path_error(key, pattern, e) from None
        return _folder(pattern.rstrip("/") or "/", which, key, names)
    if pattern.startswith("s3://") and "{" not in pattern and not pattern.endswith(".tar"):
        return _s3_prefix(pattern, which, key)
    if pattern.startswith(("http://", "https://")) and pattern.endswith("/"):
        return _folder(pattern.rstrip("/"), which, key, None)  # http has no listing: only a manifest says
    return _braces(pattern, key)


def _is_folder(pattern: str, key: str) -> bool:
    if "{" in pattern:  # a brace pattern, not a path (it may be too long for one): its shards are probed
        try:
            return Path(pattern).is_dir()
        except OSError:
            return False
    found = _local_stat(pattern, key)
    return found is not None and stat.S_ISDIR(found.st_mode)


def _local_stat(path: str, key: str) -> os.stat_result | None:
    """A local path's status, None where there is nothing; any other failure (a name too long, a folder
    that may not be read, a loop of links) is a ShardError naming the key, the path and the reason."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise _path_error(key, path, e) from None


PATH_FIXES = {errno.ENAMETOOLONG: "give a shorter path", errno.EACCES: "give a path this user may read",
              errno.ELOOP: "its symbolic links loop; fix them"}


def _path_error(key: str, path: str, e: OSError) -> ShardError:
    where = key if key.endswith(f"={path}") else f"{key}: {path}"
    return ShardError(f"{where}: {e.strerror or e}; {PATH_FIXES.get(e.errno, 'check the path')}")


def _braces(pattern: str, key: str) -> list[str]:
    """A brace pattern's URLs, counted first: at most MAX_SHARD_URLS."""
    try:
        count = brace_count(pattern)
        if count > MAX_SHARD_URLS:
            shown = f"{count:,}" if count <= 10**15 else "over 10^15"
            raise ShardError(f"{key}: the brace pattern names {shown} shards, over the limit of {MAX_SHARD_URLS:,} "
                             f"(MAX_SHARD_URLS); is a range a digit too long?")
        return list(braceexpand(pattern))
    except UnbalancedBracesError:
        raise ShardError(f"{key}: unbalanced braces in the pattern; a range is written as "
                         f"stream-{{000000..000099}}.tar") from None
    except RecursionError:
        raise ShardError(f"{key}: braces nested too deeply in the pattern") from None


_INT_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?:\.\.-?(\d+))?$")  # braceexpand's own grammar
_CHAR_RANGE = re.compile(r"^([A-Za-z])\.\.([A-Za-z])(?:\.\.-?(\d+))?$")


def brace_count(pattern: str) -> int:
    """How many strings braceexpand(pattern) gives, counted by its grammar without expanding anything:
    the product of its top-level brace expressions' counts."""
    count, depth, start, pos = 1, 0, 0, 0
    while pos < len(pattern):
        if pattern[pos] == "\\":
            pos += 2
            continue
        if pattern[pos] == "{":
            start = pos if depth == 0 else start
            depth += 1
        elif pattern[pos] == "}":
            depth -= 1
            if depth == 0:
                count *= _expression_count(pattern[start + 1: pos])
        pos += 1
    return count


def _expression_count(expr: str) -> int:
    """The count of one brace expression: a range, alternatives (each a pattern), or text in braces."""
    if match := _INT_RANGE.match(expr):
        first, last, step = int(match[1]), int(match[2]), int(match[3] or 1) or 1
        return abs(last - first) // step + 1
    if match := _CHAR_RANGE.match(expr):
        return len(make_char_range(*match.groups()))
    alternatives = _alternatives(expr)
    return brace_count(expr) if alternatives is None else sum(map(brace_count, alternatives))


def _alternatives(expr: str) -> list[str] | None:
    """`a,b{c,d}` -> ["a", "b{c,d}"]: split at the commas outside nested braces (None: no such comma)."""
    parts, depth, start, pos = [], 0, 0, 0
    while pos < len(expr):
        if expr[pos] == "\\":
            pos += 2
            continue
        depth += {"{": 1, "}": -1}.get(expr[pos], 0)
        if expr[pos] == "," and depth == 0:
            parts.append(expr[start:pos])
            start = pos + 1
        pos += 1
    return None if depth != 0 or not parts else [*parts, expr[start:]]


def _s3_prefix(prefix: str, which: str, key: str) -> list[str]:
    """A folder (`s3://b/x/` or `s3://b/x` holding `x/...`) means its shards; another prefix every .tar under it."""
    objects = list_objects(prefix, suffix="")
    folder = prefix.rstrip("/")
    inside = [u[len(folder) + 1:] for u in objects if u.startswith(folder + "/")]
    if prefix.endswith("/") or inside:
        return _folder(folder, which, key, [n for n in inside if "/" not in n])
    tars = [u for u in objects if u.endswith(".tar")]
    if not tars:
        raise ShardError(f"{key}: no .tar objects under this prefix ({few_of(objects, 'found: ') or 'none at all'})")
    return tars


def _folder(folder: str, which: str, key: str, names: list[str] | None) -> list[str]:
    """A folder's shards of one set: never its other sets (a stream folder holds seed and test shards too)."""
    manifest = read_manifest(folder)
    if manifest is not None:
        return manifest.urls(which)
    pattern = SETS[which][1]
    if names is None:
        raise ShardError(f"{key}: no manifest.json in this http(s) folder, which cannot be listed; name the "
                         f"shards, e.g. {folder}/{which}-{{000000..000009}}.tar")
    found = sorted(n for n in names if fnmatch(n, pattern))
    if not found:
        raise ShardError(f"{key}: the folder holds no {pattern} shards and no manifest.json "
                         f"({few_of(sorted(names), 'found: ') or 'it is empty'})")
    return [f"{folder}/{n}" for n in found]


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
