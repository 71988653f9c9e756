"""Object storage: the s3:// reader's fault handling on a scripted client, then a real S3 server on
loopback (rclone serve s3, authentication on): errors, uploads, stream runs equal to local ones,
outages within and past the retry budget, skipped shards, workers, and credentials kept out of files."""

import hashlib
import json
import logging
import threading
import time

import numpy as np
import pytest
import torch
from botocore.exceptions import ClientError

from bmb_stream.cli import main
from bmb_stream.errors import ShardError, StorageUnavailable
from bmb_stream.shards.reading import shard_samples
from bmb_stream.shards.urls import expand_urls
from bmb_stream.storage.object_store import S3Reader, S3Settings, use_storage
from bmb_stream.storage.retry import RetryPolicy
from tests.stream_helpers import SMALL_STREAM, metrics, stream_args
from tests.test_sources import write_idx

FAST_RETRY = RetryPolicy(budget_s=5.0, backoff_s=0.01, max_backoff_s=0.05)


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": ""}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "GetObject")


class ScriptedBody:
    def __init__(self, data: bytes, cut_after: int | None):
        self.data, self.cut_after, self.pos = data, cut_after, 0

    def read(self, n: int) -> bytes:
        if self.cut_after is not None and self.pos >= self.cut_after:
            raise ConnectionResetError("connection reset by peer")
        end = self.pos + n if self.cut_after is None else min(self.pos + n, self.cut_after)
        chunk = self.data[self.pos: end]
        self.pos += len(chunk)
        return chunk

    def close(self):
        pass


class ScriptedClient:
    """get_object that fails as told: `failures` raised in turn, then a body cut at `cut_at` once."""

    def __init__(self, data: bytes, failures=(), cut_at: int | None = None, ignore_range: bool = False):
        self.data, self.failures, self.cut_at, self.ignore_range = data, list(failures), cut_at, ignore_range
        self.requests = []

    def get_object(self, Bucket, Key, Range=None, IfMatch=None):
        self.requests.append((Range, IfMatch))
        if self.failures:
            raise self.failures.pop(0)
        start = int(Range[len("bytes="):-1]) if Range and not self.ignore_range else 0
        cut, self.cut_at = (None if self.cut_at is None else self.cut_at - start), None
        response = {"ETag": '"v1"', "ContentLength": len(self.data) - start, "Body": ScriptedBody(self.data[start:], cut)}
        if start:
            response["ContentRange"] = f"bytes {start}-{len(self.data) - 1}/{len(self.data)}"
        return response


def read_all(reader, chunk=1000) -> bytes:
    out = bytearray()
    buf = bytearray(chunk)
    while n := reader.readinto(buf):
        out += buf[:n]
    return bytes(out)


def test_a_read_cut_mid_object_resumes_at_that_byte_of_the_same_object():
    data = np.random.default_rng(0).bytes(10_000)
    client = ScriptedClient(data, cut_at=4321)
    assert read_all(S3Reader(client, "s3://b/shard.tar", FAST_RETRY)) == data  # nothing lost, nothing twice
    assert client.requests == [(None, None), ("bytes=4321-", '"v1"')]  # pinned to the ETag it started with
    # a server that ignores the range would send byte 0 again: that is an error, not a duplicate
    with pytest.raises(ShardError, match="ignored a ranged read"):
        read_all(S3Reader(ScriptedClient(data, cut_at=4321, ignore_range=True), "s3://b/shard.tar", FAST_RETRY))


def test_transient_errors_are_retried_and_permanent_ones_are_not():
    data = b"x" * 100
    client = ScriptedClient(data, failures=[client_error("SlowDown", 503), client_error("InternalError", 500),
                                            ConnectionResetError()])
    assert read_all(S3Reader(client, "s3://b/k.tar", FAST_RETRY)) == data and len(client.requests) == 4
    for code, status, cause in (("NoSuchKey", 404, "no such key"), ("AccessDenied", 403, "access denied"),
                                ("SignatureDoesNotMatch", 403, "wrong secret key")):
        client = ScriptedClient(data, failures=[client_error(code, status)])
        with pytest.raises(ShardError, match=f"s3://b/k.tar: .*{cause}") as info:
            S3Reader(client, "s3://b/k.tar", FAST_RETRY)
        assert not isinstance(info.value, StorageUnavailable) and len(client.requests) == 1


def test_an_outage_past_the_budget_raises_storage_unavailable():
    client = ScriptedClient(b"", failures=[ConnectionRefusedError()] * 1000)
    start = time.monotonic()
    with pytest.raises(StorageUnavailable, match="s3://b/k.tar: storage unreachable for 0.3 s"):
        S3Reader(client, "s3://b/k.tar", RetryPolicy(budget_s=0.3, backoff_s=0.01, max_backoff_s=0.1))
    assert 0.25 < time.monotonic() - start < 2.0 and 3 < len(client.requests) < 100


