"""Writing to object storage: written shards uploaded to `s3://bucket/prefix/` in background
threads (multipart when large), and `ShardDestination`, which puts them in a local folder or sends
them to the storage through a local staging folder, the manifest last.
"""

from __future__ import annotations

from pathlib import Path

from bmb_stream.data.errors import ShardError
from bmb_stream.data.object_store import S3Settings, list_keys, read_bytes, s3_opener, split_s3_url
from bmb_stream.data.storage_retry import with_retries


class Uploader:
    """Uploads files written locally to `s3://bucket/prefix/`, in background threads, multipart for
    large files; `finish()` waits and raises the first failure."""

    def __init__(self, prefix_url: str, settings: S3Settings | None = None, threads: int = 8):
        from concurrent.futures import ThreadPoolExecutor

        from boto3.s3.transfer import TransferConfig

        self.settings = settings or s3_opener().settings
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
