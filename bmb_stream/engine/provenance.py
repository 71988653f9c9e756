"""Where a run's numbers came from: the command, the code (version, git commit and whether the checkout
had uncommitted changes), the software and the devices. Rank 0 appends one record per start (a
resumed run adds one) to the run folder's provenance.json; summary.json carries the version and commit."""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

import bmb_stream
from bmb_stream import distributed
from bmb_stream.redaction import is_credential, redact_text

PACKAGE_ROOT = Path(bmb_stream.__file__).resolve().parent.parent


def git_state(root: Path = PACKAGE_ROOT) -> dict:
    """The commit of the checkout the package runs from, and whether tracked files differ from it; None
    for both where the package is not in a git checkout (an installed wheel) or git is missing."""
    if not (root / ".git").exists():
        return {"commit": None, "dirty": None}
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        changes = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(changes.strip())}


def provenance(command: list[str] | None, device: torch.device) -> dict:
    """This start's record. `command`: the command line's arguments (None where the run was started from
    Python); credentials are left out and URLs lose their secrets, as in every file the run writes."""
    import torchvision

    cuda = torch.cuda.is_available()
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": None if command is None else
        ["bmb-stream", *(redact_text(a) for a in command if not is_credential(a))],
        "version": bmb_stream.__version__, **git_state(),
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        or platform.machine(),
        "world_size": distributed.world_size(), "host": socket.gethostname(), "platform": sys.platform,
    }
