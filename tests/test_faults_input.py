"""Fresh bad inputs on the data path, each ending with one line that names the cause (exit code 2, or
75 for storage that stalls), or skipped and counted under stream.on_shard_error=skip: shards that give
no sample, links to a device or to nothing, paths too long, image members of other extensions, hostile
json (in the stream, the seed set, the test set), brace patterns that name millions of shards, a test
set that is the seed set or in the stream, a stream cache being built by another run or of an edited
recipe, an http shard that trickles (and a stop signal while it does), secrets in the URLs of skipped
shards."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bmb_stream.cli import main
from bmb_stream.engine.stream_source import cache_entry
from bmb_stream.simulation.recipes import load_recipe
from tests.helpers import error_line
from tests.test_faults_shards import (
    TINY,
    good_manifest,
    png,
    ranged_headers,
    samples,
    sets_of,
    stream_folder,
    write_tar,
)

ROOT = Path(__file__).resolve().parents[1]
NO_MANIFEST = "bmb-stream: warning: no manifest.json beside the stream shards"


def run(args, capsys, code: int) -> tuple[str, str]:
    """Run the CLI in this process with TINY, expecting exit `code`: (its error line
    (tests.helpers.error_line), or "" for exit 0, which prints nothing on stderr; stdout). The warning
    that no manifest.json is beside the shards is left out."""
    assert main([*TINY, *args]) == code
    out, err = captured = capsys.readouterr()
    if code:
        return error_line(captured, code, ignore=(NO_MANIFEST,)), out
    assert not [line for line in err.splitlines() if line.strip() and not line.startswith(NO_MANIFEST)], err
    return "", out


def summary_of(run_dir) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def encoded(value: int, fmt: str) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


# ----- a stream cache entry is built by one run at a time -----


def test_a_stream_cache_being_built_by_another_run_is_refused_naming_its_pid(tmp_path, capsys):
    recipe = tmp_path / "drift.yaml"  # the default job's recipe, on a dataset that is not there: a build fails at once
    recipe.write_text((ROOT / "streams" / "fmnist_lt_drift.yaml").read_text().replace(
        "dataset_overrides: {}", f"dataset_overrides: {{root: {tmp_path}/none}}"))
    entry = cache_entry(tmp_path / "cache", *load_recipe(str(recipe)))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom bmb_stream.storage.locks import FolderLock\n"
         "lock = FolderLock(sys.argv[1]).acquire()\nprint('held', flush=True)\ntime.sleep(60)",
         str(entry.parent / ".building" / entry.name)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main([f"stream.recipe={recipe}", f"stream.cache_dir={tmp_path / 'cache'}", f"run.dir={tmp_path / 'run'}",
                     "progress=false"]) == 2
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert err == (f"bmb-stream: error: stream cache {entry} is being built by another run (PID {holder.pid}); wait "
                   f"for it to finish, then run again\n")
    assert not entry.exists()  # nothing written into the entry the other run builds


def test_an_edited_recipe_of_the_same_name_and_seed_is_cached_apart(tmp_path, capsys):
    """A run reading its entry is never rebuilt under by a run of an edited recipe of the same name and seed."""
    entries = []
    for shards in (20, 10):
        recipe = tmp_path / str(shards) / "drift.yaml"  # on a dataset that is not there: a build fails at once
        recipe.parent.mkdir()
        recipe.write_text((ROOT / "streams" / "fmnist_lt_drift.yaml").read_text().replace(
            "dataset_overrides: {}", f"dataset_overrides: {{root: {tmp_path}/none}}").replace(
            "shards: 20", f"shards: {shards}"))
        assert main([f"stream.recipe={recipe}", f"stream.cache_dir={tmp_path / 'cache'}",
                     f"run.dir={tmp_path / 'run'}", "progress=false"]) == 2
        out = capsys.readouterr().out
        assert out.startswith(f"stream: drift (simulated once, cached in {tmp_path / 'cache'}/drift-seed0-"), out
        entries.append(out.split("cached in ")[1].split(")")[0])
    assert entries[0] != entries[1]


# ----- shards that give no sample; image members of any common extension -----


def test_image_members_of_any_common_extension_in_any_case_are_read(tmp_path, capsys):
    folder = stream_folder(tmp_path / "s")
    kinds = [("PNG", "PNG"), ("JPG", "JPEG"), ("Jpeg", "JPEG"), ("bmp", "BMP"), ("tiff", "TIFF"), ("gif", "GIF"),
             ("ppm", "PPM")]
    for i, (ext, fmt) in enumerate(kinds, start=1):
        write_tar(folder / f"stream-{i:06d}.tar",
                  [(f"s{i}-{j}", {ext: encoded(40 + 150 * (j % 2), fmt), "gt.cls": str(j % 2).encode()}) for j in range(8)])
    run([f"stream.urls={folder}/stream-{{000000..{len(kinds):06d}}}.tar", *sets_of(folder), f"run.dir={tmp_path}/r"],
        capsys, 0)
    summary = summary_of(tmp_path / "r")
    assert summary["samples_seen"] == 8 * (len(kinds) + 1) and summary["skipped_shards"] == []


def no_sample_shard(path: Path, shape: str) -> None:
    """A shard of one shape that gives no sample."""
    if shape == "empty tar":
        write_tar(path, [])
    elif shape == "only folders":
        with tarfile.open(path, "w") as tar:
            for name in ("a", "a/b"):
                info = tarfile.TarInfo(name)
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
    elif shape == "only .txt files":
        write_tar(path, [("a", {"txt": b"notes"}), ("b", {"TXT": b"more"})])
    elif shape == "/dev/null":
        path.symlink_to("/dev/null")
    elif shape == "a FIFO":
        os.mkfifo(path)  # opening one blocks until a writer comes
    elif shape == "zero bytes":
        path.write_bytes(b"")


NO_SAMPLE = {"empty tar": "no samples in it: the tar file is empty; write it again, or leave it out",
             "only .txt files": "no samples in it: none of its files is an image (png, jpg, ",
             "only folders": "no samples in it: the tar file holds no files, only folders or links (found: a/, a/b/)",
             "/dev/null": "not a regular file (a device, a FIFO or a socket)",
             "a FIFO": "not a regular file (a device, a FIFO or a socket)",
             "zero bytes": "not a tar file, or a truncated one (empty file)"}


@pytest.mark.parametrize("shape", list(NO_SAMPLE))
def test_a_stream_shard_that_gives_no_sample_is_an_error_naming_it(tmp_path, capsys, shape):
    folder = stream_folder(tmp_path / "s")
    (folder / "stream-000001.tar").unlink()
    no_sample_shard(folder / "stream-000001.tar", shape)
    err, _ = run([f"stream.urls={folder}/stream-{{000000..000001}}.tar", *sets_of(folder), f"run.dir={tmp_path}/r"],
                 capsys, 2)
    assert err.startswith(f"bmb-stream: error: cannot read shard {folder}/stream-000001.tar: {NO_SAMPLE[shape]}"), err
    if shape == "only .txt files":
        assert err.endswith("(found: a.txt, b.TXT); a sample is files named <key>.<ext>, one of them an image")


def test_stream_shards_that_give_no_sample_are_skipped_and_counted_under_skip(tmp_path, capsys):
    folder = stream_folder(tmp_path / "s", shards=1)
    for i, shape in enumerate(NO_SAMPLE, start=1):
        no_sample_shard(folder / f"stream-{i:06d}.tar", shape)
    last = len(NO_SAMPLE)
    _, out = run([f"stream.urls={folder}/stream-{{000000..{last:06d}}}.tar", *sets_of(folder),
                  "stream.on_shard_error=skip", f"run.dir={tmp_path}/r"], capsys, 0)
    summary = summary_of(tmp_path / "r")
    assert summary["samples_seen"] == 8
    assert [s["url"] for s in summary["skipped_shards"]] == [f"{folder}/stream-{i:06d}.tar" for i in range(1, last + 1)]
    assert out.count("skipped: cannot read shard") == last


@pytest.mark.parametrize("which", ["labeled", "test"])
@pytest.mark.parametrize("shape", ["empty tar", "only .txt files", "only folders", "/dev/null"])
def test_a_seed_or_test_shard_that_gives_no_sample_stops_the_run(tmp_path, capsys, which, shape):
    folder = stream_folder(tmp_path / "s")
    no_sample_shard(tmp_path / "bad.tar", shape)
    given = {"labeled": f"{folder}/labeled-000000.tar", "test": f"{folder}/test-000000.tar"}
    given[which] = f"[{given[which]},{tmp_path}/bad.tar]"  # beside a good shard of the set
    err, _ = run([f"stream.urls={folder}", f"stream.labeled_urls={given['labeled']}",
                  f"stream.test_urls={given['test']}", "stream.on_shard_error=skip", f"run.dir={tmp_path}/r"], capsys, 2)
    assert err.startswith(f"bmb-stream: error: cannot read shard {tmp_path}/bad.tar: {NO_SAMPLE[shape]}"), err
    assert not (tmp_path / "r" / "checkpoints" / "last.pt").exists()  # stopped at start-up


# ----- links and paths that cannot be read -----


@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_links_to_a_device_or_to_nothing_in_a_stream_folder_are_named_not_left_out(tmp_path, capsys, policy):
    folder = stream_folder(tmp_path / "s", shards=1)
    (folder / "stream-000001.tar").symlink_to("/dev/zero")
    (folder / "stream-000002.tar").symlink_to("/nonexistent")
    device = f"cannot read shard {folder}/stream-000001.tar: not a regular file (a device, a FIFO or a socket)"
    broken = (f"cannot read shard {folder}/stream-000002.tar: a broken symbolic link (to /nonexistent, which is not "
              f"there); point it at a shard, or remove it")
    if policy == "fail":
        err, _ = run([f"stream.urls={folder}", *sets_of(folder), f"run.dir={tmp_path}/r"], capsys, 2)
        assert err.startswith(f"bmb-stream: error: {device}"), err
        return
    run([f"stream.urls={folder}", *sets_of(folder), "stream.on_shard_error=skip", f"run.dir={tmp_path}/r"], capsys, 0)
    summary = summary_of(tmp_path / "r")
    assert summary["samples_seen"] == 8
    assert [s["error"] for s in summary["skipped_shards"]] == [f"{device}; a shard is a tar file", broken]


@pytest.mark.parametrize("which", ["labeled", "test"])
def test_a_broken_link_among_the_seed_or_test_shards_of_a_folder_is_named(tmp_path, capsys, which):
    folder = stream_folder(tmp_path / "s")
    (folder / f"{which}-000001.tar").symlink_to("/nonexistent")
    err, _ = run([f"stream.urls={folder}", f"run.dir={tmp_path}/r"], capsys, 2)
    assert err.startswith(f"bmb-stream: error: cannot read shard {folder}/{which}-000001.tar: a broken symbolic "
                          f"link (to /nonexistent, which is not there)"), err


@pytest.mark.parametrize("key", ["stream.urls", "stream.labeled_urls", "stream.test_urls"])
def test_a_path_too_long_is_one_line_naming_it(tmp_path, capsys, key):
    folder = stream_folder(tmp_path / "s")
    long = f"{tmp_path}/{'x' * 300}.tar"
    err, _ = run([f"stream.urls={folder}", *sets_of(folder), f"{key}={long}", f"run.dir={tmp_path}/r"], capsys, 2)
    assert err == f"bmb-stream: error: {key}={long}: File name too long; give a shorter path"


# ----- hostile json members -----

HOSTILE_JSON = {"nested": (b"[" * 100_000 + b"]" * 100_000, "its json is not valid JSON (nested too deeply)"),
                "digits": (b'{"n": ' + b"7" * 5000 + b"}", "its json is not valid JSON (a number of too many digits)"),
                "infinite": (b'{"n": 1e999}', "its json is not valid JSON (a number out of range)"),
                "NaN": (b'{"n": NaN}', "its json is not valid JSON (a number out of range)"),
                "not UTF-8": (b'{"n": "\xff\xfe"}', "its json is not valid JSON (not UTF-8 text)"),
                "array": (b"[1, 2]", "its json is an array, not a JSON object"),
                "string": (b'"x"', "its json is a string, not a JSON object")}


@pytest.mark.parametrize("shape", ["nested", "infinite", "array", "string"])
def test_a_hostile_json_member_is_a_bad_sample_naming_it(tmp_path, capsys, shape):
    folder = stream_folder(tmp_path / "s")
    data, says = HOSTILE_JSON[shape]
    write_tar(folder / "stream-000001.tar", samples("s1-", 4, j={"png": png(0), "gt.cls": b"0", "json": data}))
    err, _ = run([f"stream.urls={folder}/stream-{{000000..000001}}.tar", *sets_of(folder), f"run.dir={tmp_path}/r"],
                 capsys, 2)
    assert err == f"bmb-stream: error: sample s1-bad-j in {folder}/stream-000001.tar: {says}"


def test_hostile_json_members_are_skipped_and_counted_under_skip(tmp_path, capsys):
    folder = stream_folder(tmp_path / "s", shards=1)
    for i, (data, _) in enumerate(HOSTILE_JSON.values(), start=1):
        write_tar(folder / f"stream-{i:06d}.tar", samples(f"s{i}-", 4, j={"png": png(0), "gt.cls": b"0", "json": data}))
    last = len(HOSTILE_JSON)
    run([f"stream.urls={folder}/stream-{{000000..{last:06d}}}.tar", *sets_of(folder), "stream.on_shard_error=skip",
         f"run.dir={tmp_path}/r"], capsys, 0)
    summary = summary_of(tmp_path / "r")
    assert summary["samples_seen"] == 8 + 4 * last
    assert [s["error"] for s in summary["skipped_shards"]] == [
        f"sample s{i}-bad-j in {folder}/stream-{i:06d}.tar: {says}" for i, (_, says) in enumerate(HOSTILE_JSON.values(), 1)]


@pytest.mark.parametrize("which", ["labeled", "test"])
def test_a_bad_seed_or_test_sample_says_to_repair_it_as_skip_applies_to_the_stream_only(tmp_path, capsys, which):
    folder = stream_folder(tmp_path / "s")
    write_tar(tmp_path / "bad.tar", [("ldeep", {"png": png(0), "cls": b"0", "json": HOSTILE_JSON["nested"][0]})])
    given = {"labeled": f"{folder}/labeled-000000.tar", "test": f"{folder}/test-000000.tar"}
    given[which] = f"[{given[which]},{tmp_path}/bad.tar]"
    err, _ = run([f"stream.urls={folder}", f"stream.labeled_urls={given['labeled']}",
                  f"stream.test_urls={given['test']}", "stream.on_shard_error=skip", f"run.dir={tmp_path}/r"], capsys, 2)
    name = "seed" if which == "labeled" else "test"
    assert err == (f"bmb-stream: error: sample ldeep in {tmp_path}/bad.tar: its json is not valid JSON (nested too "
                   f"deeply); repair or drop that sample: the {name} set is read whole (stream.on_shard_error=skip "
                   f"applies to the stream's shards only)")


# ----- brace patterns are counted before they are expanded -----


@pytest.mark.parametrize("key", ["stream.urls", "stream.labeled_urls", "stream.test_urls"])
@pytest.mark.parametrize("pattern, count", [
    ("stream-{000000..9999999}.tar", "10,000,000"),  # one digit too many
    ("stream-{0..999}-{0..999}-{0..9}.tar", "10,000,000"),  # braces multiplying
    ("stream-{a,{0..9999}{0..9999}}.tar", "100,000,001"),  # nested
    ("s{0..9}" * 20 + ".tar", "over 10^15"),
])
def test_a_brace_pattern_naming_millions_of_shards_is_refused_before_expanding(tmp_path, capsys, key, pattern, count):
    folder = stream_folder(tmp_path / "s", manifest=good_manifest())
    started = time.monotonic()
    err, _ = run([f"stream.urls={folder}", f"{key}={tmp_path}/{pattern}", f"run.dir={tmp_path}/r"], capsys, 2)
    assert err == (f"bmb-stream: error: {key}={tmp_path}/{pattern}: the brace pattern names {count} shards, over the "
                   f"limit of 1,000,000 (MAX_SHARD_URLS); is a range a digit too long?")
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("pattern", ["stream-{000000..000001.tar", "stream-{{0,1}.tar"])
def test_unbalanced_braces_are_one_line(tmp_path, capsys, pattern):
    folder = stream_folder(tmp_path / "s")
    err, _ = run([f"stream.urls={folder}/{pattern}", f"run.dir={tmp_path}/r"], capsys, 2)
    assert err == (f"bmb-stream: error: stream.urls={folder}/{pattern}: unbalanced braces in the pattern; a range is "
                   f"written as stream-{{000000..000099}}.tar")


# ----- the test set is apart from what the run trains on -----


@pytest.mark.parametrize("case", ["the seed shard", "the seed shard by another path", "the seed shard by a link",
                                  "a stream shard"])
def test_a_test_set_that_holds_training_shards_is_refused(tmp_path, capsys, case):
    folder = stream_folder(tmp_path / "s")
    (tmp_path / "link.tar").symlink_to(folder / "labeled-000000.tar")
    test = {"the seed shard": f"{folder}/labeled-000000.tar",
            "the seed shard by another path": f"{folder}/../s/./labeled-000000.tar",
            "the seed shard by a link": f"{tmp_path}/link.tar",
            "a stream shard": f"[{folder}/test-000000.tar,{folder}/stream-000001.tar]"}[case]
    err, _ = run([f"stream.urls={folder}", f"stream.labeled_urls={folder}/labeled-000000.tar", f"stream.test_urls={test}",
                  f"run.dir={tmp_path}/r"], capsys, 2)
    what = "the stream (stream.urls)" if case == "a stream shard" else "the seed set (stream.labeled_urls)"
    assert err.startswith(f"bmb-stream: error: {what} and the test set (stream.test_urls) share shards ("), err
    assert err.endswith("): the run would report accuracy on images it trained on; give a test set of other images")


def test_a_copy_of_the_seed_set_as_test_set_is_refused_but_not_a_set_numbered_alike(tmp_path, capsys):
    folder = stream_folder(tmp_path / "s")
    shutil.copy(folder / "labeled-000000.tar", tmp_path / "copy.tar")
    args = [f"stream.urls={folder}", f"stream.labeled_urls={folder}/labeled-000000.tar",
            f"stream.test_urls={tmp_path}/copy.tar"]
    err, _ = run([*args, f"run.dir={tmp_path}/r"], capsys, 2)
    assert err == ("bmb-stream: error: the seed set and the test set share 8 sample(s) (the same key and image: l000, "
                   "l001, l002, l003, l004, ... (8 in all)): the run would report accuracy on images it trained on; "
                   "give a test set of other images")
    # keys numbered from 0 in both sets, other images: not the same samples
    write_tar(tmp_path / "copy.tar", [(key, {"png": png(90 + 10 * (j % 2)), "cls": fields["cls"]})
                                      for j, (key, fields) in enumerate(samples("l", 8, "cls"))])
    run([*args, f"run.dir={tmp_path}/r2"], capsys, 0)


@pytest.mark.parametrize("workers, policy", [(0, "fail"), (1, "skip")])
def test_a_copy_of_the_test_set_in_the_stream_ends_the_run_naming_the_shard_and_sample(tmp_path, capsys, workers,
                                                                                       policy):
    folder = stream_folder(tmp_path / "s", shards=1)
    shutil.copy(folder / "test-000000.tar", folder / "stream-000001.tar")
    args = [f"stream.urls={folder}", *sets_of(folder), f"stream.num_workers={workers}",
            f"stream.on_shard_error={policy}"]
    err, _ = run([*args, f"run.dir={tmp_path}/r"], capsys, 2)
    assert err == (f"bmb-stream: error: the stream holds test sample t000 (shard {folder}/stream-000001.tar): a test "
                   f"set must not be trained on; leave the test shards out of stream.urls, or give a test set of other "
                   f"images (stream.test_urls)")
    # the test set's keys on other images: other samples
    write_tar(folder / "stream-000001.tar", [(key, {"png": png(90 + 10 * (j % 2)), "gt.cls": b"0"})
                                             for j, (key, _) in enumerate(samples("t", 8))])
    run([*args, f"run.dir={tmp_path}/r2"], capsys, 0)
    assert summary_of(tmp_path / "r2")["samples_seen"] == 16


def test_the_test_set_served_over_http_as_the_stream_ends_the_run(trickle, tmp_path, capsys):
    server, base = trickle
    err, _ = run([f"stream.urls=[{base}/stream-000000.tar,{base}/test-000000.tar]", *sets_of(server.root),
                  f"run.dir={tmp_path}/r"], capsys, 2)
    assert err.startswith(f"bmb-stream: error: the stream holds test sample t000 (shard {base}/test-000000.tar): a "
                          f"test set must not be trained on"), err


# ----- a stream without a manifest -----


def test_a_stream_without_a_manifest_warns_once_that_a_cut_shard_goes_unnoticed(tmp_path, capsys):
    plain = stream_folder(tmp_path / "plain")
    assert main([*TINY, f"stream.urls={plain}", f"run.dir={tmp_path}/r"]) == 0
    assert capsys.readouterr().err == (f"{NO_MANIFEST} ({plain}): a shard cut at a sample boundary, or replaced by a "
                                       f"shorter one, is read as whole\n")
    listed = stream_folder(tmp_path / "listed", manifest=good_manifest())
    assert main([*TINY, f"stream.urls={listed}", f"run.dir={tmp_path}/r2"]) == 0
    assert capsys.readouterr().err == ""


# ----- http shards that trickle; a stop signal while one does -----


class Trickle(BaseHTTPRequestHandler):
    """Serves a folder with byte ranges; the file named `slow` comes at 40 bytes/s, for ever."""

    def do_GET(self):
        path = self.server.root / self.path.lstrip("/").split("?")[0]
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = ranged_headers(self, data)
        try:
            if not self.path.endswith(self.server.slow):
                self.wfile.write(data[start:])
                return
            self.server.trickling.set()
            for i in range(start, len(data), 8):
                if self.server.closing.is_set():
                    return
                self.wfile.write(data[i: i + 8])
                self.wfile.flush()
                time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError):  # the reader gave up: as it should
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def trickle(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    server.root, server.slow = stream_folder(tmp_path / "web"), "stream-000001.tar"
    server.trickling, server.closing = threading.Event(), threading.Event()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.closing.set()
    server.shutdown()
    server.server_close()


def test_a_trickling_http_shard_ends_the_run_as_storage_unreachable(trickle, tmp_path, capsys):
    server, base = trickle
    started = time.monotonic()
    err, _ = run([f"stream.urls=[{base}/stream-000000.tar,{base}/stream-000001.tar]", *sets_of(server.root),
                  "storage.s3.read_timeout_s=1", f"run.dir={tmp_path}/r"], capsys, 75)
    assert err == (f"bmb-stream: error: cannot read shard {base}/stream-000001.tar: storage unreachable for 0.5 s "
                   f"(storage.retry.budget_s): stalled: under 1024 bytes/s for 1 s (storage.s3.read_timeout_s)")
    assert time.monotonic() - started < 15
    assert (tmp_path / "r" / "checkpoints" / "last.pt").exists()  # resumable when the storage is back


@pytest.mark.parametrize("sig, workers", [(signal.SIGTERM, 0), (signal.SIGINT, 1)])
def test_a_stop_signal_ends_a_read_blocked_on_a_trickling_shard(trickle, tmp_path, sig, workers):
    server, base = trickle
    run_dir = tmp_path / "r"
    child = subprocess.Popen(
        [sys.executable, "-m", "bmb_stream", *TINY, f"stream.num_workers={workers}",
         f"stream.urls=[{base}/stream-000000.tar,{base}/stream-000001.tar]", *sets_of(server.root),
         "storage.s3.read_timeout_s=60", f"run.dir={run_dir}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.trickling.wait(60), "the run never reached the trickling shard"
        time.sleep(0.5)  # blocked in the read now
        child.send_signal(sig)
        out, err = child.communicate(timeout=20)
    finally:
        child.kill()
    assert child.returncode == 0, err
    assert f"stopped by {sig.name} in experience 0" in out and "resume with:" in out
    assert "Traceback" not in err
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["position"]["experience"] == 0


# ----- secrets in the URLs of skipped shards -----


@pytest.mark.parametrize("url", ["{base}/stream-000009.tar?sig=SECRET-SIG", "http://user:SECRET-PW@127.0.0.1:9/s.tar"])
def test_the_urls_of_skipped_shards_are_printed_and_stored_without_secrets(trickle, tmp_path, capsys, url):
    server, base = trickle
    url = url.format(base=base)
    _, out = run([f"stream.urls=[{server.root}/stream-000000.tar,'{url}']", *sets_of(server.root),
                  "stream.on_shard_error=skip", f"run.dir={tmp_path}/r"], capsys, 0)
    skipped = summary_of(tmp_path / "r")["skipped_shards"]
    stored = torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=True)["skipped"]
    assert len(skipped) == 1 and stored == skipped and "<redacted>" in skipped[0]["url"]
    assert "skipped: cannot read shard" in out and "<redacted>" in out
    assert "SECRET" not in out + json.dumps(skipped) + json.dumps(stored)


# ----- an output of simulate or shards that was cut before its manifest -----


def test_an_unfinished_stream_folder_is_refused(tmp_path, capsys):
    folder = stream_folder(tmp_path / "stream")
    (folder / ".incomplete").write_text("")  # the marker an interrupted simulate leaves until its manifest is in
    line, _ = run([f"stream.urls={folder}", f"run.dir={tmp_path / 'run'}"], capsys, 2)
    assert "holds an unfinished output of bmb-stream simulate or shards" in line and "run that command again" in line
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_read_finalized_after_its_run_leaves_the_handler_in_place():
    """A stream generator suspended in an interruptible wait and finalized after its run put its own
    SIGINT handler back must not put the ended run's handler back (Ctrl-C would then be swallowed)."""
    import signal

    from bmb_stream.engine.stops import interruptible_wait

    def run_handler(signum, frame):
        pass

    def reads():
        with interruptible_wait():
            yield

    before = signal.signal(signal.SIGINT, run_handler)  # a run starts
    try:
        suspended = reads()
        next(suspended)
        assert signal.getsignal(signal.SIGINT) is not run_handler  # the wait's own handler
        signal.signal(signal.SIGINT, before)  # the run ends and puts back what it found
        suspended.close()  # the generator is finalized late
        assert signal.getsignal(signal.SIGINT) is before
    finally:
        signal.signal(signal.SIGINT, before)
