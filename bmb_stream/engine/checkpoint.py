"""Atomic checkpoints: written to a temporary file, flushed, then renamed over the old one, so a
crash or a full disk never leaves a half-written `last.pt`. Loaded with weights_only=True; a file that
is not a checkpoint of this layout is refused in one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from bmb_stream.errors import CheckpointError, WriteFailed
from bmb_stream.storage.atomic import atomic_write

# the layout of a run's checkpoint: {"format", "learner", "history", "config", what the mode adds}; a
# checkpoint without "format" is of layout 1 (the key came after it)
CHECKPOINT_FORMAT = 1


def save_atomic(state: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_write(path) as f:
            torch.save(state, f)
    except WriteFailed as e:
        raise CheckpointError(f"could not write checkpoint {path}: {e.reason}; the previous "
                              f"checkpoint is intact (free some space, then resume=true)") from None


def copy_atomic(source: str | Path, path: str | Path) -> None:
    """A copy of the checkpoint `source` at `path`, whole or not at all."""
    try:
        with open(source, "rb") as src, atomic_write(path) as f:
            shutil.copyfileobj(src, f, 2**24)
    except (WriteFailed, OSError) as e:
        reason = e.reason if isinstance(e, WriteFailed) else e.strerror or str(e)
        raise CheckpointError(f"could not copy checkpoint {source} to {path}: {reason}; the run's own "
                              f"checkpoint is intact (free some space, then resume=true)") from None


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    size = path.stat().st_size if path.is_file() else None
    if size == 0:
        raise CheckpointError(f"checkpoint {path} cannot be loaded: the file is empty (0 bytes)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which one, and why in a few words
        reason = " ".join(str(e).split())
        if "weights_only" in reason or "Unsupported global" in reason:
            reason = "it holds Python objects beyond tensors and plain values, which are not loaded (untrusted)"
        elif not any(c.isalpha() for c in reason):  # the unpickler's bare numbers say nothing to a reader
            reason = "not a PyTorch checkpoint, or a damaged one"
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {reason[:300]}") from e


def check_layout(state, path: str | Path) -> dict:
    """`state` if it is a run checkpoint of this layout; else a CheckpointError that says so."""
    fmt = state.get("format", 1) if isinstance(state, dict) else None
    if not isinstance(state, dict) or not {"learner", "history"} <= state.keys() or fmt != CHECKPOINT_FORMAT:
        what = f"layout {fmt}" if isinstance(fmt, int) else "another layout"
        raise CheckpointError(f"checkpoint {path} was written by another version of bmb-stream ({what}; this "
                              f"version reads layout {CHECKPOINT_FORMAT}) or is not a bmb-stream checkpoint: it "
                              f"cannot be resumed here; start another run.dir, or resume with the version that wrote it")
    return state
