"""Retry policy and error classification for object storage (S3 and http(s)).

A transient error (connection reset, timeout, 5xx, throttling) is retried with exponential backoff
within a bounded budget. Permanent errors (no such bucket or key, refused credentials) raise
`ShardError` at once, naming the URL; a transient fault that outlasts the budget raises
`StorageUnavailable`, on which a run stops with a checkpoint. Messages name the cause and the
server's code, never the request: credentials appear in no message.
"""

from __future__ import annotations

import http.client
import logging
import random
import time
import urllib.error
from dataclasses import dataclass
from typing import Callable

from bmb_stream.config_schema import Retry
from bmb_stream.errors import ShardError, StorageUnavailable

log = logging.getLogger("bmb_stream.storage")

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


class Stalled(TimeoutError):
    """A read that trickles, below the lowest speed for a whole read timeout: a timeout like any other
    (retried, resumed at its byte), though each wait for bytes ends within the socket's own timeout.
    Its reader counts the budget: each retry gets a few bytes, which would end a retry episode."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: waits of backoff_s, 2 backoff_s, ... capped at max_backoff_s (with jitter),
    until `budget_s` seconds have passed since the first failure of an episode."""

    budget_s: float = Retry.budget_s  # the defaults are storage.retry's
    backoff_s: float = Retry.backoff_s
    max_backoff_s: float = Retry.max_backoff_s

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


def _error_code(exc: BaseException) -> tuple[str, int]:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def _optional(module: str):
    """A module of the s3 extra (boto3, botocore, urllib3), or None where it is not installed: then no
    error comes from it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def _unwrap(exc: BaseException) -> BaseException:
    """boto3's transfer manager wraps the failure of an upload part; judge the original."""
    boto = _optional("boto3.exceptions")
    if boto is not None and isinstance(exc, boto.S3UploadFailedError):
        return exc.__cause__ or exc.__context__ or exc
    return exc


def is_transient(exc: BaseException) -> bool:
    """Connection trouble, timeouts, truncated bodies, 5xx and throttling: worth another try.
    Everything else (a missing object, refused credentials, a TLS certificate error) is not."""
    be, ue = _optional("botocore.exceptions"), _optional("urllib3.exceptions")
    exc = _unwrap(exc)
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code in (408, 429)
    if isinstance(exc, urllib.error.URLError):  # no response at all: refused, reset, timed out (not DNS, not TLS)
        return isinstance(exc.reason, (ConnectionError, TimeoutError))
    if be is not None and isinstance(exc, be.ClientError):
        code, status = _error_code(exc)
        return code in TRANSIENT_CODES or status >= 500 or status == 429
    if (be is not None and isinstance(exc, be.SSLError)) or (ue is not None and isinstance(exc, ue.SSLError)):
        return False
    transient = (ConnectionError, TimeoutError, http.client.IncompleteRead)
    if be is not None:
        transient += (be.ConnectionError, be.HTTPClientError, be.IncompleteReadError, be.ResponseStreamingError)
    if ue is not None:
        transient += (ue.ProtocolError, ue.TimeoutError, ue.NewConnectionError)
    return isinstance(exc, transient)


def is_missing(exc: BaseException) -> bool:
    """No such key or URL (a missing bucket or host is not "missing": it is an error everywhere)."""
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code in (404, 410)
    be = _optional("botocore.exceptions")
    return be is not None and isinstance(exc, be.ClientError) and _error_code(exc)[0] in ("NoSuchKey", "404", "NotFound")


def describe(exc: BaseException) -> str:
    """The cause in words, with the server's code; never the request (it may carry credentials)."""
    be = _optional("botocore.exceptions")
    exc = _unwrap(exc)
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the server up?)"
    if isinstance(exc, Stalled):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "timed out"
    if be is None:
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, (be.NoCredentialsError, be.PartialCredentialsError)):  # their text names variables, no values
        return f"{NO_CREDENTIALS} ({exc})"
    if isinstance(exc, be.ClientError):
        code, status = _error_code(exc)
        cause = PERMANENT_CAUSES.get(code) or PERMANENT_CAUSES.get(str(status))
        if cause is None:
            cause = "server error or throttling" if status >= 500 or status == 429 else "request refused"
        return f"{cause} ({code or status})"
    return f"{type(exc).__name__}: {exc}"


def unreachable(url: str, policy: RetryPolicy, exc: BaseException) -> StorageUnavailable:
    """The fault `exc` has outlasted the retry budget."""
    return StorageUnavailable(f"{url}: storage unreachable for {policy.budget_s:g} s (storage.retry.budget_s): "
                              f"{describe(exc)}")


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
                raise unreachable(url, policy, exc) from None
            log.warning("%s: %s; retrying in %.1f s", url, describe(exc), wait)
            time.sleep(wait)
