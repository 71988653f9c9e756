"""What our training step costs beyond the network's own work, side by side in one run.

    python bench/step_overhead.py [--model wrn28_2] [--steps 8] [--rounds 3] [--workers 1] [--amp]

Two steps over the same 64 labeled + 3 x 64 unlabeled uint8 images (Fashion-MNIST-LT, `experiment=
fmnist_lt_r100`, its weak and strong views):

- `bmb`: the learner's `train_step` (BMB: both heads, class weights, the bank's put and draw, Nhat,
  the EMA model, batch-norm statistics, the optimizer and the schedule);
- `bare`: the same model's forward over the same 256 images (normalised on the device as the learner
  does), a loss on both heads, backward and the same optimizer's step; nothing else.

`in memory`: one batch, prepared before, stepped again and again. `from workers`: each step takes a
new batch from DataLoaders with `--workers` workers (labeled and unlabeled, as an offline run has
them), so the augmentation competes with training for the cores. Medians over `--steps` steps after
two warm-up steps, in `--rounds` alternating rounds; the ratio is bmb / bare (the goal: 1.03).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from machine import print_header

warnings.filterwarnings("ignore", message="no QP solver found")

from bmb_stream.algorithms import Batch  # noqa: E402
from bmb_stream.config import compose, typed  # noqa: E402
from bmb_stream.datasets import build_split  # noqa: E402
from bmb_stream.engine.batches import endless_batches  # noqa: E402
from bmb_stream.engine.learner import Learner  # noqa: E402


def bare_step(learner: Learner, batch: Batch) -> None:
    """Forward, backward and the optimizer's step over the batch's images, with the learner's model,
    optimizer and autocast; no bank, weights, EMA or statistics."""
    batch = learner.on_device(batch)
    amp = torch.autocast(learner.device.type, dtype=torch.bfloat16, enabled=bool(learner.cfg.train.amp))
    with amp:
        model = learner.model
        feats = model(torch.cat([batch.x_labeled, batch.u_weak, batch.u_strong1, batch.u_strong2]))
        loss = (F.cross_entropy(model.head_std(feats[: len(batch.y_labeled)]), batch.y_labeled)
                + model.head_bal(feats).float().logsumexp(1).mean())
    learner.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    learner.optimizer.step()


def timed(step, batches, steps: int) -> float:
    times = []
    for i in range(2 + steps):
        t = time.perf_counter()
        step(next(batches))
        times.append(time.perf_counter() - t)
    return statistics.median(times[2:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="wrn28_2")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--amp", action="store_true", help="train.amp=true (bfloat16 autocast) for both")
    args = ap.parse_args()
    print_header()
    cfg = typed(compose(["mode=offline", "experiment=fmnist_lt_r100", f"model={args.model}", "method=bmb",
                         "progress=false", f"train.amp={str(args.amp).lower()}"]))
    split = build_split(cfg.dataset, check_images=False, progress=False)
    torch.manual_seed(0)
    learner = Learner(cfg, split.num_classes, split.labeled_per_class, torch.device("cpu"))
    labeled = endless_batches(split.labeled, 64, 0, args.workers)
    unlabeled = endless_batches(split.unlabeled, 64, 1, args.workers)

    def from_workers():
        while True:
            (x, y), ((w, s1, s2), _) = next(labeled), next(unlabeled)
            yield Batch(x, y, w, s1, s2)

    fixed = next(from_workers())

    def in_memory():
        while True:
            yield fixed

    print(f"{args.model}, 64 labeled + 3 x 64 unlabeled images, {torch.get_num_threads()} threads, "
          f"amp {args.amp}; median s/step over {args.steps} steps, {args.rounds} alternating rounds")
    for source_name, source in (("in memory", in_memory), (f"from {args.workers} workers", from_workers)):
        bmb, bare = [], []
        for _ in range(args.rounds):
            bmb.append(timed(learner.train_step, source(), args.steps))
            bare.append(timed(lambda b: bare_step(learner, b), source(), args.steps))
        m_bmb, m_bare = statistics.median(bmb), statistics.median(bare)
        print(f"{source_name:<16} bmb {m_bmb:.3f} s  bare {m_bare:.3f} s  ratio {m_bmb / m_bare:.3f}  "
              f"(rounds: {', '.join(f'{a / b:.3f}' for a, b in zip(bmb, bare))})", flush=True)


if __name__ == "__main__":
    main()
