"""Bad shards, URLs and manifests end a run with one line that names the culprit (exit code 2, or 75
for storage that stays unreachable), never with a traceback; under stream.on_shard_error=skip bad
samples are left out and counted. Tiny hand-made shards of 8x8 PNGs keep every run short."""

import io
import json
import signal
import struct
import tarfile
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from PIL import Image

from bmb_stream.cli import main
from bmb_stream.cli_args import parse_args
from bmb_stream.config import compose
from bmb_stream.engine.skipped_shards import SkippedShards
from bmb_stream.engine.stream_source import prepare_stream
from bmb_stream.errors import ShardError, StorageUnavailable
from bmb_stream.shards import manifest as manifest_module
from bmb_stream.shards import reading as reading_module
from bmb_stream.shards import urls as urls_module
from bmb_stream.shards.reading import (
    SKIPPED,
    fail_on_error,
    handler_for,
    make_unlabeled_batches,
    read_shards,
    shard_samples,
    skip_and_count,
)
from bmb_stream.shards.urls import expand_urls
from bmb_stream.storage.object_store import S3Settings, read_bytes, use_storage
from bmb_stream.storage.retry import RetryPolicy
from tests.helpers import error_line

TINY = ["--mode", "stream", "model=small_cnn", "stream.num_workers=0", "progress=false", "train.batch_labeled=4",
        "train.batch_unlabeled=4", "method.bank.capacity=8", "method.bank.draw=4", "eval.batch_size=16",
        "dataset.num_classes=2", "dataset.many_threshold=5", "dataset.few_threshold=2", "stream.passes=1",
        "stream.shards_per_experience=8", "stream.eval_every=1", "storage.retry.budget_s=0.5",
        "storage.retry.backoff_s=0.05", "storage.retry.max_backoff_s=0.1"]


