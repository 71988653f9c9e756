"""Object storage: `s3://bucket/key` and `http(s)://` shards read through openers registered with
WebDataset (in place of its curl pipe), and uploads of written shards.

Reads are byte streams that survive faults: a transient error (connection reset, timeout, 5xx,
throttling) is retried with exponential backoff within a bounded budget, and a read interrupted in
the middle of an object resumes at the byte where it stopped (a ranged GET pinned to the object's
ETag), so the tar reader above never sees a duplicated or a missing sample. Permanent errors (no
such bucket or key, refused credentials) raise `ShardError` at once, naming the URL; a transient
fault that outlasts the budget raises `StorageUnavailable`, on which a run stops with a checkpoint.

Credentials come from the standard AWS variables or from `storage.s3.*`, and appear in no message.
Each process (main process, DataLoader worker, rank) builds its own client on first use: boto3
clients are not safe to share across a fork.
"""

from __future__ import annotations

import abc

import http.client
import importlib
import io
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bmb_stream.data.errors import ShardError, StorageUnavailable

log = logging.getLogger("bmb_stream.storage")

# the module, not the function of the same name that `webdataset.gopen` resolves to
gopen_module = importlib.import_module("webdataset.gopen")

# error codes of S3 and S3-compatible servers that say "try again later"
TRANSIENT_CODES = {"RequestTimeout", "RequestTimeoutException", "SlowDown", "Throttling", "ThrottlingException",
                   "RequestLimitExceeded", "TooManyRequestsException", "InternalError", "ServiceUnavailable",
                   "BandwidthLimitExceeded", "PriorRequestNotComplete", "EC2ThrottledException"}
# what a permanent error means to the user, by code
PERMANENT_CAUSES = {
    "NoSuchBucket": "no such bucket", "NoSuchKey": "no such key", "404": "no such key", "NotFound": "no such key",
    "AccessDenied": "access denied", "403": "access denied (refused credentials or no permission)",
    "InvalidAccessKeyId": "refused credentials (unknown access key)",
    "SignatureDoesNotMatch": "refused credentials (wrong secret key)",
    "PreconditionFailed": "the object changed while it was read",
    "InvalidRange": "the object is shorter than expected",
}
NO_CREDENTIALS = ("no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or storage.s3.access_key_id and "
                  "storage.s3.secret_access_key, or AWS_PROFILE for a profile in ~/.aws/credentials)")


class NoSuchObject(ShardError):
    """The object (S3 key, http URL) does not exist: permanent, and for an optional file (a manifest) no error."""


