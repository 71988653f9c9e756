"""Fidelity check against the authors' code: WRN-28-2 on Fashion-MNIST-LT gamma 100, the reference
split (file order, no shuffle = the reference's seed 0), their CIFAR-10 gamma-100 settings (bank
256 / draw 128, beta_put 2, beta_get 1, alpha 1.5, tau 0.95, Adam 2e-3, EMA 0.999 without warm-up,
batch 64 + 64, no warm-up, the bank fed the weak view's feature as their script does, their RandAugment
via dataset.randaugment=reference), 1050 steps, an evaluation every 105 steps.

At each evaluation: balanced accuracy of both heads (balanced and standard), EMA model and raw
weights; the bank's entries, the draw size (min(draw, entries)), its purity over the unlabeled
images' true classes, and Nhat's largest : smallest class; then the steps at which the bank first
held every class and first gave a full draw of 128. Printed next to the authors' runs on this machine
(their code, the same settings, seeds 0-2), whose numbers are the constants below; their seed also
sets their labeled split (seed 0: the file order used here; seeds 1 and 2 shuffle each class first).

    python bench/fidelity_wrn.py [--methods bmb fixmatch] [--seeds 0 1 2] [--steps 1050] [--every 105]
                                 [--out bench/results/fidelity] [--set KEY=VALUE ...]

--set adds config overrides after the fixed ones (the test suite runs it with model=small_cnn).

The reference split is the same for every seed; a seed changes the initial weights, the batch order
and the augmentations. With several seeds, a summary follows the curves: when each seed's bank first
held every class and first gave a full draw, and each column at the last step (mean +- std over seeds,
and the seeds' range) and averaged over the last three curve points, beside the authors' three seeds
(mean +- std of one evaluation each, at the last step).

A finished run folder (<out>/<method>-seed<N>) is read, not rerun (delete it to rerun); a started one
is resumed, its curve going on from the checkpoint (bench/common.py). Each record's extra keys are in
its fidelity.jsonl.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore", message="no QP solver found")

from bmb_stream.engine.offline import OfflineRun  # noqa: E402
from common import train_unless_finished  # noqa: E402

# The authors' code on this machine, run as ../shared/docs/reference-run.md says (their ABCfix.py, CIFAR-10
# gamma-100 "adaweight+tcp" script, one process, Fashion-MNIST converted to CIFAR-10's files), final
# checkpoints re-evaluated on all 10,000 test images: balanced accuracy (%) at step 1,050. BMB: seed 0 with
# the bank at the end and the curve's landmarks; seeds 1 and 2 run 2026-12-07. FixMatch: seed 0's EMA model.
REFERENCE_SEEDS = {
    "bmb": {0: {"ema_bal": 37.1, "raw_bal": 68.6, "ema_std": 55.4, "raw_std": 69.3, "entries": 157, "purity": 93.0},
            1: {"ema_bal": 45.0, "raw_bal": 53.2, "ema_std": 48.0, "raw_std": 58.3, "entries": 65},
            2: {"ema_bal": 55.8, "raw_bal": 44.5, "ema_std": 55.2, "raw_std": 48.5, "entries": 42}},
    "fixmatch": {0: {"ema_std": 59.4}},
}
LANDMARKS = {"bmb": "seed 0: EMA at chance until about step 420; full draws of 128 only after step 840; seeds 1 "
                    "and 2: one bank entry per class until the last class appeared (steps 1,025 and 1,044)"}


def reference(method: str) -> dict:
    """The authors' numbers as printed beside ours: the mean +- std over their seeds (the value for one)."""
    seeds = REFERENCE_SEEDS.get(method, {})
    keys = {k for run in seeds.values() for k in run}
    out = {}
    for key in keys:
        values = [run[key] for run in seeds.values() if key in run]
        out[key] = mean_std(values)
    return out


