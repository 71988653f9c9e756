"""Writing to object storage: written shards uploaded to `s3://bucket/prefix/` in background
threads (multipart when large), and `ShardDestination`, which puts them in a local folder, whole once
complete, or sends them to the storage through a local staging folder, the manifest last.
"""

from __future__ import annotations

import errno
import os
import platform
import shutil
from pathlib import Path

from bmb_stream.errors import ShardError, WriteFailed
from bmb_stream.storage.atomic import write_failure
from bmb_stream.storage.object_store import S3Settings, list_keys, read_bytes, require_boto3, s3_opener, split_s3_url
from bmb_stream.storage.retry import with_retries


class Uploader:
    """Uploads files written locally to `s3://bucket/prefix/`, in background threads, multipart for
    large files; `finish()` waits and raises the first failure."""

    def __init__(self, prefix_url: str, settings: S3Settings | None = None, threads: int = 8):
        from concurrent.futures import ThreadPoolExecutor

        require_boto3()
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

    def put_bytes(self, name: str, data: bytes) -> None:
        with_retries(lambda: self.client.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=data),
                     self.url(name), self.settings.retry)

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


INCOMPLETE = ".incomplete"  # beside an output being put in place: what is there is unfinished, ours to replace


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class ShardDestination:
    """Where written shards go: a local folder, or `s3://bucket/prefix` through a local staging folder
    whose files are uploaded as soon as each is complete (in background threads, multipart when
    large) and then deleted.

    A local output is written whole into a hidden staging folder, `.NAME.partial-HOST-PID` beside the
    folder (inside it when it exists: it may be a mount point), and put in place only when complete:
    a folder that did not exist appears at once by a rename; into an existing one the files are moved,
    the manifest last. A failure, Ctrl-C or a crash leaves the folder as it was; the staging folders
    of processes that died are removed by the next writer. Objects cannot be swapped at once: there
    the earlier output goes first and the manifest last, with an `.incomplete` marker meanwhile, so
    an interrupted upload is known for one of ours and a retry replaces it."""

    def __init__(self, out: str | Path, settings: S3Settings | None = None):
        self.out = str(out).rstrip("/") or str(out)
        self.remote = self.out.startswith("s3://")
        self.replace: list[str] = []
        self.existed = True  # whether the local folder existed before this output
        if self.remote:
            import tempfile

            self.uploader = Uploader(self.out, settings)
            self.folder = Path(tempfile.mkdtemp(prefix="bmb-stream-upload-"))
        else:
            self.uploader = None
            self.final = Path(self.out)
            self.folder = None  # the staging folder, made by prepare()

    def _check_folder(self) -> None:
        for path in (self.final, *self.final.parents):
            if path.exists():
                if not path.is_dir():
                    raise ShardError(f"out={self.out}: {path} is a file, not a folder; choose another out=")
                return

    def names(self) -> list[str]:
        """The files directly in the destination and in its plots/ (paths relative to it); deeper
        folders are someone else's and are never listed, so never overwritten."""
        if self.remote:
            return self.uploader.existing() + self.uploader.existing("plots/")
        self._check_folder()
        if not self.final.exists():
            return []
        files = [p for p in self.final.iterdir() if p.is_file()]
        if (self.final / "plots").is_dir():
            files += [p for p in (self.final / "plots").iterdir() if p.is_file()]
        return [p.relative_to(self.final).as_posix() for p in files]

    def read(self, name: str) -> bytes | None:
        return read_bytes(self.uploader.url(name) if self.remote else str(self.final / name))

    def prepare(self, replace: list[str] = ()) -> Path:
        """The folder to write the new output into; `replace`: the earlier output it replaces, deleted
        once the new one is complete (from the storage: now, the manifest first)."""
        self.replace = list(replace)
        if self.remote:
            self.uploader.put_bytes(INCOMPLETE, b"an upload of bmb-stream in progress, or interrupted\n")
            self._delete([n for n in self.replace if n != INCOMPLETE])
            return self.folder
        self._check_folder()
        self.existed = inside = self.final.is_dir()  # an existing folder may be a mount point: no rename across
        prefix = f".{self.final.resolve().name}.partial-{platform.node()}-"
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            for stale in [*self.final.parent.glob(prefix + "*"), *(self.final.glob(prefix + "*") if inside else [])]:
                pid = stale.name[len(prefix):]  # of a process of this host that died, or of our own PID
                if pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
                    shutil.rmtree(stale, ignore_errors=True)
            self.folder = (self.final if inside else self.final.parent) / f"{prefix}{os.getpid()}"
            self.folder.mkdir()
        except OSError as e:
            raise WriteFailed(self.final, write_failure(self.final, e)) from None
        return self.folder

    def publish(self, path: Path) -> None:
        """A shard is complete: upload it (remote) or leave it where it is (local)."""
        if self.remote:
            self.uploader.submit(path, Path(path).relative_to(self.folder).as_posix())

    def finish(self, last: list[Path] = ()) -> None:
        """The output is complete: put it in place (remote: wait for the uploads), then `last` in order."""
        try:
            if self.remote:
                self.uploader.finish()
                for path in last:
                    self.uploader.put_now(path, Path(path).relative_to(self.folder).as_posix())
                self._delete([INCOMPLETE])
            else:
                self._install([Path(p).relative_to(self.folder).as_posix() for p in last])
        finally:
            self.close()

    def _install(self, last: list[str]) -> None:
        try:
            if self.folder.parent != self.final:
                try:
                    os.rename(self.folder, self.final)  # the folder did not exist: it appears whole, at once
                    self.folder = None
                    return
                except OSError as e:
                    if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):  # else made meanwhile: moved in as below
                        raise
            (self.final / INCOMPLETE).touch()
            self._delete([n for n in self.replace if n != INCOMPLETE])
            new = sorted(p.relative_to(self.folder).as_posix() for p in self.folder.rglob("*") if p.is_file())
            for name in [n for n in new if n not in last] + last:
                (self.final / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.folder / name, self.final / name)
            (self.final / INCOMPLETE).unlink()
        except OSError as e:
            raise WriteFailed(self.final, write_failure(self.final, e)) from None

    def _delete(self, names: list[str]) -> None:
        """Delete these files, the manifest first and on its own (a reader never sees a manifest
        without its shards)."""
        first = [n for n in names if n == "manifest.json"]
        rest = [n for n in names if n != "manifest.json"]
        for group in (first, rest):
            if self.remote:
                self.uploader.delete(group)
            else:
                for name in group:
                    (self.final / name).unlink(missing_ok=True)

    def failed(self, error: WriteFailed) -> WriteFailed:
        """A write into the staging folder failed: the same error, naming the file as the output's and
        saying what became of the output."""
        try:
            name = Path(error.path).relative_to(self.folder).as_posix()
        except (TypeError, ValueError):
            return error
        where = self.uploader.url(name) if self.remote else self.final / name
        fix = "free some space or choose another out=" if "no space" in error.reason else "choose another out="
        kept = ("the upload stopped; a retry replaces it" if self.remote else
                f"{self.out} is as it was" if self.existed else "nothing was kept")
        return WriteFailed(where, f"{error.reason} ({kept}): {fix}, then run it again")

    def close(self) -> None:
        """Cancel the uploads not started, wait for those running, drop the staging folder."""
        if self.remote:
            self.uploader.pool.shutdown(wait=True, cancel_futures=True)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
