"""Bad input and faults around `bmb-stream simulate` and `bmb-stream shards`: recipes asking for more
than the data holds, `out=` a file, a full disk, Ctrl-C and a killed process, an upload cut before its
manifest. Each ends with one line and exit code 2 (130 for Ctrl-C), never a partial output folder,
never an obstacle to the retry, and an earlier output intact until the new one is complete."""

import gc
import json
import os
import platform
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from bmb_stream.cli import main
from bmb_stream.errors import WriteFailed
from tests.helpers import error_line, wait_for
from tests.test_sources import write_idx

ROOT = Path(__file__).resolve().parents[1]
TRAIN_PER_CLASS, TEST_PER_CLASS = 60, 4


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    """A Fashion-MNIST-format dataset of 60 training and 4 test images per class (noise: PNGs of ~3 KB)."""
    root = tmp_path_factory.mktemp("fmnist")
    rng = np.random.default_rng(0)
    for prefix, per_class in (("train", TRAIN_PER_CLASS), ("t10k", TEST_PER_CLASS)):
        labels = rng.permutation(np.repeat(np.arange(10), per_class))
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (len(labels), 28, 28)))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def simulate_args(root, out, *extra):
    """A stream of 4 shards of 20 images; a seed set of 10 down to 2 images per class (46 in all)."""
    return ["simulate", "fmnist_lt_stationary", f"out={out}", f"root={root}", "dataset_overrides.n1=10",
            "dataset_overrides.m1=0", "dataset_overrides.gamma_l=5", "shards=4", "samples_per_shard=20",
            "prior.gamma=5", "progress=false", *extra]


def shards_args(root, out, *extra):
    return ["shards", "dataset=fashion_mnist_lt", f"dataset.root={root}", "dataset.n1=10", "dataset.m1=20",
            "dataset.gamma_l=5", "dataset.gamma_u=5", f"out={out}", "max_samples=20", "progress=false", *extra]


COMMANDS = {"simulate": simulate_args, "shards": shards_args}


