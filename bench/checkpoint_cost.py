"""Checkpoint save and load time and file size against the memory bank's capacity, and what they cost
against one experience of the default job's training.

    python bench/checkpoint_cost.py [--small-capacities 256 2048 65536] [--resnet-capacities 2048 65536]
                                    [--rounds 3] [--steps-per-experience 32] [--dir DIR]

A `Learner` built as stream mode builds it (`experiment=demo`, CPU), with the small CNN (64-d features)
and with ResNet-50 (`model=resnet50`, 2,048-d), at each `method.bank.capacity`; its optimizer state is
populated (one step of zero gradients) and its bank filled to capacity with random features and labels
through `bank.put`. The state saved is what stream mode saves about the learner and the bank:
{"learner": learner.state_dict(), "monitor": StreamMonitor(...).state_dict()} (the run's labeled pool,
evaluator and history are left out). Times: medians of `--rounds` of `save_atomic` (written, fsync'ed,
renamed) and `load_checkpoint` (weights_only=True); the page cache is warm for the loads.

Then the default job's training step (small CNN, the demo's batch sizes, random 32 px images): the
median of 5 `learner.train_step` calls after one warm-up, times `--steps-per-experience`, against save +
load for the small CNN's rows (the project's goal: resume costs under 2% of an experience).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from machine import print_header

from bmb_stream.config import compose, typed
from bmb_stream.engine.checkpoint import load_checkpoint, save_atomic
from bmb_stream.engine.learner import Learner
from bmb_stream.evaluation.monitor import StreamMonitor
from bmb_stream.algorithms import Batch


def make_learner(model: str, capacity: int) -> Learner:
    cfg = typed(compose(["experiment=demo", f"model={model}", f"method.bank.capacity={capacity}"]))
    c = cfg.dataset.num_classes
    labeled_per_class = [max(1, round(150 * 100 ** (-k / (c - 1)))) for k in range(c)]  # gamma-100 seed set
    return Learner(cfg, c, labeled_per_class, torch.device("cpu"))


def populate(learner: Learner, seed: int = 0) -> None:
    """Optimizer state as after a step (zero gradients: the weights do not move); the bank full."""
    for p in learner.model.parameters():
        p.grad = torch.zeros_like(p)
    learner.optimizer.step()
    learner.optimizer.zero_grad(set_to_none=True)
    bank, gen = learner.algorithm.bank, torch.Generator().manual_seed(seed)
    while bank.fill < bank.capacity:
        n = min(bank.capacity, 4096)
        bank.put(torch.randn(n, bank.features.shape[1], generator=gen),
                 torch.randint(0, bank.num_classes, (n,), generator=gen))


def checkpoint_times(learner: Learner, folder: Path, rounds: int) -> tuple[float, float, float]:
    """(size MB, save s, load s), medians of `rounds`."""
    state = {"learner": learner.state_dict(),
             "monitor": StreamMonitor(learner.num_classes, learner.algorithm.bank.capacity).state_dict()}
    path = folder / "last.pt"
    saves, loads = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        save_atomic(state, path)
        t1 = time.perf_counter()
        load_checkpoint(path)
        t2 = time.perf_counter()
        saves.append(t1 - t0)
        loads.append(t2 - t1)
    size = os.path.getsize(path) / 2**20
    path.unlink()
    return size, statistics.median(saves), statistics.median(loads)


def train_step_s(learner: Learner, timed: int = 5) -> float:
    """Median seconds of `timed` train_step calls on random batches of the config's sizes, after a warm-up."""
    cfg = learner.cfg
    b, u, s = cfg.train.batch_labeled, cfg.train.batch_unlabeled, cfg.dataset.image_size
    times = []
    for i in range(timed + 1):
        batch = Batch(torch.randn(b, 3, s, s), torch.randint(0, learner.num_classes, (b,)),
                      torch.randn(u, 3, s, s), torch.randn(u, 3, s, s), torch.randn(u, 3, s, s))
        t0 = time.perf_counter()
        learner.train_step(batch)
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small-capacities", type=int, nargs="+", default=[256, 2048, 65536],
                    help="bank capacities with the small CNN (256: the default job's)")
    ap.add_argument("--resnet-capacities", type=int, nargs="*", default=[2048, 65536],
                    help="bank capacities with ResNet-50 (none: skip it)")
    ap.add_argument("--rounds", type=int, default=3, help="saves and loads timed per row (median)")
    ap.add_argument("--steps-per-experience", type=int, default=32, help="the default job's steps per experience")
    ap.add_argument("--dir", default=None, help="folder for the checkpoint files (default: a temporary one)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t_start = time.time()
    print_header()
    print()

    demo = make_learner("small_cnn", 256)
    step = train_step_s(demo)
    tr, size_px = demo.cfg.train, demo.cfg.dataset.image_size
    del demo
    experience = step * args.steps_per_experience

    rows = [("small_cnn", c) for c in args.small_capacities] + [("resnet50", c) for c in args.resnet_capacities]
    print("| model | bank capacity | feature dim | size MB | save s | load s | save + load, % of an experience |")
    print("|" + "---|" * 7)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for model, capacity in rows:
            learner = make_learner(model, capacity)
            populate(learner)
            size, save, load = checkpoint_times(learner, Path(tmp), args.rounds)
            share = f"{100 * (save + load) / experience:.2f}%" if model == "small_cnn" else "-"
            print(f"| {model} | {capacity:,} | {learner.model.feature_dim:,} | {size:,.1f} | {save:.3f} | "
                  f"{load:.3f} | {share} |", flush=True)
            del learner
    print(f"\nDefault job (experiment=demo, small CNN, batches {tr.batch_labeled} + 3 x {tr.batch_unlabeled} of {size_px} px, CPU): {step:.2f} s per "
          f"train_step (median of 5), x {args.steps_per_experience} steps = {experience:.1f} s per experience. "
          f"The % column: one save + one load against that (goal: under 2%); ResNet-50 rows have no such job here.")
    print(f"\n({time.time() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
