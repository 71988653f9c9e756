"""The one atomic-write helper: the old file whole or the new file whole, never a part, no temporary left."""

import errno

import pytest

from bmb_stream.errors import WriteFailed
from bmb_stream.storage.atomic import atomic_write, write_text


def test_a_finished_write_replaces_the_file(tmp_path):
    path = tmp_path / "a.json"
    write_text(path, "old")
    write_text(path, "new")
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_a_full_disk_keeps_the_old_file_and_says_why(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    with pytest.raises(WriteFailed) as info:
        with atomic_write(path) as f:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert info.value.reason == "no space left on the device" and str(path) in str(info.value)
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_other_errors_pass_through_unchanged_and_leave_nothing(tmp_path):
    path = tmp_path / "a.bin"
    with pytest.raises(FileNotFoundError):  # reading a source file failed: not a failure to write `path`
        with atomic_write(path) as f:
            f.write(b"x")
            open(tmp_path / "missing.png", "rb")
    with pytest.raises(ValueError):
        with atomic_write(path) as f:
            raise ValueError("bad sample")
    assert list(tmp_path.iterdir()) == []
