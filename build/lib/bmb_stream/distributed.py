"""Data-parallel training on PyTorch's own engine: `torchrun` starts one process per rank and sets
RANK / WORLD_SIZE / LOCAL_RANK; this module joins them into one process group (gloo on the CPU,
NCCL on GPUs) and holds the few collectives the learner needs beyond DistributedDataParallel.

Every rank keeps one identical learner state: parameters through DDP, batch-norm buffers averaged
after each step, the bank fed the candidates of every rank (all-gathered, in rank order) and drawn
with the same seeded generator, Nhat from the summed confident counts. Randomness that should differ
between ranks (augmentation, data order, workers) takes the rank into its seed through `rank_seed`.

With one process (no torchrun, or --nproc_per_node 1) nothing here communicates: each helper returns
its input, and every number is what a plain single-process run gives.
"""

from __future__ import annotations

import datetime
import os

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from bmb_stream.errors import ConfigError

# how long a collective waits for a missing rank before the process group fails (torchrun ends the
# others as soon as one rank exits; this bounds the wait where it cannot)
TIMEOUT = datetime.timedelta(minutes=10)


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def launched_ranks() -> int:
    """The number of ranks torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init(device: torch.device) -> None:
    """Join the process group torchrun set up; nothing to do with one rank."""
    if launched_ranks() == 1 or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """This rank's device: cuda:LOCAL_RANK on a multi-GPU machine."""
    if device.type == "cuda" and launched_ranks() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def rank_seed(seed: int, r: int | None = None) -> int:
    """The seed of rank r's own randomness: `seed` itself on rank 0 (so a single-process run is
    unchanged), an independent stream on every other rank."""
    r = rank() if r is None else r
    return seed if r == 0 else int(np.random.SeedSequence([seed, r]).generate_state(1)[0])


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Every rank's `t` concatenated along dim 0 in rank order, on t's device. The ranks' row counts may
    differ (a stream's last batch of a shard group is partial): the rows are padded for the gather and
    cut after it."""
    if world_size() == 1:
        return t
    if t.dtype == torch.bool:  # not every backend gathers booleans
        return gather_rows(t.to(torch.uint8)).bool()
    sizes = _gathered_sizes(len(t))
    longest = max(sizes)
    sent = t.detach().to(_comm_device())
    if len(sent) < longest:
        sent = torch.cat([sent, sent.new_zeros((longest - len(sent), *sent.shape[1:]))])
    parts = [torch.empty_like(sent) for _ in range(world_size())]
    dist.all_gather(parts, sent.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, sizes)]).to(t.device)


def gather_together(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`gather_rows` of several tensors with the same rows, in one collective: packed side by side as
    float32 columns (exact for features, booleans and integers below 2 ** 24), unpacked after, each on
    its own device (index tensors may live on the CPU beside features on the GPU)."""
    if world_size() == 1:
        return tensors
    columns = [t.reshape(len(t), -1) for t in tensors]
    gathered = gather_rows(torch.cat([c.to(_comm_device(), torch.float32) for c in columns], dim=1))
    out, start = [], 0
    for t, c in zip(tensors, columns):
        out.append(gathered[:, start:start + c.shape[1]].to(t.device, t.dtype).reshape(-1, *t.shape[1:]))
        start += c.shape[1]
    return tuple(out)


def _gathered_sizes(n: int) -> list[int]:
    sizes = torch.tensor([n], device=_comm_device())
    parts = [torch.empty_like(sizes) for _ in range(world_size())]
    dist.all_gather(parts, sizes)
    return [int(p.item()) for p in parts]


def rows_before(n: int) -> int:
    """Where this rank's `n` rows start in a `gather_rows` of them: the rows of the lower ranks."""
    if world_size() == 1:
        return 0
    return sum(_gathered_sizes(n)[:rank()])


def sum_all(t: torch.Tensor) -> torch.Tensor:
    """The sum of `t` over the ranks (a new tensor, on t's device)."""
    if world_size() == 1:
        return t
    out = t.detach().clone().to(_comm_device())
    dist.all_reduce(out)
    return out.to(t.device)


def count_ranks(*flags: bool) -> list[int]:
    """For each flag, on how many ranks it holds (one all-reduce)."""
    counts = torch.tensor([int(f) for f in flags])
    return [int(c) for c in sum_all(counts).tolist()]


def any_rank(flag: bool) -> bool:
    """Whether `flag` holds on any rank: how ranks agree to stop at the same step."""
    return count_ranks(flag)[0] > 0


def from_main(value):
    """Rank 0's `value` (any picklable object written by this program), on every rank."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(value) -> list:
    """Every rank's `value`, in rank order ([value] with one rank)."""
    if world_size() == 1:
        return [value]
    out = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


class DataParallel(DistributedDataParallel):
    """DDP whose attributes fall through to the wrapped model, so that a step function calls
    `model(x)` (the backbone, through DDP) and `model.head_bal(f)` alike. Gradients of every parameter
    a step touches, in the forward pass or after it (the heads, the bank loss), are averaged: DDP's
    hooks fire on each parameter's gradient once per backward. `static_graph`: the set of parameters a
    method uses is the same at every step (FixMatch and the baseline never use head_bal)."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` wrapped for the process group (the model itself with one rank). Buffers are not
    synchronised at each forward: `average_buffers` keeps them equal after each step instead."""
    if world_size() == 1:
        return model
    return DataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                        forward_sync_buffers=False, static_graph=True)


@torch.no_grad()
def average_buffers(model: nn.Module) -> None:
    """Batch-norm running statistics averaged over the ranks in one all-reduce (counters are equal
    already), so that every rank's model, and the EMA model that copies them, stay identical."""
    if world_size() == 1:
        return
    buffers = [b for b in model.buffers() if b.dtype.is_floating_point]
    if not buffers:
        return
    averaged = sum_all(torch.cat([b.flatten() for b in buffers])) / world_size()
    for b, avg in zip(buffers, averaged.split([b.numel() for b in buffers])):
        b.copy_(avg.view_as(b))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda: no CUDA device is available here; use device=cpu or device=auto")
    return torch.device(name)


def rank_share(items, r: int | None = None):
    """Rank r's share (this rank's by default) of a sequence: every world-th item, starting at r, as
    WebDataset's split_by_node takes shards and DistributedSampler takes indices."""
    return items[rank() if r is None else r::world_size()]
