"""The statistical half of the fidelity check: the authors' training step and ours, each alone, on the
same loaders, over seeds, with the same curve every 105 steps.

`--code theirs` trains the authors' step (their TrainEngine, WideResNet, SemiLoss, WeightEMA and
TailClassPool, imported unchanged from a checkout, as bench/lockstep_reference.py does) and `--code ours`
this package's Learner, at the fidelity check's settings (bench/fidelity_wrn.py: WRN-28-2, Fashion-MNIST-LT
gamma 100, the file-order split, their RandAugment, their CIFAR-10 gamma-100 hyperparameters, one process).
Both are fed by this package's loaders (labeled and unlabeled batches of 64, the weak and two strong views,
normalised with Fashion-MNIST's mean and std), so what differs between the two codes is the training step
alone: the data conversion, normalisation and split of their own script are held equal. A seed sets the
initial weights, the batch order, the augmentations and the bank's random choices.

Every `--every` steps, the same function scores both codes: balanced accuracy (%) on all 10,000 test
images of both heads (balanced and standard) of the EMA model and of the raw weights, and the bank's
entries. The summary gives, per code and column, the value at the last step and the mean of the last
`--last` points (mean +- std over seeds), and the swing: the std of one run's last `--last` points,
averaged over seeds.

    python bench/reference_curves.py --reference PATH/ImbalancedSSL/BMB [--codes theirs ours] [--seeds 0 1 2]
                                     [--steps 1050] [--every 105] [--last 5] [--out bench/results/reference_curves]

A run whose curve reaches --steps is read, not rerun; a run stopped before that starts again.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from lockstep_reference import OURS, import_reference, their_engine

from bmb_stream.algorithms import Batch
from bmb_stream.config import compose, typed
from bmb_stream.datasets import build_split
from bmb_stream.engine.batches import endless_batches
from bmb_stream.engine.learner import Learner

COLUMNS = ("ema_bal", "raw_bal", "ema_std", "raw_std")


def head_logits(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(balanced head, standard head) logits of either code's network."""
    out = model(x)
    if isinstance(out, tuple):  # theirs: (features, balanced logits, standard logits)
        return out[1], out[2]
    return model.head("bal")(out), model.head("std")(out)


@torch.no_grad()
def balanced_accuracies(model, test_x: torch.Tensor, test_y: torch.Tensor, normalise) -> tuple[float, float]:
    """Balanced accuracy (%) of both heads, in eval mode, on normalised test images."""
    was_training = model.training
    model.eval()
    classes = int(test_y.max()) + 1
    hits = torch.zeros(2, classes)
    for x, y in zip(test_x.split(500), test_y.split(500)):
        for i, logits in enumerate(head_logits(model, normalise(x))):
            hits[i].index_add_(0, y, (logits.argmax(1) == y).float())
    model.train(was_training)
    per_class = hits / torch.bincount(test_y, minlength=classes).float()
    return tuple(100 * float(acc.mean()) for acc in per_class)


class Theirs:
    """The authors' step on our batches; one `train_one_epoch_fix` is one step (their --val-iteration 1)."""

    def __init__(self, ref, tau: float, labeled_per_class: list[int], normalise):
        self.them, self.normalise = their_engine(ref, tau, labeled_per_class, record=False), normalise

    def step(self, x_l, y_l, u_w, u_s1, u_s2, y_u) -> None:
        n = self.normalise
        self.them.labeled.item = (n(x_l), y_l, None)
        self.them.unlabeled.item = ((n(u_w), n(u_s1), n(u_s2)), y_u, None)
        self.them.engine.train_one_epoch_fix(epoch=1)  # epoch 0 would reset their Nhat meters, as at their start

    def models(self):
        return self.them.ema_model, self.them.model

    def entries(self) -> int:
        return int(self.them.engine.tcp.sample_num)


class Ours:
    def __init__(self, learner: Learner):
        self.learner = learner

    def step(self, x_l, y_l, u_w, u_s1, u_s2, y_u) -> None:
        self.learner.train_step(Batch(x_l, y_l, u_w, u_s1, u_s2))

    def models(self):
        return self.learner.ema.module, self.learner.model

    def entries(self) -> int:
        return int(self.learner.algorithm.bank.fill)