def test_backoff_doubles_up_to_its_cap_and_stops_at_the_budget():
    waits = []
    for wait in RetryPolicy(budget_s=0.2, backoff_s=0.01, max_backoff_s=0.04).waits():
        if wait is None:
            break
        waits.append(wait)
        time.sleep(wait)
    assert len(waits) >= 2 and waits[0] <= 0.01 <= waits[1] and max(waits) <= 0.04


# ----- a real S3 server -----


class RetryLog(logging.Handler):
    """Collects the storage retry warnings; `seen` is set at the first one."""

    def __init__(self):
        super().__init__()
        self.messages, self.seen = [], threading.Event()

    def emit(self, record):
        self.messages.append(record.getMessage())
        self.seen.set()


@pytest.fixture
def retry_log():
    handler = RetryLog()
    logger = logging.getLogger("bmb_stream.storage")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture(scope="session")
def s3_stream(s3_server, fmnist_stream):
    """The small stream uploaded with `bmb-stream simulate ... out=s3://shards/stream`."""
    env = {k: v for k, v in s3_server.env().items()}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        assert main(["simulate", "fmnist_lt_stationary", "out=s3://shards/stream", "progress=false", *SMALL_STREAM]) == 0
    return "s3://shards/stream"


def digests(folder, suffixes=(".tar", ".json")):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file() and p.suffix in suffixes}


def test_simulate_uploads_the_same_bytes_as_it_writes_locally(s3_env, s3_stream, fmnist_stream, capsys):
    uploaded = s3_env.root / "shards" / "stream"
    assert digests(uploaded) == digests(fmnist_stream) and len(digests(uploaded)) == 6 + 2 + 1
    assert not list(uploaded.glob(".*")) and (uploaded / "plots" / "stream_prior.png").exists()
    # the same stream again is kept; another one is refused without overwrite=true
    assert main(["simulate", "fmnist_lt_stationary", "out=s3://shards/stream", "progress=false", *SMALL_STREAM]) == 0
    assert main(["simulate", "fmnist_lt_drift", "out=s3://shards/stream", "progress=false", *SMALL_STREAM]) == 2
    assert "already holds a different stream" in capsys.readouterr().err


def test_shards_command_uploads_the_split(s3_env, tmp_path):
    root = tmp_path / "fmnist"
    root.mkdir()
    rng = np.random.default_rng(0)
    for prefix, per_class in (("train", 60), ("t10k", 10)):
        labels = rng.permutation(np.repeat(np.arange(10), per_class))
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (len(labels), 28, 28), dtype=np.uint8))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    args = ["shards", f"dataset.root={root}", "dataset.n1=20", "dataset.m1=40", "dataset.gamma_l=10",
            "dataset.gamma_u=10", "max_samples=50", "progress=false"]
    assert main([*args, f"out={tmp_path / 'local'}"]) == 0
    assert main([*args, "out=s3://shards/split"]) == 0
    assert digests(s3_env.root / "shards" / "split") == digests(tmp_path / "local")


def test_missing_objects_and_refused_credentials_name_the_url_and_cause(s3_env, s3_stream):
    opener = use_storage(S3Settings(retry=FAST_RETRY))
    for url, cause in (("s3://shards/stream/nope.tar", "no such key"), ("s3://no-bucket/x.tar", "no such bucket")):
        with pytest.raises(ShardError, match=f"{url}: {cause}"):
            opener(url)
    wrong = use_storage(S3Settings(access_key_id=s3_env.key_id, secret_access_key="not-the-secret", retry=FAST_RETRY))
    start = time.monotonic()
    with pytest.raises(ShardError, match="s3://shards/stream/stream-000000.tar: refused credentials") as info:
        wrong("s3://shards/stream/stream-000000.tar")
    assert "not-the-secret" not in str(info.value) and time.monotonic() - start < 5  # refused at once, no retries


def test_a_stream_run_from_s3_equals_the_run_from_local_files(s3_env, s3_stream, reference_run, tmp_path):
    assert main(stream_args(s3_stream, tmp_path / "run")) == 0
    assert metrics(json.loads((tmp_path / "run" / "summary.json").read_text())) == \
        metrics(json.loads((reference_run / "summary.json").read_text()))


def test_workers_read_each_s3_shard_exactly_once(s3_env, s3_stream):
    import webdataset as wds

    urls = [f"{s3_stream}/stream-{i:06d}.tar" for i in range(6)]
    assert expand_urls(f"{s3_stream}/stream-") == urls  # a key prefix lists its .tar objects
    assert expand_urls(f"{s3_stream}/stream-{{000000..000005}}.tar") == urls
    keys = [s["key"] for s in wds.WebLoader(shard_samples(urls), batch_size=None, num_workers=2)]
    assert len(keys) == 6 * 96 and len(set(keys)) == len(keys)


