"""What one rank does in the data-parallel tests (tests/test_distributed.py starts it under torchrun).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_worker.py bank OUT
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_worker.py train OUT [OVERRIDE ...]

`bank`: steps of hand-made candidates (64 per step, this rank's share of them, 24 or 40) through the step's bank
path, gathered over the ranks; saves the bank, its draws' losses and Nhat. Run without torchrun it
takes all 64 (the single-process reference).
`train`: an offline run on real Fashion-MNIST; saves a hash of each part of the learner's state and
of this rank's first unlabeled batch.
`stream`: a stream run; saves hashes of this rank's first unlabeled batch: its samples' classes, and its views.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from bmb_stream import distributed

STEPS, PER_STEP, DIM, CLASSES = 6, 64, 8, 5


def bank_steps(out: Path) -> None:
    from bmb_stream.method.bank import MemoryBank
    from bmb_stream.algorithms.base import Batch, on_host
    from bmb_stream.algorithms.bmb import StepContext, _bank_offer, bank_loss
    from bmb_stream.method.weights import PseudoLabelEstimate

    distributed.init(torch.device("cpu"))
    world, rank = distributed.world_size(), distributed.rank()
    # uneven shares (24 and 40 unlabeled, 6 and 10 labeled), as a stream's partial batches are
    share = slice(0, PER_STEP) if world == 1 else (slice(0, 24), slice(24, PER_STEP))[rank]
    labeled = slice(0, 16) if world == 1 else (slice(0, 6), slice(6, 16))[rank]
    cfg = SimpleNamespace(tau=0.5, bank=SimpleNamespace(features="weak", draw=16, labeled=True))
    torch.manual_seed(0)
    head = torch.nn.Linear(DIM, CLASSES)
    model = SimpleNamespace(head_bal=head)
    bank = MemoryBank(40, DIM, CLASSES, beta_put=1.0, beta_get=1.0, count_rule="present", seed=7)
    estimate = PseudoLabelEstimate(CLASSES)
    data = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(STEPS):  # every rank makes the whole step's data and keeps its share
        f_l, y_l = torch.randn(16, DIM, generator=data), torch.randint(CLASSES, (16,), generator=data)
        f_w = torch.randn(PER_STEP, DIM, generator=data)
        yhat = torch.randint(CLASSES, (PER_STEP,), generator=data)
        mask = torch.rand(PER_STEP, generator=data) < 0.6
        batch = Batch(f_l[labeled], y_l[labeled], u_weak=f_w[share])
        offset = distributed.rows_before(len(batch.u_weak))
        ctx = StepContext(0, cfg, bank=bank, nhat=estimate.value(), gather=distributed.gather_together, offset=offset)
        offer = _bank_offer(cfg, batch, f_l[labeled], f_w[share], None, None, yhat[share], mask[share],
                            distributed.gather_together, offset)
        loss, (slots, origin) = bank_loss(model, ctx, offer.chosen(*on_host(offer.labels, offer.mask)))
        losses.append(loss.detach())
        counts = torch.bincount(yhat[share][mask[share]], minlength=CLASSES)
        estimate.update(distributed.sum_all(counts))
    torch.save({"bank": bank.state_dict(), "losses": torch.stack(losses), "nhat": estimate.value(),
                "origin": origin}, out / f"bank-world{world}-rank{rank}.pt")
    distributed.shutdown()


def digest(value) -> str:
    h = hashlib.sha256()

    def feed(v):
        if isinstance(v, torch.Tensor):
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        elif isinstance(v, dict):
            for k in sorted(v, key=str):
                h.update(str(k).encode())
                feed(v[k])
        elif isinstance(v, (list, tuple)):
            for x in v:
                feed(x)
        else:
            h.update(repr(v).encode())

    feed(value)
    return h.hexdigest()


def train(out: Path, overrides: list[str]) -> None:
    from bmb_stream.config import compose
    from bmb_stream.engine.batches import endless_batches as endless
    from bmb_stream.engine.offline import OfflineRun

    first_batches = []

    def recording(*args, **kw):  # this rank's first batch of each stream of batches
        batches = endless(*args, **kw)
        first = next(batches)
        first_batches.append(digest(first))

        def replay():
            yield first
            yield from batches
        return replay()

    import bmb_stream.engine.offline as offline
    offline.endless_batches = recording
    run = OfflineRun(compose(overrides))
    run.execute()
    state = run.learner.state_dict()
    parts = {name: digest(state[name]) for name in ("model", "optimizer", "ema", "algorithm", "step")}
    parts["first_batches"] = first_batches
    torch.save(parts, out / f"train-rank{distributed.rank()}.pt")
    distributed.shutdown()


def stream(out: Path, overrides: list[str]) -> None:
    from bmb_stream.config import compose
    from bmb_stream.engine import stream_loop

    first = {}
    unrecorded = stream_loop.experience_batches

    def recording(*args, **kw):
        for batch in unrecorded(*args, **kw):
            if not first and batch["u_weak"] is not None:
                first["samples"] = digest([batch["cls"], batch["gt"]])
                first["views"] = digest([batch["u_weak"], batch["u_strong1"], batch["u_strong2"]])
            yield batch

    stream_loop.experience_batches = recording
    stream_loop.StreamRun(compose(overrides)).execute()
    torch.save(first, out / f"stream-rank{distributed.rank()}.pt")
    distributed.shutdown()


if __name__ == "__main__":
    job, out = sys.argv[1], Path(sys.argv[2])
    {"bank": lambda: bank_steps(out), "train": lambda: train(out, sys.argv[3:]),
     "stream": lambda: stream(out, sys.argv[3:])}[job]()