def train_curve(code: str, seed: int, args, ref, path: Path) -> list[dict]:
    torch.manual_seed(seed)
    np.random.seed(seed)  # their bank draws with NumPy
    cfg = typed(compose([*OURS, f"seed={seed}"]))
    split = build_split(cfg.dataset, seed=seed)
    learner = Learner(cfg, split.num_classes, split.labeled_per_class, torch.device("cpu"))
    trainer = Theirs(ref, cfg.method.tau, list(split.labeled_per_class), learner.input) if code == "theirs" \
        else Ours(learner)
    test = [split.test[i] for i in range(len(split.test))]
    test_x, test_y = torch.stack([x for x, _ in test]), torch.tensor([int(y) for _, y in test])
    labeled = endless_batches(split.labeled, 64, seed, 0)
    unlabeled = endless_batches(split.unlabeled, 64, seed + 1, 0)
    points, started = [], time.time()
    path.unlink(missing_ok=True)
    for t in range(1, args.steps + 1):
        x_l, y_l = next(labeled)
        (u_w, u_s1, u_s2), y_u = next(unlabeled)
        trainer.step(x_l, y_l, u_w, u_s1, u_s2, y_u)
        if t % args.every == 0:
            ema, raw = trainer.models()
            (ema_bal, ema_std), (raw_bal, raw_std) = (balanced_accuracies(m, test_x, test_y, learner.input)
                                                      for m in (ema, raw))
            point = {"step": t, "ema_bal": ema_bal, "raw_bal": raw_bal, "ema_std": ema_std, "raw_std": raw_std,
                     "entries": trainer.entries(), "wall_s": round(time.time() - started, 1)}
            points.append(point)
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(point) + "\n")
            print(f"{code}, seed {seed}, step {t}: " + ", ".join(f"{k} {point[k]:.1f}" for k in COLUMNS)
                  + f", bank {point['entries']} ({point['wall_s'] / 60:.0f} min)", flush=True)
    return points


def read_or_train(code: str, seed: int, args, ref) -> list[dict]:
    path = args.out / f"{code}-seed{seed}.jsonl"
    if path.exists():
        points = [json.loads(line) for line in path.read_text().splitlines()]
        if points and points[-1]["step"] >= args.steps:
            return points
    return train_curve(code, seed, args, ref, path)


def mean_std(values) -> str:
    return f"{np.mean(values):.1f} +- {np.std(values, ddof=1):.1f}" if len(values) > 1 else f"{np.mean(values):.1f}"


def print_summary(curves: dict[str, dict[int, list[dict]]], last: int) -> None:
    for code, runs in curves.items():
        steps = [p["step"] for p in next(iter(runs.values()))]
        print(f"\n{code}: seeds {', '.join(map(str, runs))}; balanced accuracy (%) every {steps[0]} steps")
        print(f"  {'step':>6}" + "".join(f"{c:>16}" for c in (*COLUMNS, "entries")))
        for i, step in enumerate(steps):
            print(f"  {step:>6}" + "".join(f"{mean_std([r[i][c] for r in runs.values()]):>16}"
                                           for c in (*COLUMNS, "entries")))
    print(f"\nover seeds: at the last step, the mean of the last {last} points, and the swing (std of one run's "
          f"last {last} points, mean over seeds)")
    print(f"  {'column':<8}{'code':>8}{'last step':>16}{f'last {last} points':>18}{'swing':>8}")
    for column in (*COLUMNS, "entries"):
        for code, runs in curves.items():
            tails = [[p[column] for p in r[-last:]] for r in runs.values()]
            print(f"  {column:<8}{code:>8}{mean_std([t[-1] for t in tails]):>16}"
                  f"{mean_std([np.mean(t) for t in tails]):>18}{np.mean([np.std(t, ddof=1) for t in tails]):>8.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", type=Path, help="the BMB folder of a wujianP/ImbalancedSSL checkout")
    ap.add_argument("--codes", nargs="+", default=["theirs", "ours"], choices=["theirs", "ours"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=1050)
    ap.add_argument("--every", type=int, default=105)
    ap.add_argument("--last", type=int, default=5, help="curve points averaged at the end of each run")
    ap.add_argument("--out", type=Path, default=Path("bench/results/reference_curves"))
    args = ap.parse_args()
    if "theirs" in args.codes and args.reference is None:
        ap.error("--reference is needed for --codes theirs")
    ref = import_reference(args.reference.resolve()) if args.reference else None
    args.out.mkdir(parents=True, exist_ok=True)
    curves = {code: {} for code in args.codes}
    for seed in args.seeds:  # both codes per seed, so that a partial run still pairs them
        for code in args.codes:
            curves[code][seed] = read_or_train(code, seed, args, ref)
    print_summary(curves, args.last)


if __name__ == "__main__":
    main()