def split_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/key` -> (bucket, key)."""
    if not url.startswith("s3://"):
        raise ShardError(f"{url}: not an s3:// URL")
    bucket, _, key = url[len("s3://"):].partition("/")
    if not bucket:
        raise ShardError(f"{url}: no bucket in the URL (s3://bucket/key)")
    return bucket, key


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: waits of backoff_s, 2 backoff_s, ... capped at max_backoff_s (with jitter),
    until `budget_s` seconds have passed since the first failure of an episode."""

    budget_s: float = 120.0
    backoff_s: float = 0.5
    max_backoff_s: float = 15.0

    def __post_init__(self):
        if self.budget_s < 0 or self.backoff_s <= 0 or self.max_backoff_s < self.backoff_s:
            raise ValueError(f"bad retry policy {self}: need budget_s >= 0 and 0 < backoff_s <= max_backoff_s")

    def waits(self):
        """Successive waits, then None when the budget is spent."""
        rng = random.Random()  # jitter spreads the retries of many workers; it does not touch training randomness
        start, wait = time.monotonic(), self.backoff_s
        while True:
            left = self.budget_s - (time.monotonic() - start)
            if left <= 0:
                yield None
                return
            yield min(left, wait * rng.uniform(0.5, 1.0))
            wait = min(wait * 2, self.max_backoff_s)


@dataclass(frozen=True)
class S3Settings:
    """Where and how to reach the storage. None values fall back to the AWS environment variables."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    path_style: bool = True
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
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
                   path_style=bool(s3.path_style), connect_timeout_s=float(s3.connect_timeout_s),
                   read_timeout_s=float(s3.read_timeout_s),
                   retry=RetryPolicy(float(retry.budget_s), float(retry.backoff_s), float(retry.max_backoff_s)))

    def make_session(self):
        """A boto3 session with these credentials. It caches the service model, so processes forked
        from one that holds it make their clients in milliseconds instead of a tenth of a second."""
        import boto3

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


def _error_code(exc: BaseException) -> tuple[str, int]:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def _unwrap(exc: BaseException) -> BaseException:
    """boto3's transfer manager wraps the failure of an upload part; judge the original."""
    from boto3.exceptions import S3UploadFailedError

    if isinstance(exc, S3UploadFailedError):
        return exc.__cause__ or exc.__context__ or exc
    return exc


def is_transient(exc: BaseException) -> bool:
    """Connection trouble, timeouts, truncated bodies, 5xx and throttling: worth another try.
    Everything else (a missing object, refused credentials, a TLS certificate error) is not."""
    from botocore import exceptions as be
    from urllib3 import exceptions as ue

    exc = _unwrap(exc)
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code in (408, 429)
    if isinstance(exc, urllib.error.URLError):  # no response at all: refused, reset, timed out (not DNS, not TLS)
        return isinstance(exc.reason, (ConnectionError, TimeoutError))
    if isinstance(exc, be.ClientError):
        code, status = _error_code(exc)
        return code in TRANSIENT_CODES or status >= 500 or status == 429
    if isinstance(exc, (be.SSLError, ue.SSLError)):
        return False
    return isinstance(exc, (be.ConnectionError, be.HTTPClientError, be.IncompleteReadError, be.ResponseStreamingError,
                            ue.ProtocolError, ue.TimeoutError, ue.NewConnectionError, ConnectionError, TimeoutError,
                            http.client.IncompleteRead))


def is_missing(exc: BaseException) -> bool:
    """No such key or URL (a missing bucket or host is not "missing": it is an error everywhere)."""
    from botocore.exceptions import ClientError

    if isinstance(exc, urllib.error.HTTPError):
        return exc.code in (404, 410)
    return isinstance(exc, ClientError) and _error_code(exc)[0] in ("NoSuchKey", "404", "NotFound")


def describe(exc: BaseException) -> str:
    """The cause in words, with the server's code; never the request (it may carry credentials)."""
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

    exc = _unwrap(exc)
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the server up?)"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):  # botocore's text names variables, no values
        return f"{NO_CREDENTIALS} ({exc})"
    if isinstance(exc, ClientError):
        code, status = _error_code(exc)
        cause = PERMANENT_CAUSES.get(code) or PERMANENT_CAUSES.get(str(status))
        if cause is None:
            cause = "server error or throttling" if status >= 500 or status == 429 else "request refused"
        return f"{cause} ({code or status})"
    return f"{type(exc).__name__}: {exc}"


def with_retries(action: Callable, url: str, policy: RetryPolicy, on_failure: Callable | None = None):
    """Run `action()`; retry transient failures within the policy's budget."""
    waits = None
    while True:
        try:
            return action()
        except Exception as exc:  # noqa: BLE001 - classified below
            if on_failure is not None:
                on_failure()
            if isinstance(exc, ShardError):
                raise
            if not is_transient(exc):
                raise (NoSuchObject if is_missing(exc) else ShardError)(f"{url}: {describe(exc)}") from None
            waits = waits or policy.waits()
            wait = next(waits)
            if wait is None:
                raise StorageUnavailable(f"{url}: storage unreachable for {policy.budget_s:g} s "
                                         f"(storage.retry.budget_s): {describe(exc)}") from None
            log.warning("%s: %s; retrying in %.1f s", url, describe(exc), wait)
            time.sleep(wait)


class ResumableReader(io.RawIOBase):
    """A forward-only byte stream over one object that resumes at its byte offset after a fault.
    Subclasses send the request (`_request`): from `self.position` (a ranged read once it is past 0),
    pinned to `self.etag` (the same object, not a newer upload under the same name)."""

    def __init__(self, url: str, policy: RetryPolicy):
        super().__init__()
        self.url, self.policy = url, policy
        self.position = 0
        self.size: int | None = None  # None: unknown (an http body without Content-Length) until its end
        self.etag: str | None = None
        self.body = None
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
            data = self.body.read(len(buffer))
            if not data and self.size is not None:  # the connection ended before the object did
                raise ConnectionResetError(f"connection closed at byte {self.position} of {self.size}")
            return data

        data = with_retries(read_some, self.url, self.policy, self._drop)
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)

    def close(self) -> None:
        self._drop()
        super().close()


class S3Reader(ResumableReader):
    def __init__(self, client, url: str, policy: RetryPolicy):
        self.client = client
        self.bucket, self.key = split_s3_url(url)
        super().__init__(url, policy)

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
        super().__init__(url, policy)

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
        return S3Reader(with_retries(self.client, url, self.settings.retry), url, self.settings.retry)

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
        _opener()  # registered with the environment's settings if no run did it
    try:
        with open_url(url) as f:
            return f.read()
    except NoSuchObject:
        return None


def _opener() -> S3Opener:
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
    opener = _opener()
    bucket, prefix = split_s3_url(prefix_url)
    policy = opener.settings.retry
    keys = list_keys(with_retries(opener.client, prefix_url, policy), bucket, prefix, policy)
    return sorted(f"s3://{bucket}/{key}" for key in keys if key.endswith(suffix))


class Uploader:
    """Uploads files written locally to `s3://bucket/prefix/`, in background threads, multipart for
    large files; `finish()` waits and raises the first failure."""

    def __init__(self, prefix_url: str, settings: S3Settings | None = None, threads: int = 8):
        from concurrent.futures import ThreadPoolExecutor

        from boto3.s3.transfer import TransferConfig

        self.settings = settings or _opener().settings
        self.bucket, prefix = split_s3_url(prefix_url.rstrip("/") + "/")
        self.prefix = prefix
        self.client = with_retries(self.settings.make_client, prefix_url, self.settings.retry)  # checks credentials
        self.transfer = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=4)
        self.threads = threads
        self.pool = ThreadPoolExecutor(max_workers=threads)
        self.jobs = []

    def url(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{name}"

    def _upload(self, path: Path, name: str, remove: bool) -> None:
        url = self.url(name)
        with_retries(lambda: self.client.upload_file(str(path), self.bucket, self.prefix + name, Config=self.transfer),
                     url, self.settings.retry)
        if remove:
            path.unlink()

    def submit(self, path: Path, name: str | None = None, remove: bool = True) -> None:
        """Queue an upload; blocks while 2 x threads uploads are pending, so that written shards do not
        pile up on the local disk faster than they leave."""
        from concurrent.futures import FIRST_COMPLETED, wait

        while len(pending := [j for j in self.jobs if not j.done()]) >= 2 * self.threads:
            wait(pending, return_when=FIRST_COMPLETED)
        self.jobs.append(self.pool.submit(self._upload, Path(path), name or Path(path).name, remove))

    def put_now(self, path: Path, name: str | None = None, remove: bool = True) -> None:
        self._upload(Path(path), name or Path(path).name, remove)

    def existing(self, folder: str = "") -> list[str]:
        """Names (relative to the prefix) of the objects directly in it, or in its sub-folder `folder/`."""
        keys = list_keys(self.client, self.bucket, self.prefix + folder, self.settings.retry, delimiter="/")
        return [key[len(self.prefix):] for key in keys]

    def delete(self, names: list[str]) -> None:
        for i in range(0, len(names), 1000):
            objects = [{"Key": self.prefix + n} for n in names[i: i + 1000]]
            response = with_retries(lambda: self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects}),
                                    self.url(""), self.settings.retry)
            for error in response.get("Errors", []):  # per-key failures come in a successful response
                raise ShardError(f"s3://{self.bucket}/{error.get('Key')}: cannot delete ({error.get('Code')})")

    def finish(self) -> None:
        try:
            for job in self.jobs:
                job.result()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.jobs = []


class ShardDestination:
    """Where written shards go: a local folder, or `s3://bucket/prefix` through a local staging folder
    whose files are uploaded as soon as each is complete (in background threads, multipart when
    large) and then deleted. The files named in `finish` (the manifest) go last, so a manifest in
    the storage always describes shards that are already there."""

    def __init__(self, out: str | Path, settings: S3Settings | None = None):
        self.out = str(out).rstrip("/")
        self.remote = self.out.startswith("s3://")
        if self.remote:
            import tempfile

            self.uploader = Uploader(self.out, settings)
            self.folder = Path(tempfile.mkdtemp(prefix="bmb-stream-upload-"))
        else:
            self.uploader = None
            self.folder = Path(self.out)

    def names(self) -> list[str]:
        """The files directly in the destination and in its plots/ (paths relative to it); deeper
        folders are someone else's and are never listed, so never overwritten."""
        if self.remote:
            return self.uploader.existing() + self.uploader.existing("plots/")
        if not self.folder.exists():
            return []
        files = [p for p in self.folder.iterdir() if p.is_file()]
        if (self.folder / "plots").is_dir():
            files += [p for p in (self.folder / "plots").iterdir() if p.is_file()]
        return [p.relative_to(self.folder).as_posix() for p in files]

    def read(self, name: str) -> bytes | None:
        return read_bytes(self.uploader.url(name) if self.remote else str(self.folder / name))

    def remove(self, names: list[str]) -> None:
        """Delete these files, the manifest first and on its own (a reader never sees a manifest
        without its shards)."""
        first = [n for n in names if n == "manifest.json"]
        rest = [n for n in names if n != "manifest.json"]
        for group in (first, rest):
            if self.remote:
                self.uploader.delete(group)
            else:
                for name in group:
                    (self.folder / name).unlink(missing_ok=True)

    def prepare(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        return self.folder

    def publish(self, path: Path) -> None:
        """A shard is complete: upload it (remote) or leave it where it is (local)."""
        if self.remote:
            self.uploader.submit(path, Path(path).relative_to(self.folder).as_posix())

    def finish(self, last: list[Path] = ()) -> None:
        """Wait for the uploads, then publish `last` in order."""
        if not self.remote:
            return
        try:
            self.uploader.finish()
            for path in last:
                self.uploader.put_now(path, Path(path).relative_to(self.folder).as_posix())
        finally:
            self.close()

    def close(self) -> None:
        """After a failure: cancel the uploads not started, wait for those running, drop the staging folder."""
        if self.remote:
            import shutil

            self.uploader.pool.shutdown(wait=True, cancel_futures=True)
            shutil.rmtree(self.folder, ignore_errors=True)
