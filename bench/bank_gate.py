"""The missing-class gate, bank only: the memory bank fed long-tailed candidate streams under the
reference count rule and under `present`, side by side (no training, CPU, about a minute).

    python bench/bank_gate.py [--steps 100 1000 10000] [--mask 0.5 0.05] [--rules reference present]

Each stream: pseudo-labels drawn from a gamma-100 prior over C classes (p_k proportional to
100 ** (-k / (C - 1)), class 0 the head); per step 64 unlabeled images x 2 strong views x the mask
rate confident candidates (0.5: 64, a trained balanced head at tau; 0.05: 6, early training at tau
0.95, as in the CPU demo). Banks as in the recipes: C = 10 with P = 256, beta_put 2 (CIFAR-10-LT);
C = 100 with P = 256, beta_put 3 (CIFAR-100-LT); C = 1,000 with P = 2,048, beta_put 3 (ImageNet-LT);
and C = 10 where the rarest class arrives only halfway through (a late class). Every rule sees the
same candidates. `--rules ... additive` adds a measured alternative that is not in the package:
counts + 1 (a Laplace pseudo-count) in the put probabilities.

Each cell: classes in the bank / entries / largest class : smallest class (over the classes present).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from unittest import mock

import torch

import bmb_stream.method.bank as bank_module
from bmb_stream.method.bank import MemoryBank

STREAMS = (  # (label, classes, capacity, beta_put, the rarest class arrives halfway)
    ("10 classes", 10, 256, 2.0, False),
    ("100 classes", 100, 256, 3.0, False),
    ("1,000 classes", 1000, 2048, 3.0, False),
    ("10, late class", 10, 256, 2.0, True),
)


def additive_put_probabilities(counts, beta_put, floor=1e-3, rule="reference", pseudo_count=1.0):
    """The alternative we measured and did not adopt: rho_k = ((min n + c) / (n_k + c)) ** beta_put."""
    n = counts.float() + pseudo_count
    return (n.min() / n) ** beta_put


class AdditiveBank(MemoryBank):
    def put(self, features, labels):
        with mock.patch.object(bank_module, "put_probabilities", additive_put_probabilities):
            return super().put(features, labels)


def make_bank(rule: str, classes: int, capacity: int, beta_put: float, seed: int) -> MemoryBank:
    if rule == "additive":
        return AdditiveBank(capacity, 1, classes, beta_put=beta_put, beta_get=1.0, seed=seed)
    return MemoryBank(capacity, 1, classes, beta_put=beta_put, beta_get=1.0, count_rule=rule, seed=seed)


def run_stream(classes, capacity, beta_put, late, per_step, checkpoints, rules, seed):
    """Feed every rule's bank the same candidates; returns {rule: {step: (present, fill, ratio)}}."""
    prior = torch.tensor([100.0 ** (-k / (classes - 1)) for k in range(classes)], dtype=torch.float64)
    early = prior.clone()
    early[-1] = 0.0
    gen = torch.Generator().manual_seed(seed)
    banks = {rule: make_bank(rule, classes, capacity, beta_put, seed) for rule in rules}
    features = torch.zeros(per_step, 1)
    out = {rule: {} for rule in rules}
    last = max(checkpoints)
    for step in range(1, last + 1):
        p = early if late and step <= last // 2 else prior
        labels = torch.multinomial(p, per_step, replacement=True, generator=gen)
        for rule, bank in banks.items():
            bank.put(features, labels)
            if step in checkpoints:
                counts = bank.class_counts()
                present = counts[counts > 0]
                ratio = float(present.max() / present.min()) if present.numel() else float("nan")
                out[rule][step] = (int(present.numel()), bank.fill, ratio)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--mask", type=float, nargs="+", default=[0.5, 0.05], help="mask rates (of 128 strong views)")
    ap.add_argument("--rules", nargs="+", default=["reference", "present"],
                    choices=["reference", "present", "additive"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    steps = sorted(args.steps)
    t0 = time.time()
    header = "| stream | bank (P, beta_put) | candidates / step | rule | " + " | ".join(
        f"after {s:,} steps" for s in steps) + " |"
    lines = [header, "|" + "---|" * (4 + len(steps))]
    for label, classes, capacity, beta_put, late in STREAMS:
        for mask in args.mask:
            per_step = max(1, round(64 * 2 * mask))
            res = run_stream(classes, capacity, beta_put, late, per_step, set(steps), args.rules, args.seed)
            for rule in args.rules:
                cells = [f"{p:,} / {f:,} / {r:.1f}" for p, f, r in (res[rule][s] for s in steps)]
                lines.append(f"| {label} | {capacity:,}, {beta_put:g} | {per_step} (mask {mask:g}) | {rule} | "
                             + " | ".join(cells) + " |")
    print(" ".join(["python"] + [shlex.quote(a) for a in sys.argv]))
    print()
    print("Cells: classes in the bank / entries / largest : smallest class. Candidates from a gamma-100 prior;")
    print(f"late class: the rarest class is offered from step {max(steps) // 2 + 1:,} on.")
    print()
    print("\n".join(lines))
    print(f"\n({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
