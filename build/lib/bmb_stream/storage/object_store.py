"""Reading object storage: `s3://bucket/key` and `http(s)://` shards read through openers registered
with WebDataset (in place of its curl pipe), small objects read whole, and listings of s3 prefixes.

Reads are byte streams that survive faults: a transient error is retried within the budget of
`storage_retry`, and a read interrupted in the middle of an object resumes at the byte where it
stopped (a ranged GET pinned to the object's ETag), so the tar reader above never sees a duplicated
or a missing sample. A read that trickles (under LOW_SPEED_BYTES_PER_S for a whole read timeout,
`storage.s3.read_timeout_s`) is such a fault too: a server that sends a byte now and then would
otherwise hold a run for ever, each byte arriving within the socket's timeout.

Credentials come from the standard AWS variables or from `storage.s3.*`, and appear in no message.
Each process (main process, DataLoader worker, rank) builds its own client on first use: boto3
clients are not safe to share across a fork. `S3Settings` builds the clients of reads and uploads.
"""

from __future__ import annotations

import abc
import importlib
import io
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bmb_stream.config_schema import S3
from bmb_stream.errors import ConfigError, ShardError
from bmb_stream.storage.retry import NoSuchObject, RetryPolicy, Stalled, unreachable, with_retries

# the module, not the function of the same name that `webdataset.gopen` resolves to
gopen_module = importlib.import_module("webdataset.gopen")
LOW_SPEED_BYTES_PER_S = 1024  # slower than this for a whole read timeout, a read has stalled (curl's low-speed limit)


def require_boto3():
    """boto3, which s3:// URLs need (the s3 extra)."""
    try:
        import boto3
    except ImportError:
        raise ConfigError("s3:// URLs need boto3, which is not installed: pip install 'bmb-stream[s3]'") from None
    return boto3


