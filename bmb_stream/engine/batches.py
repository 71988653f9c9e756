"""Where the training batches come from: the labeled set's endless shuffled batches (both modes) and an
experience's unlabeled batches read from its shards (stream mode), each seeded so that a resumed run
reads what an uninterrupted one does; and the stream's length in steps."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, RandomSampler, Sampler

from bmb_stream import distributed
from bmb_stream.distributed import rank_share
from bmb_stream.engine.stops import ignore_interrupts, interruptible_wait
from bmb_stream.engine.stream_source import StreamSource
from bmb_stream.errors import ConfigError
from bmb_stream.shards.reading import ShardErrorHandler, fail_on_error, make_unlabeled_batches


def derived_seed(seed: int, experience: int, purpose: int) -> int:
    """A seed for one purpose in one experience, independent of everything that came before."""
    return int(np.random.SeedSequence([seed, experience, purpose]).generate_state(1)[0])


def per_rank_batches(train) -> tuple[int, int]:
    """Each rank's labeled and unlabeled batch: `train.batch_*` themselves, or with train.global_batch
    their share of the run's batch (which the world size must divide)."""
    world = distributed.world_size()
    if not train.global_batch:
        return train.batch_labeled, train.batch_unlabeled
    for key in ("batch_labeled", "batch_unlabeled"):
        if getattr(train, key) % world:
            raise ConfigError(f"train.{key}={getattr(train, key)} is the whole run's batch (train.global_batch=true) "
                              f"and {world} ranks cannot share it evenly: run a number of ranks that divides it, or "
                              f"give train.global_batch=false and each rank's batch")
    return train.batch_labeled // world, train.batch_unlabeled // world


def worker_start(workers: int) -> str | None:
    """How DataLoader workers start: forked, on every Python (3.14 made forkserver Linux's default; the
    shard pipeline and its error handler are not picklable for workers that do not fork)."""
    return "fork" if workers > 0 else None


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
        sampler = RankShare(sampler)
        own = torch.Generator().manual_seed(distributed.rank_seed(seed))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, num_workers=num_workers,
                        persistent_workers=num_workers > 0, generator=own, worker_init_fn=ignore_interrupts,
                        pin_memory=pin_memory, multiprocessing_context=worker_start(num_workers))
    while True:
        yield from loader


class RankShare(Sampler):
    """This rank's share of `sampler`'s indices (distributed.rank_share)."""

    def __init__(self, sampler: Sampler):
        self.sampler = sampler

    def __iter__(self):
        return iter(rank_share(list(self.sampler)))

    def __len__(self) -> int:
        return len(rank_share(range(len(self.sampler))))


def experience_batches(shards: list[str], views, batch_size: int, workers: int, passes: int, seed: int, k: int,
                       handler: ShardErrorHandler = fail_on_error, num_classes: int | None = None,
                       pin_memory: bool = False, test_samples: dict | None = None):
    """The unlabeled batches of experience k: `passes` reads of its shards, each with its own seeds;
    each batch says its pass. A shard or sample that cannot be read goes to `handler`. A replay (a
    mid-experience resume) reads every shard again, skipped ones included: see SkippedShards.
    `pin_memory`: the images come in page-locked memory (for a non-blocking copy to a GPU)."""
    for p in range(passes):
        # the pipeline splits the shards across the ranks (every world-th) and then across the workers
        batches = make_unlabeled_batches(shards, views, batch_size, handler, num_classes=num_classes,
                                         test_samples=test_samples)
        own = torch.Generator().manual_seed(distributed.rank_seed(derived_seed(seed, k, 2 + p)))
        n = min(workers, len(rank_share(shards)))
        loader = wds.WebLoader(batches, batch_size=None, num_workers=n, worker_init_fn=ignore_interrupts, generator=own,
                               pin_memory=pin_memory, multiprocessing_context=worker_start(n))
        with interruptible_wait():
            loaded = iter(loader)
        while True:
            with interruptible_wait():
                batch = next(loaded, None)
            if batch is None:
                break
            batch["pass"] = p
            yield batch


def stream_steps(source: StreamSource, batch_size: int, workers: int, passes: int) -> int | None:
    """Training steps in the whole stream, from the manifest's sample counts (None where a shard's count
    is unknown): each DataLoader worker reads every `workers`-th shard of its rank's share and batches
    what it reads, ending on a partial batch; an experience lasts as many steps as its shortest share."""
    total = 0
    for shards in source.experiences:
        sizes = [source.size_of(url) for url in shards]
        if None in sizes:
            return None
        per_rank = []
        for r in range(distributed.world_size()):
            share = rank_share(sizes, r)
            n = max(1, min(workers, len(share)))
            per_rank.append(sum(math.ceil(sum(share[w::n]) / batch_size) for w in range(n)))
        total += passes * min(per_rank)
    return total
