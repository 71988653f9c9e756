"""Atomic checkpoints: written to a temporary file, flushed, then renamed over the old one, so a
crash or a full disk never leaves a half-written `last.pt`. Loaded with weights_only=True."""

from __future__ import annotations

from pathlib import Path

import torch

from bmb_stream.atomic import WriteFailed, atomic_write


class CheckpointError(RuntimeError):
    """A checkpoint (or another file of the run directory) cannot be written or read; the message names it."""


def save_atomic(state: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_write(path) as f:
            torch.save(state, f)
    except WriteFailed as e:
        raise CheckpointError(f"could not write checkpoint {path}: {e.reason}; the previous "
                              f"checkpoint is intact (free some space, then resume=true)") from None


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which one
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {e}") from e