class FidelityRun(OfflineRun):
    """The offline run (its own evaluation at the last step only), plus a curve: every `every` steps
    both heads of the EMA model and of the raw weights (one backbone pass per model over the test
    set, decoded once), the bank's entries, draw, purity and Nhat; at every step, when the bank first
    holds every class and first fills a draw. The curve's last point and the run's own evaluation
    score the same models on the same images: `print_curve` checks that they agree."""

    def __init__(self, cfg, every: int):
        super().__init__(cfg)
        self.every = every

    def prepare(self) -> None:
        super().prepare()
        test = self.split.test
        images = [test[i] for i in range(len(test))]
        self.test_x = torch.stack([x for x, _ in images])
        self.test_y = torch.tensor([int(y) for _, y in images])
        self.first = {"all_classes": None, "full_draw": None}
        self.step_hooks.append(FidelityRun.observe_step)

    def observe_step(self) -> None:
        """After each training step: the bank's landmarks, and a curve point every `every` steps."""
        self.note_bank()
        if self.learner.step % self.every == 0:
            self.write_point()

    def note_bank(self) -> None:
        bank, step = self.learner.algorithm.bank, self.learner.step
        if bank is None:
            return
        if self.first["all_classes"] is None and bool((bank.class_counts() > 0).all()):
            self.first["all_classes"] = step
        if self.first["full_draw"] is None and bank.fill >= self.cfg.method.bank.draw:
            self.first["full_draw"] = step

    def resume(self) -> None:
        """A resumed run's curve goes on from its checkpoint: the points written past it before the stop
        are dropped (all of them where there is no checkpoint), and its landmarks come back with it."""
        super().resume()
        curve = self.run_dir.path / "fidelity.jsonl"
        if curve.exists():
            kept = [line for line in curve.read_text().splitlines() if json.loads(line)["step"] <= self.learner.step]
            curve.write_text("".join(line + "\n" for line in kept))

    def checkpoint_state(self) -> dict:
        return {**super().checkpoint_state(), "fidelity_first": dict(self.first)}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.first.update(state.get("fidelity_first", {}))

    @torch.no_grad()
    def head_accuracies(self, model) -> dict[str, float]:
        """Balanced accuracy of both heads of `model`, from one backbone pass."""
        was_training = model.training
        model.eval()
        classes = model.num_classes
        correct = {"bal": torch.zeros(classes), "std": torch.zeros(classes)}
        for x, y in zip(self.test_x.split(500), self.test_y.split(500)):
            features = model(self.learner.input(x)).cpu()  # the uint8 test images, normalised as in training
            for head in correct:
                hit = (model.head(head).cpu()(features).argmax(1) == y).float()
                correct[head] += torch.zeros(classes).index_add_(0, y, hit)
        model.train(was_training)
        present = torch.bincount(self.test_y, minlength=classes) > 0
        total = torch.bincount(self.test_y, minlength=classes).float()
        return {head: float((c[present] / total[present]).mean()) for head, c in correct.items()}

    def write_point(self) -> None:
        learner = self.learner
        ema = learner.ema.module if learner.ema is not None else learner.model
        ema_acc, raw_acc = self.head_accuracies(ema), self.head_accuracies(learner.model)
        point = {"step": learner.step, "ema_bal": ema_acc["bal"], "raw_bal": raw_acc["bal"],
                 "ema_std": ema_acc["std"], "raw_std": raw_acc["std"], **self.first}
        bank, estimate = learner.algorithm.bank, getattr(learner.algorithm, "estimate", None)
        if bank is not None:
            point |= {"entries": bank.fill, "draw": min(self.cfg.method.bank.draw, bank.fill),
                      "purity": self.monitor.report(bank).get("bank_purity")}
        if estimate is not None and estimate.value() is not None:
            point["nhat"] = estimate.value().tolist()
        with open(self.run_dir.path / "fidelity.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(point) + "\n")
        print(f"step {learner.step}: " + ", ".join(f"{k} {100 * point[k]:.1f}"
                                                   for k in ("ema_bal", "raw_bal", "ema_std", "raw_std")), flush=True)


def percent(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def nhat_ratio(nhat) -> str:
    if not nhat or min(nhat) <= 0:
        return "-" if not nhat else "inf"
    return f"{max(nhat) / min(nhat):.0f}"


def read_points(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "fidelity.jsonl").read_text().splitlines()]


def landmarks(point: dict) -> str:
    """When the bank first held every class and first gave a full draw, as of `point`."""
    def when(key):
        return f"at step {point[key]}" if point.get(key) is not None else f"not by step {point['step']}"
    return f"bank first held every class {when('all_classes')}, first full draw {when('full_draw')}"


def print_curve(method: str, seed: int, run_dir: Path) -> None:
    points = read_points(run_dir)
    final = json.loads((run_dir / "eval.jsonl").read_text().splitlines()[-1])
    print(f"\n{method}, seed {seed}: balanced accuracy (%), bank and Nhat every {points[0]['step']} steps")
    print(f"{'step':>6}{'EMA bal':>9}{'raw bal':>9}{'EMA std':>9}{'raw std':>9}{'entries':>9}{'draw':>6}"
          f"{'purity':>8}{'Nhat max:min':>14}")
    for r in points:
        print(f"{r['step']:>6}" + "".join(f"{percent(r[k]):>9}" for k in ("ema_bal", "raw_bal", "ema_std", "raw_std"))
              + f"{r.get('entries', '-'):>9}{r.get('draw', '-'):>6}{percent(r.get('purity')):>8}"
              f"{nhat_ratio(r.get('nhat')):>14}")
    ref = REFERENCE_SEEDS.get(method, {}).get(seed, {})
    print(f"{'ref':>6}" + "".join(f"{ref.get(k, '-'):>9}" for k in ("ema_bal", "raw_bal", "ema_std", "raw_std"))
          + f"{ref.get('entries', '-'):>9}{'':>6}{ref.get('purity', '-'):>8}   (authors' code, the same seed, step 1,050)")
    if method in LANDMARKS:
        print(f"authors' runs: {LANDMARKS[method]}")
    last = points[-1]
    print(f"ours: {landmarks(last)}; wall {final['wall_s'] / 60:.0f} min")
    head = "bal" if method == "bmb" else "std"  # the head the run's own evaluation reports
    print(f"check: the run's own evaluation at step {final['step']}: EMA {percent(final['balanced_acc'])}, "
          f"raw {percent(final['raw_balanced_acc'])} (the curve's {head} head: {percent(last['ema_' + head])}, "
          f"{percent(last['raw_' + head])})")


def mean_std(values: list[float]) -> str:
    t = torch.tensor(values, dtype=torch.float64)
    return f"{t.mean():.1f} +- {t.std():.1f}" if len(values) > 1 else f"{t.mean():.1f}"


def print_summary(method: str, runs: dict[int, Path], window: int = 3) -> None:
    """Across seeds: the bank's landmarks per seed; each column at the last step (what the authors'
    single evaluation is compared with) and averaged over the last `window` curve points, as mean +- std
    over seeds, with the range of the seeds' values at the last step."""
    points = {seed: read_points(run_dir) for seed, run_dir in runs.items()}
    window = min([window] + [len(curve) for curve in points.values()])
    last_step, first_step = (next(iter(points.values()))[i]["step"] for i in (-1, -window))
    print(f"\n{method}: {len(runs)} seeds ({', '.join(map(str, runs))})")
    for seed, curve in points.items():
        print(f"  seed {seed}: {landmarks(curve[-1])}")
    ref = reference(method)
    print(f"  {'':<8}{f'step {last_step}':>16}{'range':>16}{f'steps {first_step}-{last_step}':>18}"
          f"{'authors, seeds':>16}")
    columns = ["ema_bal", "raw_bal", "ema_std", "raw_std"] + (["entries", "purity"] if method == "bmb" else [])
    for key in columns:
        scale = 1 if key == "entries" else 100
        at_last = [scale * curve[-1][key] for curve in points.values() if curve[-1].get(key) is not None]
        averaged = [scale * sum(p[key] for p in curve[-window:]) / window for curve in points.values()
                    if all(p.get(key) is not None for p in curve[-window:])]
        if at_last:
            print(f"  {key:<8}{mean_std(at_last):>16}{f'{min(at_last):.1f} .. {max(at_last):.1f}':>16}"
                  f"{mean_std(averaged) if averaged else '-':>18}{ref.get(key, '-'):>16}")


def run(method: str, seed: int, run_dir: Path, args) -> None:
    train_unless_finished(run_dir, ["mode=offline", "experiment=fmnist_lt_r100", f"method={method}", f"seed={seed}",
                                    "dataset.split_shuffle=false", "dataset.randaugment=reference",
                                    f"train.steps={args.steps}", f"train.eval_every={args.steps}",
                                    "train.ema_warmup=false", "progress=false", *args.set],
                          lambda cfg: FidelityRun(cfg, args.every).execute())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=["bmb", "fixmatch"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--steps", type=int, default=1050)
    ap.add_argument("--every", type=int, default=105)
    ap.add_argument("--out", default="bench/results/fidelity")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config overrides")
    args = ap.parse_args()
    for method in args.methods:
        runs = {seed: Path(args.out) / f"{method}-seed{seed}" for seed in args.seeds}
        for seed, run_dir in runs.items():
            run(method, seed, run_dir, args)
            print_curve(method, seed, run_dir)
        if len(runs) > 1:
            print_summary(method, runs)


if __name__ == "__main__":
    main()
