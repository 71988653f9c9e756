"""What both training loops need from the machine: the device, endless shuffled batches, and a
clean stop on SIGINT/SIGTERM."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, RandomSampler


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but no CUDA device is available; use device=cpu or device=auto")
    return torch.device(name)


def endless_batches(dataset, batch_size: int, seed: int, num_workers: int) -> Iterator:
    """Shuffled batches forever: each pass is a new permutation from one seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(dataset, num_samples=max(len(dataset), batch_size), generator=generator)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, num_workers=num_workers,
                        persistent_workers=num_workers > 0, generator=generator)
    while True:
        yield from loader


class StopFlag:
    """SIGINT/SIGTERM finish the current step, then the loop checkpoints and exits cleanly."""

    def __init__(self):
        self.raised = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.raised = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