class Outage:
    """Stops the server once it has been asked for `key` (and `delay_s` later); starts it again after
    the first retry if told. As a context manager: leaving it cancels what has not happened yet."""

    def __init__(self, server, key: str, delay_s: float = 0.0, restart_after_retry: threading.Event | None = None):
        self.server, self.key, self.delay_s, self.restart_after_retry = server, key, delay_s, restart_after_retry
        self.cancel = threading.Event()
        self.since = server.log_size()  # requests from now on
        self.thread = threading.Thread(target=self._act, daemon=True)

    def _act(self):
        while not self.server.requested(self.key, self.since):
            if self.cancel.wait(0.01):
                return
        if self.cancel.wait(self.delay_s):
            return
        self.server.stop()
        if self.restart_after_retry is not None:
            while not self.restart_after_retry.wait(0.05):
                if self.cancel.is_set():
                    return
            time.sleep(1.0)  # a few more retries fail before the server is back
            self.server.start()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.cancel.set()
        self.thread.join()


def test_an_outage_within_the_retry_budget_loses_and_duplicates_nothing(s3_env, s3_stream, reference_run, tmp_path,
                                                                       retry_log):
    run_dir = tmp_path / "run"
    with Outage(s3_env, "shards/stream/stream-000002.tar", restart_after_retry=retry_log.seen):
        assert main(stream_args(s3_stream, run_dir, "storage.retry.budget_s=60", "storage.retry.backoff_s=0.1",
                                "storage.retry.max_backoff_s=1")) == 0
    assert any("retrying" in m for m in retry_log.messages)  # the outage did hit a read
    assert metrics(json.loads((run_dir / "summary.json").read_text())) == \
        metrics(json.loads((reference_run / "summary.json").read_text()))


def test_an_outage_past_the_budget_stops_with_a_checkpoint_that_resumes_exactly(s3_env, s3_stream, reference_run,
                                                                              tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = stream_args(s3_stream, run_dir, "storage.retry.budget_s=1", "storage.retry.backoff_s=0.1",
                       "storage.retry.max_backoff_s=0.2")
    # the server goes away just after the first read of experience 2: the second pass over its shard
    # fails, in the middle of the experience
    with Outage(s3_env, "shards/stream/stream-000002.tar", delay_s=0.2):
        assert main(args) == 75
    err = capsys.readouterr().err
    assert "storage unreachable for 1 s" in err and "resume with" in err
    position = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["position"]
    assert position["experience"] == 2 and position["batches"] > 0 and not (run_dir / "summary.json").exists()
    s3_env.start()
    assert main([*args, "resume=true"]) == 0
    assert metrics(json.loads((run_dir / "summary.json").read_text())) == \
        metrics(json.loads((reference_run / "summary.json").read_text()))


def test_a_missing_shard_ends_the_run_or_is_skipped_and_counted(s3_env, s3_stream, tmp_path, capsys):
    urls = f"stream.urls={s3_stream}/stream-0000{{00,99,01}}.tar"  # 000099 does not exist
    args = [*stream_args(s3_stream, tmp_path / "a")[1:], urls]
    assert main(args) == 2
    assert f"{s3_stream}/stream-000099.tar: no such key" in capsys.readouterr().err
    run_dir = tmp_path / "b"
    assert main([*stream_args(s3_stream, run_dir)[1:], urls, f"run.dir={run_dir}", "stream.on_shard_error=skip"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [s["url"] for s in summary["skipped_shards"]] == [f"{s3_stream}/stream-000099.tar"]
    assert "no such key" in summary["skipped_shards"][0]["error"] and summary["experiences"] == 3
    records = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
    assert [r["skipped_shards"] for r in records] == [0, 1, 1]
    assert summary["samples_seen"] == 2 * 2 * 96  # two shards read, twice each


def test_credentials_given_as_config_values_are_never_written(s3_server, s3_stream, tmp_path, monkeypatch, capsys):
    for key in s3_server.env():
        monkeypatch.delenv(key, raising=False)
    if s3_server.process is None:
        s3_server.start()
    config = [f"storage.s3.endpoint_url={s3_server.endpoint}", f"storage.s3.access_key_id={s3_server.key_id}"]
    run_dir = tmp_path / "run"
    assert main([*stream_args(s3_stream, run_dir), *config, f"storage.s3.secret_access_key={s3_server.secret}",
                 "stream.max_experiences=1"]) == 0
    for path in run_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert s3_server.secret.encode() not in data and s3_server.key_id.encode() not in data, path
    assert "<redacted>" in (run_dir / "config.yaml").read_text()
    assert main([*stream_args(s3_stream, tmp_path / "b"), *config, "storage.s3.secret_access_key=wrong-secret-42"]) == 2
    err = capsys.readouterr().err
    assert "refused credentials" in err and "s3://shards/stream/" in err and "wrong-secret-42" not in err
