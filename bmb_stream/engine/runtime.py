"""What both training loops need from the machine: the device, endless shuffled batches, and a
clean stop on SIGINT/SIGTERM."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, RandomSampler

from bmb_stream.config import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda: no CUDA device is available here; use device=cpu or device=auto")
    return torch.device(name)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader workers leave SIGINT/SIGTERM to the main process: `timeout`, Slurm, systemd and Ctrl-C
    signal the whole process group, and a worker killed by them would end the run before its checkpoint."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def endless_batches(dataset, batch_size: int, seed: int, num_workers: int) -> Iterator:
    """Shuffled batches forever: each pass is a new permutation from one seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(dataset, num_samples=max(len(dataset), batch_size), generator=generator)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, num_workers=num_workers,
                        persistent_workers=num_workers > 0, generator=generator,
                        worker_init_fn=ignore_stop_signals)
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
