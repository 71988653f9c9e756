"""What every benchmark prints on top: the command that gave its numbers and the machine."""

from __future__ import annotations

import os
import platform
import shlex
import sys

import torch


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {gpu}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")


def print_header() -> None:
    print(" ".join(["python"] + [shlex.quote(a) for a in sys.argv]))
    print(f"machine: {machine()}")