def snapshot(folder: Path) -> dict:
    """Every file and folder under `folder`, hidden ones too, with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


def complete(out: Path) -> dict:
    """The manifest of a complete output in `out`: every file it lists is there, nothing hidden beside."""
    manifest = json.loads((out / "manifest.json").read_text())
    files = [e["file"] for e in manifest.get("shards", [])]
    for key in ("labeled_set", "unlabeled_set", "test_set"):
        files += manifest.get(key, {}).get("files", [])
    assert files and all((out / f).is_file() for f in files)
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    return manifest


# --- recipes asking for more than the data holds -------------------------------------------------------

@pytest.mark.parametrize("extra, says", [
    # 600 training images less a seed set of 46: 554 for the stream
    (["samples_per_shard=1000"], "samples_per_shard=1000: more than the 554 images fashion_mnist_lt has"),
    (["samples_per_shard=1000", "prior.schedule=natural"], "samples_per_shard=1000: more than the 554 images"),
    (["samples_per_shard=1000", "on_exhausted=reuse"], "samples_per_shard=1000: more than the 554 images"),
    # gamma 100: about a third of a shard is class 0, which has 50 images for the stream
    (["samples_per_shard=300", "prior.gamma=100"], "samples_per_shard=300: the first shard draws"),
    (["samples_per_shard=1000000000000"], "a stream holds at most 100,000,000; lower shards= or samples_per_shard="),
    (["shards=1000000000000"], "shards=1000000000000: at most 100,000; use fewer, larger shards"),
    (["shards=1000000", "on_exhausted=reuse"], "shards=1000000: at most 100,000"),
])
def test_a_stream_larger_than_the_data_is_one_line_before_writing(fmnist, tmp_path, capsys, extra, says):
    out = tmp_path / "stream"
    assert main(simulate_args(fmnist, out, *extra)) == 2
    line = error_line(capsys)
    assert line.startswith("bmb-stream simulate: error: ") and says in line
    assert list(tmp_path.iterdir()) == []  # no output folder, no staging folder


def test_a_stream_that_runs_out_of_images_later_stops_early_and_says_so(fmnist, tmp_path, capsys):
    # natural: every image once; 554 images make 11 shards of 50 and one of 4, not the 20 shards asked
    assert main(simulate_args(fmnist, tmp_path / "s", "prior.schedule=natural", "shards=20",
                              "samples_per_shard=50")) == 0
    out = capsys.readouterr().out
    assert "12 stream shards (554 images" in out and "stopped early" in out
    manifest = complete(tmp_path / "s")
    assert len(manifest["shards"]) == 12 and manifest["stopped_early"]["before_shard"] == 12


# --- out= that is not a folder ---------------------------------------------------------------------------

@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("below", ["", "/sub", "/sub/deeper"])
def test_out_naming_a_file_is_one_line_and_the_file_is_kept(fmnist, tmp_path, capsys, command, below):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(COMMANDS[command](fmnist, f"{tmp_path / 'notes.txt'}{below}")) == 2
    line = error_line(capsys)
    assert f"{tmp_path / 'notes.txt'} is a file, not a folder; choose another out=" in line
    assert snapshot(tmp_path) == {"notes.txt": b"mine"}


# --- a failure while writing: the earlier output stays whole, the retry is accepted ----------------------

@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("fault, code", [("ctrl-c", 130), ("full disk", 2)])
def test_a_failed_overwrite_keeps_the_earlier_output_whole(fmnist, tmp_path, capsys, monkeypatch, command, fault,
                                                            code):
    out = tmp_path / "out"
    assert main(COMMANDS[command](fmnist, out)) == 0
    (out / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    module = sys.modules["bmb_stream.simulation.simulate" if command == "simulate" else "bmb_stream.shards.export"]
    write_set = module.write_set

    def failing(folder, prefix, *args, **kwargs):  # the test set, the last shards written
        if prefix == "test":
            if fault == "ctrl-c":
                raise KeyboardInterrupt
            raise WriteFailed(folder / "test-000000.tar", "no space left on the device")
        return write_set(folder, prefix, *args, **kwargs)

    monkeypatch.setattr(module, "write_set", failing)
    capsys.readouterr()
    assert main(COMMANDS[command](fmnist, out, "seed=1", "overwrite=true")) == code
    line = error_line(capsys, code)
    if fault == "full disk":
        assert line == (f"bmb-stream {command}: error: could not write {out / 'test-000000.tar'}: no space left on "
                        f"the device ({out} is as it was): free some space or choose another out=, then run it again")
    assert snapshot(tmp_path) == before


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs: room for the small outputs below, not for the usual ones (mounting needs root, as CI is)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {mounted.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


SMALLER = {"simulate": ["shards=1", "samples_per_shard=5", "test_per_class=1"],
           "shards": ["dataset.n1=2", "dataset.m1=2"]}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_full_disk_leaves_no_partial_output_and_the_retry_runs(fmnist, small_disk, capsys, command):
    out = small_disk / "out"
    assert main(COMMANDS[command](fmnist, out)) == 2  # about 1 MB: does not fit
    line = error_line(capsys)
    assert line.startswith(f"bmb-stream {command}: error: could not write {out}/") and "no space left" in line
    assert list(small_disk.iterdir()) == []
    assert main(COMMANDS[command](fmnist, out, *SMALLER[command])) == 0  # the retry that fits is not refused
    complete(out)


def test_an_output_left_incomplete_in_a_folder_is_replaced_by_the_retry(fmnist, tmp_path, monkeypatch, capsys):
    out = tmp_path / "stream"
    assert main(simulate_args(fmnist, out)) == 0
    (out / "notes.txt").write_text("mine")
    replace = os.replace

    def cut_before_the_manifest(src, dst):  # Ctrl-C while the new files move in
        if Path(dst) == out / "manifest.json":
            raise KeyboardInterrupt
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", cut_before_the_manifest)
    assert main(simulate_args(fmnist, out, "seed=1", "overwrite=true")) == 130
    monkeypatch.setattr(os, "replace", replace)
    assert not (out / "manifest.json").exists()
    assert main(simulate_args(fmnist, out, "seed=1")) == 0  # ours, incomplete: no overwrite=true needed
    assert complete(out)["recipe"]["seed"] == 1 and (out / "notes.txt").read_text() == "mine"


def test_an_upload_cut_before_its_manifest_is_replaced_by_the_retry(fmnist, s3_env, monkeypatch, capsys):
    from bmb_stream.storage.upload import Uploader

    put_now = Uploader.put_now

    def cut_before_the_manifest(self, path, name=None, remove=True):
        if (name or Path(path).name) == "manifest.json":
            raise KeyboardInterrupt
        return put_now(self, path, name, remove)

    monkeypatch.setattr(Uploader, "put_now", cut_before_the_manifest)
    assert main(simulate_args(fmnist, "s3://shards/cut")) == 130
    stored = s3_env.root / "shards" / "cut"
    assert (stored / "stream-000003.tar").exists() and not (stored / "manifest.json").exists()
    monkeypatch.setattr(Uploader, "put_now", put_now)
    assert main(simulate_args(fmnist, "s3://shards/cut")) == 0  # ours, incomplete: no overwrite=true needed
    assert (stored / "manifest.json").exists() and not list(stored.glob(".*"))
    capsys.readouterr()
    assert main(simulate_args(fmnist, "s3://shards/cut", "seed=1")) == 2  # a complete stream is still kept
    assert "already holds a different stream" in error_line(capsys)


# --- Ctrl-C and a killed process ---------------------------------------------------------------------------

def long_stream(root, out):
    """80,000 images: many seconds of writing, interrupted once its first shard is written."""
    return simulate_args(root, out, "shards=400", "samples_per_shard=200", "on_exhausted=reuse")


def first_shard_in(folder: Path):
    def first_shard_written() -> bool:
        try:
            return any(folder.rglob("stream-000000.tar"))
        except OSError:  # a folder renamed or removed while it is walked: not yet
            return False
    return first_shard_written


def test_ctrl_c_while_writing_leaves_nothing_behind(fmnist, tmp_path, capsys):
    out = tmp_path / "stream"
    done = threading.Event()

    def interrupt():
        wait_for(first_shard_in(tmp_path), lambda: not done.is_set())
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=interrupt, daemon=True)
    # Python's own Ctrl-C, whatever an earlier test in this process left installed: a stream run's reading
    # generator left suspended is finalized by the garbage collector, and then puts back the SIGINT handler
    # of its (ended) run, which only notes a stop
    gc.collect()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    thread.start()
    try:
        assert main(long_stream(fmnist, out)) == 130
    finally:
        done.set()
        thread.join()
        signal.signal(signal.SIGINT, previous)
    assert error_line(capsys, 130) == "bmb-stream: interrupted"
    assert list(tmp_path.iterdir()) == []


def test_a_killed_simulate_leaves_nothing_in_the_way_of_the_retry(fmnist, tmp_path):
    out = tmp_path / "stream"
    proc = subprocess.Popen([sys.executable, "-m", "bmb_stream", *long_stream(fmnist, out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(first_shard_in(tmp_path), proc)
    proc.kill()
    proc.wait(timeout=60)
    assert [p.name for p in tmp_path.iterdir()] == [f".stream.partial-{platform.node()}-{proc.pid}"]
    live = tmp_path / f".stream.partial-{platform.node()}-{os.getppid()}"  # another writer at work: left alone
    live.mkdir()
    assert main(simulate_args(fmnist, out)) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "stream"]
