"""What any test may share: waiting for a running process to get somewhere (`wait_for`), and the
command line's error contract (`error_line`, `cli_error`). The stream tests' settings, small stream
and hand-written shards are in stream_helpers.py."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Callable

POLL_S = 0.02  # a Ctrl-C sent once the first shard is written must arrive while the writing goes on
WARNING = "bmb-stream: warning:"  # the start of every warning line


def wait_for(what: Path | Callable[[], bool], running: subprocess.Popen | Callable[[], bool], *,
             text: str | None = None, timeout: float = 300) -> None:
    """Poll until `what` holds: a path exists (with `text`: a file, a log, that holds it), or a function
    returns true. The test fails if `running` (a process, or a function that says whether the work
    goes on) ends first, with what the process printed, or after `timeout` seconds."""
    if isinstance(what, Path):
        path = what
        shown = f"{text!r} in {path}" if text is not None else str(path)

        def ready() -> bool:
            if text is None:
                return path.exists()
            return path.is_file() and text in path.read_text(errors="replace")
    else:
        path, shown, ready = None, getattr(what, "__name__", "the condition"), what
    deadline = time.monotonic() + timeout
    while not ready():
        if isinstance(running, subprocess.Popen):
            assert running.poll() is None, (f"the process ended (exit code {running.returncode}) before "
                                            f"{shown}:\n{printed(running, path if text is not None else None)}")
        else:
            assert running(), f"the work ended before {shown}"
        assert time.monotonic() < deadline, f"{shown} not within {timeout} s"
        time.sleep(POLL_S)


def printed(proc: subprocess.Popen, log: Path | None = None) -> str:
    """The end of what an ended process printed: its piped output, else its log."""
    if proc.stdout is not None:
        return proc.communicate()[0][-3000:]
    return log.read_text(errors="replace")[-3000:] if log is not None and log.is_file() else ""


def error_line(captured, code: int = 2, ignore: tuple[str, ...] = ()) -> str:
    """The error contract of a command that ended with exit `code`, checked on what it printed (pytest's
    capsys, or what its readouterr() gave): no traceback on stdout or stderr, and one line on stderr,
    `bmb-stream[ SUBCOMMAND]: error...: ...` (`bmb-stream: interrupted` for Ctrl-C, exit code 130; exit
    code 75, storage unavailable after a checkpoint, follows it with how to resume). Blank lines and
    lines that start with one of `ignore` (warnings the test does not look at) are left out. Returns
    the line."""
    out, err = captured.readouterr() if hasattr(captured, "readouterr") else captured
    assert "Traceback" not in out + err, out + err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(ignore)]
    assert lines, err
    if code == 130:
        assert lines[0] == "bmb-stream: interrupted", err
    else:
        assert re.match(r"bmb-stream( [a-z]+)?: error\b", lines[0]), err
    if code == 75:
        assert any(line.startswith("resume with: ") for line in lines[1:]), err
    else:
        assert len(lines) == 1, err
    return lines[0]


def cli_error(args, capsys, code: int = 2, ignore: tuple[str, ...] = ()) -> str:
    """Run the command line in this process with `args`, expect exit `code` and the error contract
    (`error_line`); the error line."""
    from bmb_stream.cli import main

    assert main([str(a) for a in args]) == code
    return error_line(capsys, code, ignore)
