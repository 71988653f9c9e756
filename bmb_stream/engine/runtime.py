"""What both training loops need from the machine: the device, endless shuffled batches, and a
clean stop on SIGINT/SIGTERM."""

from __future__ import annotations

import itertools
import signal
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, RandomSampler, Sampler

from bmb_stream.config import ConfigError
from bmb_stream.engine import distributed


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda: no CUDA device is available here; use device=cpu or device=auto")
    return torch.device(name)


def ignore_interrupts(worker_id: int = 0) -> None:
    """DataLoader workers leave Ctrl-C (sent to the whole foreground process group) to the main process,
    which finishes its step and checkpoints. SIGTERM keeps its default: the DataLoader stops its workers
    with it; a worker killed by a SIGTERM sent to the group is expected by the loops (`stopping`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def endless_batches(dataset, batch_size: int, seed: int, num_workers: int, pin_memory: bool = False) -> Iterator:
    """Shuffled batches forever: each pass is a new permutation from one seeded generator. In a
    data-parallel run every rank draws the same permutations and takes every world-th index of them
    (its own share, as DistributedSampler does, endlessly), and its workers' seeds take the rank.
    `pin_memory`: batches in page-locked memory (for a non-blocking copy to a GPU)."""
    world = distributed.world_size()
    order = torch.Generator().manual_seed(seed)  # the same on every rank
    sampler = RandomSampler(dataset, num_samples=max(len(dataset), world * batch_size), generator=order)
    own = order  # one process: one generator for the order and the workers' seeds, as always
    if world > 1:
        sampler = RankShare(sampler, distributed.rank(), world)
        own = torch.Generator().manual_seed(distributed.rank_seed(seed))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, num_workers=num_workers,
                        persistent_workers=num_workers > 0, generator=own, worker_init_fn=ignore_interrupts,
                        pin_memory=pin_memory)
    while True:
        yield from loader


class RankShare(Sampler):
    """Rank r's share of `sampler`'s indices: every world-th one, starting at r."""

    def __init__(self, sampler: Sampler, rank: int, world: int):
        self.sampler, self.rank, self.world = sampler, rank, world

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.rank, None, self.world)

    def __len__(self) -> int:
        return len(range(self.rank, len(self.sampler), self.world))


def _ignore(signum, frame) -> None:
    pass


# what a DataLoader raises in the main process when its workers are killed (see StopFlag.stopping)
WORKER_DEATH = (RuntimeError, EOFError, ConnectionError)


class StopFlag:
    """SIGINT/SIGTERM finish the current step, then the loop checkpoints and exits cleanly."""

    def __init__(self):
        self.raised = None  # the signal this process received
        self.agreed = False  # the run stops: a signal reached this rank or, in a data-parallel run, any rank
        self._old = {}

    def should_stop(self) -> bool:
        """Whether to stop now. Every rank asks at the same point of each step, and they agree, so that
        all of them stop after the same step (one tiny all-reduce; none with one process)."""
        if not self.agreed:
            self.agreed = distributed.any_rank(self.raised is not None)
        return self.agreed

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.raised = signal.Signals(signum).name
        # PyTorch's SIGCHLD handler raises in the main process, wherever it is, when a DataLoader worker
        # dies; after a stop signal to the process group they die by design, and the checkpoint must
        # still be written. Their exit is then collected when the loaders shut down.
        if signal.SIGCHLD not in self._old:
            self._old[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, _ignore)  # not SIG_DFL: one may be pending

    def stopping(self, error: BaseException) -> bool:
        """Whether `error` is what a stop signal sent to the whole process group does to a DataLoader
        (its workers killed: "DataLoader worker ... exited", or a batch whose hand-over from a dying
        worker broke off): then the loop checkpoints and stops instead of failing."""
        if self.raised is None:
            return False
        return isinstance(error, (EOFError, ConnectionError)) or (
            isinstance(error, RuntimeError) and "DataLoader worker" in str(error))

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            if sig != signal.SIGCHLD:  # after a stop, loaders still shutting down must not raise either
                signal.signal(sig, handler)