def png(value: int, size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height gray pixels, in a hundred bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def write_tar(path, samples) -> None:
    with tarfile.open(path, "w") as tar:
        for key, fields in samples:
            for ext, data in fields.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def samples(prefix: str, n: int, label: str = "gt.cls", **extra) -> list:
    return [(f"{prefix}{j:03d}", {"png": png(40 + 150 * (j % 2)), label: str(j % 2).encode()}) for j in range(n)] + \
        [(f"{prefix}bad-{k}", fields) for k, fields in extra.items()]


def stream_folder(folder, shards: int = 2, manifest: dict | None = None):
    """A stream folder: stream-*.tar (8 unlabeled samples each), a seed set and a test set (2 classes)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(shards):
        write_tar(folder / f"stream-{i:06d}.tar", samples(f"s{i}-", 8))
    write_tar(folder / "labeled-000000.tar", samples("l", 8, "cls"))
    write_tar(folder / "test-000000.tar", samples("t", 8, "cls"))
    if manifest is not None:
        (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def good_manifest(shards: int = 2) -> dict:
    return {"class_names": ["dark", "light"], "num_classes": 2,
            "shards": [{"file": f"stream-{i:06d}.tar", "samples": 8, "class_histogram": [4, 4]} for i in range(shards)],
            "labeled_set": {"files": ["labeled-000000.tar"]}, "test_set": {"files": ["test-000000.tar"]}}


NO_MANIFEST = "bmb-stream: warning: no manifest.json beside"


def run(args, capsys, code: int) -> str:
    """Run the CLI in this process (an escaping exception fails the test) with TINY, expecting exit
    `code`: its error line (tests.helpers.error_line), or "" for exit 0, which prints nothing on stderr.
    The warning that no manifest.json is beside the shards is left out."""
    assert main([*TINY, *args]) == code
    if code:
        return error_line(capsys, code, ignore=(NO_MANIFEST,))
    err = capsys.readouterr().err
    assert not [line for line in err.splitlines() if line.strip() and not line.startswith(NO_MANIFEST)], err
    return ""


def sets_of(folder) -> list[str]:
    return [f"stream.labeled_urls={folder}/labeled-000000.tar", f"stream.test_urls={folder}/test-000000.tar"]


# ----- 1. a folder means its stream shards -----


def test_a_folder_means_its_stream_shards_never_its_seed_or_test_set(tmp_path, capsys):
    plain = stream_folder(tmp_path / "plain")
    assert expand_urls(str(plain)) == [f"{plain}/stream-000000.tar", f"{plain}/stream-000001.tar"]
    assert expand_urls(str(plain), "test") == [f"{plain}/test-000000.tar"]
    listed = stream_folder(tmp_path / "listed", manifest={**good_manifest(), "shards": good_manifest()["shards"][1:]})
    assert expand_urls(f"file://{listed}/") == [f"{listed}/stream-000001.tar"]  # what the manifest names
    run([f"stream.urls={plain}", f"run.dir={tmp_path / 'run'}"], capsys, 0)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["samples_seen"] == 16 and summary["data"]["test_per_class"] == [4, 4]


def test_an_s3_folder_means_its_stream_shards_and_a_key_prefix_every_tar(monkeypatch):
    keys = ["x/labeled-000000.tar", "x/stream-000000.tar", "x/stream-000001.tar", "x/test-000000.tar", "x/sub/a.tar"]
    objects = [f"s3://b/{k}" for k in keys]
    monkeypatch.setattr(urls_module, "list_objects",
                        lambda prefix, suffix=".tar": [o for o in objects if o.startswith(prefix)])
    monkeypatch.setattr(manifest_module, "read_bytes", lambda url: None)  # no manifest in the bucket
    shards = ["s3://b/x/stream-000000.tar", "s3://b/x/stream-000001.tar"]
    assert expand_urls("s3://b/x/") == shards and expand_urls("s3://b/x") == shards
    assert expand_urls("s3://b/x/stream-") == shards
    with pytest.raises(ShardError, match=r"stream.urls=s3://b/y/: the folder holds no stream-\*.tar"):
        expand_urls("s3://b/y/")


# ----- 2. stream.urls given but naming nothing -----


@pytest.mark.parametrize("case, value, says", [
    ("empty folder", "{tmp}/empty", "the folder holds no stream-*.tar shards and no manifest.json (it is empty)"),
    ("tgz folder", "{tmp}/tgz", "the folder holds no stream-*.tar shards and no manifest.json (found: a.tgz, b.tgz)"),
    ("empty list", "[]", "names no shards"),
    ("no match", "{tmp}/tgz/stream-{{0..1}}.tar", "no such file or folder ({tmp}/tgz/stream-0.tar, "),
    ("no such path", "{tmp}/nowhere", "no such file or folder ({tmp}/nowhere)"),
])
def test_stream_urls_that_name_no_shard_are_an_error_not_the_default_stream(tmp_path, capsys, case, value, says):
    (tmp_path / "empty").mkdir()
    (tmp_path / "tgz").mkdir()
    for name in ("a.tgz", "b.tgz"):
        (tmp_path / "tgz" / name).write_bytes(b"x")
    value = value.format(tmp=tmp_path)
    err = run([f"stream.urls={value}", f"run.dir={tmp_path / 'run'}"], capsys, 2)
    assert f"stream.urls={value}: " in err and says.format(tmp=tmp_path) in err


def test_missing_seed_and_test_sets_say_where_they_were_looked_for(tmp_path, capsys):
    folder = stream_folder(tmp_path / "s")
    err = run([f"stream.urls={folder}", f"stream.labeled_urls={tmp_path}/none.tar", f"run.dir={tmp_path}/r"], capsys, 2)
    assert f"stream.labeled_urls={tmp_path}/none.tar: no such file or folder" in err
    (folder / "labeled-000000.tar").unlink()
    err = run([f"stream.urls={folder}", f"run.dir={tmp_path}/r"], capsys, 2)
    assert err.endswith(f"stream.labeled_urls is required: there is neither a manifest.json nor labeled-*.tar shards "
                        f"beside the stream shards ({folder})")


# ----- 3. and 4. decompression bombs, oversized members, classes out of range -----


def test_a_decompression_bomb_names_its_shard_and_sample(tmp_path, capsys):
    folder = stream_folder(tmp_path / "s")
    write_tar(folder / "stream-000001.tar", samples("s1-", 3, bomb={"png": bomb_png(30000, 30000), "gt.cls": b"0"}))
    err = run([f"stream.urls={folder}", *sets_of(folder), f"run.dir={tmp_path}/r"], capsys, 2)
    assert f"sample s1-bad-bomb in {folder}/stream-000001.tar" in err and "decompression bomb" in err
    write_tar(folder / "stream-000001.tar", samples("s1-", 3, big={"png": bomb_png(9000, 8000), "gt.cls": b"0"}))
    err = run([f"stream.urls={folder}", *sets_of(folder), f"run.dir={tmp_path}/r2"], capsys, 2)
    assert "9000x8000 pixels, over the limit of 64 megapixels (MAX_IMAGE_PIXELS)" in err and "s1-bad-big" in err


def test_an_oversized_member_is_not_read(tmp_path, monkeypatch):
    monkeypatch.setattr(reading_module, "MAX_MEMBER_BYTES", 10_000)
    write_tar(tmp_path / "a.tar", samples("a", 2, huge={"png": png(0, 200) + b"\0" * 20_000, "gt.cls": b"0"}))
    with pytest.raises(ShardError, match=rf"sample abad-huge in {tmp_path}/a.tar: its png member is 2\d,\d\d\d bytes, "
                                         r"over the limit of 0 MB per member \(MAX_MEMBER_BYTES\)"):
        list(shard_samples([str(tmp_path / "a.tar")]))


def test_classes_out_of_range_or_negative_name_the_sample(tmp_path):
    for name, fields, says in (("neg", {"cls": b"-3"}, "cls is -3, not a class: a class is 0 or more"),
                               ("big", {"cls": b"2"}, r"cls is 2, not a class: a class is 0..1 \(dataset.num_cl"),
                               ("gt", {"gt.cls": b"7"}, r"gt.cls is 7, not a class: a class is 0..1")):
        write_tar(tmp_path / f"{name}.tar", samples("a", 2, **{name: {"png": png(0), **fields}}))
        with pytest.raises(ShardError, match=rf"sample abad-{name} in {tmp_path}/{name}.tar: {says}"):
            list(shard_samples([str(tmp_path / f"{name}.tar")], num_classes=2 if name != "neg" else None))
    views = lambda img: (torch.zeros(1),) * 3  # noqa: E731 - the parsing is tested, not the views
    batches = list(make_unlabeled_batches([str(tmp_path / "big.tar")], views, 8, skip_and_count, num_classes=2))
    assert [e for b in batches for _, e in b["skipped"]] == [f"sample abad-big in {tmp_path}/big.tar: cls is 2, not "
                                                             f"a class: a class is 0..1 (dataset.num_classes=2); fix "
                                                             f"the shard, or the config"]


def test_bad_labeled_and_test_shards_stop_the_run_at_start_up(tmp_path, capsys):
    folder = stream_folder(tmp_path / "s")
    write_tar(folder / "test-000000.tar", samples("t", 4, "cls", five={"png": png(0), "cls": b"5"}))
    err = run([f"stream.urls={folder}", *sets_of(folder), f"run.dir={tmp_path}/r"], capsys, 2)
    assert f"sample tbad-five in {folder}/test-000000.tar: cls is 5, not a class: a class is 0..1" in err


def test_skip_mode_leaves_bad_samples_out_and_counts_them(tmp_path, capsys):
    folder = stream_folder(tmp_path / "s")
    bad = {"bomb": {"png": bomb_png(30000, 30000)}, "big": {"png": bomb_png(9000, 8000)},
           "negative": {"png": png(0), "cls": b"-3"}, "broken": {"png": b"\x89PNG no"}}
    for i, (name, fields) in enumerate(bad.items()):
        write_tar(folder / f"stream-{i + 2:06d}.tar", samples(f"s{i + 2}-", 4, **{name: fields}))
    run([f"stream.urls={folder}", *sets_of(folder), f"run.dir={tmp_path}/r", "stream.on_shard_error=skip"], capsys, 0)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["samples_seen"] == 2 * 8 + 4 * 4
    assert [s["url"] for s in summary["skipped_shards"]] == [f"{folder}/stream-{i:06d}.tar" for i in range(2, 6)]
    for i, (name, skipped) in enumerate(zip(bad, summary["skipped_shards"], strict=True)):
        assert f"s{i + 2}-bad-{name}" in skipped["error"]
    assert summary["skipped_shards"][-1]["error"].endswith("not an image (PIL cannot identify its format)")  # no "<_io.BytesIO at 0x..>"


def test_the_config_names_one_handler_fail_raises_the_error_naming_the_shard(tmp_path):
    assert handler_for("fail") is fail_on_error and handler_for("skip") is skip_and_count
    with pytest.raises(ValueError, match="stream.on_shard_error=ignore: must be fail or skip"):
        handler_for("ignore")
    missing = str(tmp_path / "gone.tar")
    with pytest.raises(ShardError, match=rf"^cannot read shard {missing}: no such file$"):
        list(read_shards(fail_on_error)([{"url": missing}]))
    error = ShardError(f"sample x in {missing}: bad cls/json")
    with pytest.raises(ShardError) as raised:
        fail_on_error(error, missing)
    assert raised.value is error


def test_skip_gives_one_marker_per_failure_and_still_stops_on_unreachable_storage(tmp_path):
    missing, good = str(tmp_path / "gone.tar"), str(tmp_path / "good.tar")
    write_tar(good, samples("g", 2))
    read = list(read_shards(skip_and_count)([{"url": missing}, {"url": good}]))
    assert read[0] == {SKIPPED: missing, "error": f"cannot read shard {missing}: no such file"}
    assert [s["__key__"] for s in read[1:]] == ["g000", "g001"]
    assert skip_and_count(ShardError("bad"), good) == {SKIPPED: good, "error": "bad"}
    with pytest.raises(StorageUnavailable, match="still down"):  # not the shard's fault: the run stops, resumable
        skip_and_count(StorageUnavailable(f"{good}: still down"), good)


def test_a_skipped_shard_counts_once_per_experience_whatever_its_passes_and_bad_samples():
    skipped = SkippedShards()
    skipped.start_experience()
    assert skipped.note(0, 0, "a.tar", "sample 1 in a.tar: bad")
    assert not skipped.note(0, 0, "a.tar", "sample 2 in a.tar: bad")  # another bad sample of the same shard
    assert not skipped.note(0, 1, "a.tar", "sample 1 in a.tar: bad")  # met again in a later pass
    assert skipped.note(0, 1, "b.tar", "cannot read shard b.tar") and skipped.note(0, None, "c.tar", "c.tar: short")
    skipped.start_experience()
    assert skipped.note(1, 0, "a.tar", "sample 1 in a.tar: bad")  # a new experience counts it again
    assert [(e["experience"], e["pass"], e["url"]) for e in skipped.entries] == [
        (0, 0, "a.tar"), (0, 1, "b.tar"), (0, None, "c.tar"), (1, 0, "a.tar")]


def test_a_resumed_run_does_not_count_again_the_skips_of_its_replayed_batches():
    before = SkippedShards()
    before.start_experience()
    before.note(2, 0, "a.tar", "bad")
    resumed = SkippedShards(before.entries)  # the checkpoint's list
    resumed.start_experience()
    assert not resumed.note(2, 0, "a.tar", "bad", replayed=True)  # read again in a replayed batch: the same fault
    assert not resumed.note(2, 0, "a.tar", "bad 2")  # another bad sample after the replayed batches
    assert not resumed.note(2, 1, "a.tar", "bad")  # in a later pass, as in the run that was not interrupted
    assert resumed.note(2, 0, "b.tar", "cut")  # first met after the replayed batches: counted now
    assert resumed.entries == [*before.entries, {"experience": 2, "pass": 0, "url": "b.tar", "error": "cut"}]
    assert before.entries == [{"experience": 2, "pass": 0, "url": "a.tar", "error": "bad"}]


@pytest.mark.parametrize("passes, stop_at", [(1, 7), (2, 12)])  # after the bad shards' reads in pass 0, in pass 1
def test_a_run_stopped_after_skipped_shards_resumes_as_if_never_stopped(tmp_path, capsys, monkeypatch, passes, stop_at):
    """Shards skipped for a corrupt sample in the middle or for a cut-off end still gave their readable
    samples, which were trained on: a run stopped mid-experience after reading them, then resumed, must
    read them again as it did (not pass over them) and end as the uninterrupted run does."""
    from bmb_stream.engine.stream_loop import StreamRun

    folder = stream_folder(tmp_path / "s", shards=7)
    (folder / "stream-000000.tar").unlink()  # missing
    good = samples("s2-", 8)
    write_tar(folder / "stream-000002.tar", good[:4] + [("s2-bad", {"png": b"\x89PNG no", "gt.cls": b"0"})] + good[4:])
    whole = (folder / "stream-000003.tar").read_bytes()
    (folder / "stream-000003.tar").write_bytes(whole[: 5 * 2048 + 600])  # cut inside its 6th sample's image
    args = [f"stream.urls={folder}/stream-{{000000..000006}}.tar", *sets_of(folder), "stream.on_shard_error=skip",
            "stream.shards_per_experience=5", "stream.shuffle_shards=false", f"stream.passes={passes}"]

    def records(run_dir):
        keep = ("experience", "step", "samples_seen", "balanced_acc", "raw_balanced_acc", "bank_class_counts",
                "skipped_shards", "labeled_pool")
        lines = (run_dir / "eval.jsonl").read_text().splitlines()
        return [{k: r.get(k) for k in keep} for r in map(json.loads, lines)]

    def summary(run_dir):
        data = json.loads((run_dir / "summary.json").read_text())
        return {k: v for k, v in data.items() if k not in ("wall_s", "train_images_per_s")}

    run([*args, f"run.dir={tmp_path}/whole"], capsys, 0)
    whole_summary = summary(tmp_path / "whole")
    assert [s["url"].rsplit("/", 1)[1] for s in whole_summary["skipped_shards"]] == [
        "stream-000000.tar", "stream-000002.tar", "stream-000003.tar"]
    assert whole_summary["samples_seen"] == passes * (8 + 8 + 5 + 8 + 2 * 8)  # the readable samples of skipped shards too

    # 8 batches of 4 per pass of experience 0: the missing shard, s1, s2 (its bad sample), s3 (cut short), s4
    trained = StreamRun.trained

    def stop_after(self, *args, **kw):
        trained(self, *args, **kw)
        if self.learner.step == stop_at:
            signal.raise_signal(signal.SIGTERM)  # the StopFlag's handler: the step ends, then a checkpoint

    monkeypatch.setattr(StreamRun, "trained", stop_after)
    assert main([*TINY, *args, f"run.dir={tmp_path}/stopped"]) == 0
    capsys.readouterr()
    state = torch.load(tmp_path / "stopped" / "checkpoints" / "last.pt", weights_only=True)
    assert state["position"] == {"experience": 0, "batches": stop_at} and len(state["skipped"]) == 3
    monkeypatch.setattr(StreamRun, "trained", trained)
    run([*args, f"run.dir={tmp_path}/stopped", "resume=true"], capsys, 0)
    assert records(tmp_path / "stopped") == records(tmp_path / "whole")
    assert summary(tmp_path / "stopped") == whole_summary


def test_a_class_out_of_range_in_a_stream_shard_names_the_sample(tmp_path, capsys):
    folder = stream_folder(tmp_path / "s")
    write_tar(folder / "stream-000001.tar", samples("s1-", 4, big={"png": png(0), "cls": b"2"}))
    err = run([f"stream.urls={folder}", *sets_of(folder), f"run.dir={tmp_path}/r"], capsys, 2)
    assert f"sample s1-bad-big in {folder}/stream-000001.tar: cls is 2, not a class" in err


# ----- 5. malformed manifests -----


@pytest.mark.parametrize("change, says", [
    (lambda m: "{not json", "not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2"),
    (lambda m: [1, 2], "its top level is not a JSON object"),
    (lambda m: {**m, "shards": {"file": "x"}}, "shards is not a list"),
    (lambda m: {**m, "shards": ["stream-000000.tar"]}, "shards[0] is not an object with file, samples and class_h"),
    (lambda m: {**m, "shards": [{"file": "../x.tar", "samples": 8, "class_histogram": [4, 4]}]},
     "shards[0].file is not a file name in the manifest's folder"),
    (lambda m: {**m, "shards": [{"file": "stream-000000.tar", "samples": "8", "class_histogram": [4, 4]}]},
     "shards[0].samples is not an integer >= 0"),
    (lambda m: {**m, "shards": [{"file": "stream-000000.tar", "samples": 8}]},
     "shards[0].class_histogram is not a list"),
    (lambda m: {**m, "class_names": ["dark"]}, "class_names has 1 classes but dataset.num_classes=2"),
    (lambda m: {**m, "class_names": "dark light"}, "class_names is not a list of strings"),
    (lambda m: {**m, "test_set": {"file": "test-000000.tar"}}, "test_set.files is not a list of the set's file names"),
    (lambda m: {k: v for k, v in m.items() if k != "labeled_set"}, "no labeled_set in it; name the shards in "
                                                                   "stream.labeled_urls"),
])
def test_a_malformed_manifest_names_its_field_at_start_up(tmp_path, capsys, change, says):
    folder = stream_folder(tmp_path / "s")
    content = change(good_manifest())
    (folder / "manifest.json").write_text(content if isinstance(content, str) else json.dumps(content))
    err = run([f"stream.urls={folder}/stream-{{000000..000001}}.tar", f"run.dir={tmp_path}/r"], capsys, 2)
    assert err.startswith(f"bmb-stream: error: manifest {folder}/manifest.json: {says}"), err


# ----- 6. URL readers: local and http(s), with the storage's retry budget -----


def ranged_headers(handler: BaseHTTPRequestHandler, data: bytes) -> int:
    """Send the status and headers of a reply of `data` from the byte its Range asks for (206 and
    Content-Range then), with an ETag; the byte it starts from."""
    start = int(handler.headers["Range"][6:-1]) if handler.headers.get("Range") else 0
    handler.send_response(206 if start else 200)
    if start:
        handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
    handler.send_header("Content-Length", str(len(data) - start))
    handler.send_header("ETag", '"v1"')
    handler.end_headers()
    return start


class Faulty(BaseHTTPRequestHandler):
    """Serves a folder with byte ranges and an ETag; `faults` (path suffix, fault) are played in
    turn: "503" answers 503, "cut" sends half of the body and closes the connection."""

    def do_GET(self):
        self.server.log.append((self.path, self.headers.get("Range")))
        faults = self.server.faults
        fault = faults.pop(0)[1] if faults and self.path.endswith(faults[0][0]) else None
        path = self.server.root / self.path.lstrip("/")
        if fault == "503" or not path.is_file():
            self.send_error(503 if fault else 404)
            return
        data = path.read_bytes()
        start = ranged_headers(self, data)
        self.wfile.write(data[start:] if fault != "cut" else data[start: len(data) // 2])

    def log_message(self, *args):
        pass


@pytest.fixture
def http_folder(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Faulty)
    server.root, server.faults, server.log = stream_folder(tmp_path / "web", manifest=good_manifest()), [], []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    use_storage(S3Settings(retry=RetryPolicy(budget_s=0.5, backoff_s=0.01, max_backoff_s=0.05)))
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    use_storage(S3Settings())


def keys(urls) -> list[str]:
    return [s["key"] for s in shard_samples(urls)]


def test_http_reads_resume_after_a_cut_and_retry_5xx(http_folder):
    server, base = http_folder
    local = keys([f"{server.root}/stream-000000.tar"])
    server.faults += [("stream-000000.tar", "503"), ("stream-000000.tar", "cut")]
    assert keys([f"{base}/stream-000000.tar"]) == local and len(local) == 8  # nothing lost, nothing twice
    half = (server.root / "stream-000000.tar").stat().st_size // 2
    assert [r for p, r in server.log if p.endswith("stream-000000.tar")] == [None, None, f"bytes={half}-"]
    assert expand_urls(f"{base}/") == [f"{base}/stream-000000.tar", f"{base}/stream-000001.tar"]  # its manifest
    assert json.loads(read_bytes(f"{base}/manifest.json")) == good_manifest() and read_bytes(f"{base}/nope") is None


def test_http_and_local_failures_are_one_line_naming_the_shard(http_folder, tmp_path):
    server, base = http_folder
    with pytest.raises(ShardError, match=rf"^cannot read shard {base}/stream-000009.tar: HTTP 404 Not Found$"):
        keys([f"{base}/stream-000009.tar"])
    with pytest.raises(ShardError, match=rf"^cannot read shard {tmp_path}/none.tar: no such file$"):
        keys([str(tmp_path / "none.tar")])
    (tmp_path / "junk.tar").write_bytes(b"\1" * 2000)
    with pytest.raises(ShardError, match=rf"^cannot read shard {tmp_path}/junk.tar: not a tar file") as info:
        keys([str(tmp_path / "junk.tar")])
    assert " at 0x" not in str(info.value)
    server.shutdown()
    server.server_close()
    with pytest.raises(StorageUnavailable, match=rf"^cannot read shard {base}/stream-000000.tar: storage unreachable "
                                                 r"for 0.5 s \(storage.retry.budget_s\): connection refused \(is the "
                                                 r"server up\?\)$"):
        keys([f"{base}/stream-000000.tar"])


def test_a_down_http_server_stops_the_run_at_start_up(http_folder, tmp_path, capsys):
    server, base = http_folder
    server.shutdown()
    server.server_close()
    err = run([f"stream.urls={base}/stream-{{000000..000001}}.tar", f"run.dir={tmp_path}/r"], capsys, 75)
    assert err == (f"bmb-stream: error: cannot read the manifest {base}/manifest.json: storage unreachable for 0.5 s "
                   f"(storage.retry.budget_s): connection refused (is the server up?)")


# ----- 7. S3 without credentials -----


def test_s3_without_credentials_says_which_variables_to_set(tmp_path, capsys, monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to wait for
    args = ["stream.urls=s3://bucket/s/stream-{000000..000001}.tar", "storage.s3.endpoint_url=http://127.0.0.1:9",
            "storage.s3.region=us-east-1", f"run.dir={tmp_path}/r"]
    err = run(args, capsys, 2)
    assert "s3://bucket/s/manifest.json: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in err
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key-id-4242")  # without its secret
    err = run(args, capsys, 2)
    assert "no credentials: set AWS_ACCESS_KEY_ID" in err and "key-id-4242" not in err
    use_storage(S3Settings())


# ----- 8. classes missing from the seed or test set -----


def test_classes_missing_from_the_seed_or_test_set_are_a_warning(tmp_path, capsys):
    folder = stream_folder(tmp_path / "s", manifest=good_manifest())
    write_tar(folder / "test-000000.tar", [(f"t{j}", {"png": png(0), "cls": b"0"}) for j in range(4)])
    cfg = compose(parse_args([*TINY, f"stream.urls={folder}", f"run.dir={tmp_path}/r"]))
    source = prepare_stream(cfg)
    assert source.class_names == ["dark", "light"] and len(source.experiences) == 1
    assert capsys.readouterr().err == "bmb-stream: warning: the test set has no samples of class 1 (light)\n"


def test_every_rank_reads_the_whole_seed_and_test_sets(tmp_path, monkeypatch):
    """Under torchrun (RANK / WORLD_SIZE set) the stream's shards are split across ranks, but the
    labeled seed set and the test set are read whole by each rank."""
    from bmb_stream.shards.reading import read_labeled_shards

    urls = []
    for n in range(2):
        path = tmp_path / f"test-{n:06d}.tar"
        write_tar(path, [(f"t{n}-{j}", {"png": png(j), "cls": str(j % 2).encode()}) for j in range(3)])
        urls.append(str(path))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    images, labels = read_labeled_shards(urls)
    assert len(images) == 6 and labels.tolist() == [0, 1, 0, 0, 1, 0]
    assert len([s for s in shard_samples(urls)]) == 3  # the stream's own reader splits by rank
