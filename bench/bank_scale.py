"""The memory bank at ImageNet scale: what one step's bank calls cost, early and late in a stream.

    python bench/bank_scale.py [--capacities 2048 65536] [--candidates 64 128] [--points 10 10000]
                               [--rules reference present] [--timed 50] [--images 8]

One step's bank work is exactly what `steps.bank_loss` does: `bank.put` of the step's candidates, then
`bank.draw(draw, Nhat)`, and the drawn features and labels moved to the step's device. Banks as in
configs/experiment/imagenet_lt_50.yaml: 2,048-d features (ResNet-50), 1,000 classes, draw 512,
beta_put 3, beta_get 0.75; capacity 2,048 (the recipe) and 65,536. Candidates: gamma-100 long-tailed
pseudo-labels (p_k proportional to 100 ** (-k / 999)); 64 per step (64 unlabeled x 2 strong views x mask
0.5) or 128 (plus the 64 labeled images, method.bank.labeled). Nhat: the stream's mean label counts per
step so far. Rules: `reference` (the ImageNet-LT recipe, offline mode) and `present` (stream mode).

The stream is fed untimed up to each point; then the median over `--timed` steps (after 10 steps: steps
11-60). The bank keeps its features on the CPU (MemoryBank.features), so on CUDA the step also pays the
copy of the candidates to the host and of the drawn features back (its own column).

Then one ResNet-50 forward+backward of a two-head BMB model on the CPU (1 thread) at `--images` images
of 224 px, scaled linearly to the ImageNet-LT recipe's 64 + 3 x 64 = 256 images, and the bank's cost as
a percent of that step (the project's goal: under 2%).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from machine import print_header

from bmb_stream.method.bank import MemoryBank
from bmb_stream.models import build_model

C, DIM, DRAW, BETA_PUT, BETA_GET = 1000, 2048, 512, 3.0, 0.75


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Stream:
    """Long-tailed candidate labels and the running Nhat; fixed random features on `device`."""

    def __init__(self, per_step: int, device: torch.device, seed: int = 0):
        self.prior = torch.tensor([100.0 ** (-k / (C - 1)) for k in range(C)], dtype=torch.float64)
        self.gen = torch.Generator().manual_seed(seed)
        self.features = torch.randn(per_step, DIM, generator=self.gen).to(device)
        self.per_step, self.device = per_step, device
        self.total, self.steps = torch.zeros(C, dtype=torch.float64), 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.multinomial(self.prior, self.per_step, replacement=True, generator=self.gen)
        nhat = (self.total / max(1, self.steps)).float()
        self.total += torch.bincount(labels, minlength=C)
        self.steps += 1
        return labels.to(self.device), nhat


def timed_step(bank: MemoryBank, stream: Stream) -> tuple[float, float, float, float, float]:
    """One step's bank calls: (total, put, draw, copy to the device, class_counts alone) in ms."""
    labels, nhat = stream.next()
    dev = stream.device
    sync(dev)
    t0 = time.perf_counter()
    bank.put(stream.features, labels)
    t1 = time.perf_counter()
    drawn = bank.draw(DRAW, nhat)
    t2 = time.perf_counter()
    if drawn is not None:
        drawn[0].to(dev), drawn[1].to(dev)
    sync(dev)
    t3 = time.perf_counter()
    bank.class_counts()  # an extra call, timed apart: put makes one
    t4 = time.perf_counter()
    return tuple(1e3 * x for x in (t3 - t0, t1 - t0, t2 - t1, t3 - t2, t4 - t3))


def measure(device, rule, capacity, per_step, points, timed, seed):
    """{point: (fill, medians of timed_step's five numbers)}"""
    bank = MemoryBank(capacity, DIM, C, beta_put=BETA_PUT, beta_get=BETA_GET, count_rule=rule, seed=seed)
    stream = Stream(per_step, device, seed)
    out = {}
    for point in points:
        while stream.steps < point:  # untimed: put only (a draw does not change the bank's entries)
            labels, _ = stream.next()
            bank.put(stream.features, labels)
        fill = bank.fill
        rows = [timed_step(bank, stream) for _ in range(timed)]
        out[point] = (fill, [statistics.median(col) for col in zip(*rows)])
    return out


def resnet50_step_ms(images: int, rounds: int = 3) -> float:
    """Median ms of one forward+backward of the two-head ResNet-50 at `images` images of 224 px."""
    model = build_model("resnet50", C).train()
    x, y = torch.randn(images, 3, 224, 224), torch.randint(0, C, (images,))
    times = []
    for i in range(rounds + 1):  # the first is a warm-up
        t0 = time.perf_counter()
        f = model(x)
        loss = F.cross_entropy(model.head_std(f), y) + F.cross_entropy(model.head_bal(f), y)
        model.zero_grad(set_to_none=True)
        loss.backward()
        if i:
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--capacities", type=int, nargs="+", default=[2048, 65536])
    ap.add_argument("--candidates", type=int, nargs="+", default=[64, 128], help="candidates per step")
    ap.add_argument("--points", type=int, nargs="+", default=[10, 10000], help="stream steps before timing")
    ap.add_argument("--rules", nargs="+", default=["reference", "present"], choices=["reference", "present"])
    ap.add_argument("--timed", type=int, default=50, help="steps timed at each point (median)")
    ap.add_argument("--images", type=int, default=8, help="images of the measured ResNet-50 step (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t_start = time.time()
    print_header()
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
        print(f"GPU: {torch.cuda.get_device_name()}")
    else:
        print("no GPU here: CPU rows only")
    points = sorted(args.points)
    first, last = points[0], points[-1]
    print(f"\nBank: {C:,} classes, {DIM:,}-d features, draw {DRAW}, beta_put {BETA_PUT:g}, beta_get {BETA_GET:g}; "
          f"ms per step = put + draw (+ copy to the device), median of {args.timed} steps.\n")
    print(f"| device | rule | capacity | candidates / step | fill after {first:,} / {last:,} | "
          f"ms after {first:,} steps | ms after {last:,} steps | ratio | put / draw / copy ms at {last:,} | "
          f"class_counts ms at {last:,} |")
    print("|" + "---|" * 10)
    worst = 0.0
    for device in devices:
        for rule in args.rules:
            for capacity in args.capacities:
                for per_step in args.candidates:
                    res = measure(device, rule, capacity, per_step, points, args.timed, args.seed)
                    (f0, m0), (f1, m1) = res[first], res[last]
                    worst = max(worst, m1[0], m0[0])
                    print(f"| {device.type} | {rule} | {capacity:,} | {per_step} | {f0:,} / {f1:,} | {m0[0]:.2f} | "
                          f"{m1[0]:.2f} | {m1[0] / m0[0]:.2f} | {m1[1]:.2f} / {m1[2]:.2f} / {m1[3]:.2f} | "
                          f"{m1[4]:.3f} |", flush=True)
    if args.images > 0:
        ms = resnet50_step_ms(args.images)
        step = ms * 256 / args.images
        print(f"\nResNet-50 two-head forward+backward, CPU, {torch.get_num_threads()} thread: {ms:,.0f} ms at "
              f"{args.images} images of 224 px; scaled linearly to 256 images (64 labeled + 3 x 64 unlabeled): "
              f"{step / 1e3:,.1f} s per step (scaled, not measured).")
        print(f"Slowest bank step above: {worst:.2f} ms = {100 * worst / step:.4f}% of that step (goal: under 2%).")
    print(f"\n({time.time() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