def split_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/key` -> (bucket, key)."""
    if not url.startswith("s3://"):
        raise ShardError(f"{url}: not an s3:// URL")
    bucket, _, key = url[len("s3://"):].partition("/")
    if not bucket:
        raise ShardError(f"{url}: no bucket in the URL (s3://bucket/key)")
    return bucket, key


@dataclass(frozen=True)
class S3Settings:
    """Where and how to reach the storage. None values fall back to the AWS environment variables."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    path_style: bool = S3.path_style  # the defaults are storage.s3's
    connect_timeout_s: float = S3.connect_timeout_s
    read_timeout_s: float = S3.read_timeout_s
    retry: RetryPolicy = RetryPolicy()

    @classmethod
    def from_config(cls, storage) -> "S3Settings":
        """From the `storage` config group (None: defaults and the environment)."""
        if storage is None:
            return cls()
        s3, retry = storage.s3, storage.retry
        return cls(endpoint_url=s3.endpoint_url or None, region=s3.region or None,
                   access_key_id=s3.access_key_id or None, secret_access_key=s3.secret_access_key or None,
                   session_token=s3.session_token or None,
                   path_style=s3.path_style, connect_timeout_s=s3.connect_timeout_s, read_timeout_s=s3.read_timeout_s,
                   retry=RetryPolicy(retry.budget_s, retry.backoff_s, retry.max_backoff_s))

    def make_session(self):
        """A boto3 session with these credentials. It caches the service model, so processes forked
        from one that holds it make their clients in milliseconds instead of a tenth of a second."""
        boto3 = require_boto3()

        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ShardError("storage.s3.access_key_id and storage.s3.secret_access_key go together: give both, "
                             "or neither (then the AWS variables, profiles or instance roles are used)")
        # None values let boto3's own chain decide: AWS_* variables (with AWS_SESSION_TOKEN), profiles, roles
        return boto3.session.Session(aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key,
                                     aws_session_token=self.session_token, region_name=self.region)

    def make_client(self, session=None):
        from botocore.config import Config

        config = Config(connect_timeout=self.connect_timeout_s, read_timeout=self.read_timeout_s,
                        retries={"total_max_attempts": 1},  # one retry layer: ours, with its budget
                        s3={"addressing_style": "path" if self.path_style else "auto"},
                        signature_version="s3v4", max_pool_connections=32,
                        # checksums only where the API requires them: S3-compatible servers differ here
                        request_checksum_calculation="when_required", response_checksum_validation="when_required")
        return (session or self.make_session()).client("s3", endpoint_url=self.endpoint_url, config=config)


class ResumableReader(io.RawIOBase):
    """A forward-only byte stream over one object that resumes at its byte offset after a fault.
    Subclasses send the request (`_request`): from `self.position` (a ranged read once it is past 0),
    pinned to `self.etag` (the same object, not a newer upload under the same name). A body that brings
    under LOW_SPEED_BYTES_PER_S for `stall_s` seconds has stalled: a fault, retried as a timeout."""

    def __init__(self, url: str, policy: RetryPolicy, stall_s: float = S3Settings.read_timeout_s):
        super().__init__()
        self.url, self.policy, self.stall_s = url, policy, stall_s
        self.position = 0
        self.size: int | None = None  # None: unknown (an http body without Content-Length) until its end
        self.etag: str | None = None
        self.body = None
        self.window = (0.0, 0)  # (start, bytes since): the speed is measured over stall_s seconds at least
        self.stalled_since: float | None = None  # the first stall since the last window at full speed
        with_retries(self._open, url, policy, self._drop)  # a missing object fails here, at open time

    @abc.abstractmethod
    def _request(self) -> tuple[object, int | None, str | None, str]:
        """(body, content length, ETag, Content-Range) of a read from self.position."""

    def _open(self) -> None:
        body, size, etag, content_range = self._request()
        if self.position:  # a server that ignored the range would send the object again from byte 0
            if not content_range.startswith(f"bytes {self.position}-"):
                body.close()
                raise ShardError(f"{self.url}: the server ignored a ranged read (Content-Range {content_range!r}), "
                                 f"so an interrupted read cannot resume")
        else:
            self.etag, self.size = etag, size
        self.body = body
        self.window = (time.monotonic(), 0)

    def _drop(self) -> None:
        if self.body is not None:
            try:
                self.body.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is dropped anyway
                pass
        self.body = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.size is not None and self.position >= self.size:
            return 0

        def read_some() -> bytes:
            if self.body is None:
                self._open()
            data = self._read1(len(buffer))
            if not data and self.size is not None:  # the connection ended before the object did
                raise ConnectionResetError(f"connection closed at byte {self.position} of {self.size}")
            self._check_speed(len(data))
            return data

        data = with_retries(read_some, self.url, self.policy, self._drop)
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)

    def _read1(self, n: int) -> bytes:
        """What the body has, up to n bytes, in one read from the socket: a read of n bytes would wait
        for all of them, however slowly they come. botocore's body reads through urllib3's."""
        body = getattr(self.body, "_raw_stream", self.body)
        return body.read1(n) if hasattr(body, "read1") else self.body.read(n)

    def _check_speed(self, n: int) -> None:
        """Raise Stalled for a window of stall_s seconds under the lowest speed; StorageUnavailable once
        the stalls have lasted the retry budget (a retry that reconnects and gets a few bytes is no cure)."""
        start, total = self.window[0], self.window[1] + n
        now = time.monotonic()
        if now - start < self.stall_s:
            self.window = (start, total)
            return
        if total >= LOW_SPEED_BYTES_PER_S * (now - start):
            self.window, self.stalled_since = (now, 0), None
            return
        stall = Stalled(f"stalled: under {LOW_SPEED_BYTES_PER_S} bytes/s for {self.stall_s:g} s "
                        f"(storage.s3.read_timeout_s)")
        self.stalled_since = self.stalled_since or now
        if now - self.stalled_since >= self.policy.budget_s:
            raise unreachable(self.url, self.policy, stall)
        raise stall

    def close(self) -> None:
        self._drop()
        super().close()


class S3Reader(ResumableReader):
    def __init__(self, client, url: str, policy: RetryPolicy, stall_s: float = S3Settings.read_timeout_s):
        self.client = client
        self.bucket, self.key = split_s3_url(url)
        super().__init__(url, policy, stall_s)

    def _request(self):
        request = {"Bucket": self.bucket, "Key": self.key}
        if self.position:
            request["Range"] = f"bytes={self.position}-"
        if self.etag:
            request["IfMatch"] = self.etag
        response = self.client.get_object(**request)
        return (response["Body"], int(response["ContentLength"]), response.get("ETag"),
                str(response.get("ContentRange", "")))


class HttpReader(ResumableReader):
    """An http(s) object read with urllib: ranged resumes as for S3 (servers that support ranges)."""

    def __init__(self, url: str, policy: RetryPolicy, timeout_s: float):
        self.timeout_s = timeout_s
        super().__init__(url, policy, stall_s=timeout_s)

    def _request(self):
        headers = {"Range": f"bytes={self.position}-"} if self.position else {}
        if self.etag:
            headers["If-Match"] = self.etag
        try:
            response = urllib.request.urlopen(urllib.request.Request(self.url, headers=headers), timeout=self.timeout_s)
        except urllib.error.HTTPError as e:
            e.close()  # its body is the server's error page: judged by the status alone
            raise
        length = response.headers.get("Content-Length")
        return (response, int(length) if length and length.isdigit() else None, response.headers.get("ETag"),
                response.headers.get("Content-Range", ""))


class Opener(abc.ABC):
    """An entry of WebDataset's gopen table: URL -> a buffered, fault-tolerant byte stream."""

    def __init__(self, settings: S3Settings):
        self.settings = settings

    @abc.abstractmethod
    def reader(self, url: str) -> ResumableReader:
        """The resumable stream of one object of this scheme."""

    def __call__(self, url: str, mode: str = "rb", bufsize: int = 8192, **_):
        if mode != "rb":
            raise ValueError(f"{url}: shards are opened for reading only (mode {mode!r})")
        return io.BufferedReader(self.reader(url), buffer_size=1 << 20)


class HttpOpener(Opener):
    """The `http` and `https` entries: the same retry budget as S3, where WebDataset's curl pipe had its own."""

    def reader(self, url: str) -> ResumableReader:
        return HttpReader(url, self.settings.retry, self.settings.read_timeout_s)


class S3Opener(Opener):
    """The `s3` entry: one client per process, made on first use."""

    def __init__(self, settings: S3Settings):
        super().__init__(settings)
        self._session = None  # inherited by forked workers: only the client (its connections) is per process
        self._clients: dict[int, object] = {}
        self._lock = threading.Lock()

    def client(self):
        pid = os.getpid()  # a forked DataLoader worker builds its own
        with self._lock:
            if pid not in self._clients:
                if self._session is None:
                    self._session = self.settings.make_session()
                self._clients = {pid: self.settings.make_client(self._session)}
            return self._clients[pid]

    def reader(self, url: str) -> ResumableReader:
        return S3Reader(with_retries(self.client, url, self.settings.retry), url, self.settings.retry,
                        self.settings.read_timeout_s)

    def __getstate__(self):  # pickled into spawned workers without the process's clients
        return {"settings": self.settings}

    def __setstate__(self, state):
        self.__init__(state["settings"])


def use_storage(settings: S3Settings) -> S3Opener:
    """Register the s3:// and http(s):// openers with WebDataset (the process-wide table its gopen reads)."""
    opener = S3Opener(settings)
    gopen_module.gopen_schemes.update(s3=opener, http=HttpOpener(settings), https=HttpOpener(settings))
    return opener


# http(s) never goes through WebDataset's curl pipe (its own retries, curl's messages), even before use_storage
gopen_module.gopen_schemes.update(http=HttpOpener(S3Settings()), https=HttpOpener(S3Settings()))


def open_url(url: str):
    """Any shard URL WebDataset can open (local path, file://, http(s)://, s3://) as a binary stream."""
    return gopen_module.gopen(url.removeprefix("file://"), "rb")


def read_bytes(url: str) -> bytes | None:
    """A small object's bytes, or None when it does not exist (e.g. a manifest beside the shards)."""
    local = url.removeprefix("file://")
    if "://" not in local:
        return Path(local).read_bytes() if Path(local).is_file() else None
    if url.startswith("s3://"):
        s3_opener()  # registered with the environment's settings if no run did it
    try:
        with open_url(url) as f:
            return f.read()
    except NoSuchObject:
        return None


def s3_opener() -> S3Opener:
    opener = gopen_module.gopen_schemes.get("s3")
    if not isinstance(opener, S3Opener):
        opener = use_storage(S3Settings())
    return opener


def list_keys(client, bucket: str, prefix: str, policy: RetryPolicy, delimiter: str | None = None) -> list[str]:
    """Every key under `prefix` (only those directly in it with delimiter "/"), page by page, with retries."""
    keys, request = [], {"Bucket": bucket, "Prefix": prefix, **({"Delimiter": delimiter} if delimiter else {})}
    while True:
        response = with_retries(lambda: client.list_objects_v2(**request), f"s3://{bucket}/{prefix}", policy)
        keys += [o["Key"] for o in response.get("Contents", [])]
        if not response.get("IsTruncated"):
            return keys
        request["ContinuationToken"] = response["NextContinuationToken"]


def list_objects(prefix_url: str, suffix: str = ".tar") -> list[str]:
    """The `s3://bucket/prefix/...` objects whose names end with `suffix`, sorted."""
    opener = s3_opener()
    bucket, prefix = split_s3_url(prefix_url)
    policy = opener.settings.retry
    keys = list_keys(with_retries(opener.client, prefix_url, policy), bucket, prefix, policy)
    return sorted(f"s3://{bucket}/{key}" for key in keys if key.endswith(suffix))
