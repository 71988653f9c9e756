"""Supervised vs FixMatch vs BMB vs ABC vs CDMAD, and BMB's ablations, at the same budget on real Fashion-MNIST-LT
(gamma 100), small CNN, several seeds.

    python bench/compare_methods.py [--steps 1000] [--eval-every 50] [--last 10] [--seeds 0 1 2]
                                    [--variants supervised fixmatch bmb ...] [--out bench/results/methods]
                                    [--per-class] [--finished-only]

--per-class adds, per variant, each class's accuracy (EMA model, the same statistic) and, for BMB, the
evaluation at which each seed's bank was first at its largest and which classes never entered it.

The statistic: per run, the mean of the last `--last` evaluations (the EMA model and the raw
weights, balanced accuracy, %), then the mean and standard deviation of that over the seeds. One
evaluation is not a result here: raw-weight accuracy moves by 15 points between neighbouring evaluations.
Runs under --out are reused when finished (their eval.jsonl) and resumed when started (bench/common.py),
so an interrupted benchmark continues where it stopped. Variants (each a list of config overrides on top of `experiment=fmnist_lt_r100`):
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore", message="no QP solver found")

from bmb_stream.datasets.build import FMNIST_CLASSES  # noqa: E402
from bmb_stream.engine.offline import run_offline  # noqa: E402
from common import finished, run_folder, train_unless_finished  # noqa: E402

VARIANTS = {
    "supervised": ["method=supervised"],
    "fixmatch": ["method=fixmatch"],
    "bmb": ["method=bmb"],
    "abc": ["method=abc"],
    "cdmad": ["method=cdmad"],
    "cdmad, running bn": ["method=cdmad", "method.bias_batch_norm=running"],
    "cdmad, mean colour": ["method=cdmad", "method.bias_value=0.0"],
    "cdmad, threshold": ["method=cdmad", "method.tau=0.95", "method.soft_targets=false"],
    "cdmad, threshold, mean colour": ["method=cdmad", "method.tau=0.95", "method.soft_targets=false",
                                      "method.bias_value=0.0"],
    "cdmad, threshold, mean colour, running bn": ["method=cdmad", "method.tau=0.95", "method.soft_targets=false",
                                                  "method.bias_value=0.0", "method.bias_batch_norm=running"],
    # black, Fashion-MNIST's background: (0 - mean) / std = -0.219 / 0.3318 in the normalised space
    "cdmad, threshold, black, running bn": ["method=cdmad", "method.tau=0.95", "method.soft_targets=false",
                                            "method.bias_value=-0.66", "method.bias_batch_norm=running"],
    "bmb, bank off": ["method=bmb", "method.bank.enabled=false"],
    "bmb, weights off": ["method=bmb", "method.weights.enabled=false"],
    "bmb, strong features": ["method=bmb", "method.bank.features=strong"],
    "bmb, count rule present": ["method=bmb", "method.bank.count_rule=present", "method.weights.count_rule=present"],
    "bmb, labeled in bank": ["method=bmb", "method.bank.labeled=true"],
}
__doc__ += "".join(f"\n    {name}: {' '.join(o)}" for name, o in VARIANTS.items()) + "\n"
# plain: the EMA model without the algorithm's test-time rule (BMB's and ABC's standard head, CDMAD's
# unrefined logits; "-" for an algorithm without one)
COLUMNS = (("balanced_acc", "EMA balanced"), ("raw_balanced_acc", "raw balanced"),
           ("plain_balanced_acc", "EMA without rule"), ("few_acc", "EMA few-shot"), ("many_acc", "EMA many-shot"))


def mean_of(records: list[dict], key: str) -> float | None:
    values = [r.get(key) for r in records]
    return None if any(v is None for v in values) else 100 * float(np.mean(values))


def shown(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def run_variant(name: str, seed: int, args) -> list[dict] | None:
    """The variant's evaluations at this seed (training it first unless a finished run is there, or
    None with --finished-only)."""
    run_dir = run_folder(args.out, name, seed)
    if args.finished_only and not finished(run_dir):
        return None
    train_unless_finished(run_dir, ["mode=offline", "experiment=fmnist_lt_r100", "model=small_cnn", *VARIANTS[name],
                                    f"seed={seed}", f"train.steps={args.steps}", f"train.eval_every={args.eval_every}",
                                    "train.ema_warmup=true", "progress=false"], run_offline)
    return [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--last", type=int, default=10, help="evaluations averaged per run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=["supervised", "fixmatch", "bmb"], choices=list(VARIANTS))
    ap.add_argument("--out", default="bench/results/methods")
    ap.add_argument("--finished-only", action="store_true", help="tabulate the finished runs, train none")
    ap.add_argument("--per-class", action="store_true", help="per-class accuracy and the bank's classes too")
    args = ap.parse_args()
    per_run: dict[str, list[dict]] = {v: [] for v in args.variants}
    histories: dict[str, dict[int, list[dict]]] = {v: {} for v in args.variants}
    t0 = time.time()
    for seed in args.seeds:
        for name in args.variants:
            started = time.time()
            records = run_variant(name, seed, args)
            if records is None:
                continue
            histories[name][seed] = records
            records = records[-args.last:]
            mean = {key: mean_of(records, key) for key, _ in COLUMNS}
            per_run[name].append(mean)
            print(f"{name:<26} seed {seed}: " + "  ".join(f"{label} {shown(mean[key])}" for key, label in COLUMNS)
                  + f"  (steps {records[0]['step']}-{records[-1]['step']}, {time.time() - started:.0f} s)", flush=True)
    print(f"\nFashion-MNIST-LT gamma 100 (N1 1500, M1 3000), small CNN, {args.steps} steps, batch 64 + 64; per run the "
          f"mean of the last {args.last} evaluations (every {args.eval_every} steps), then mean +- std over seeds "
          f"{args.seeds}; balanced accuracy, %")
    print(f"{'variant':<26}" + "".join(f"{label:>18}" for _, label in COLUMNS) + f"{'seeds':>7}")
    table = {}
    for name, runs in per_run.items():
        if not runs:
            continue
        row = {key: (float(np.mean([r[key] for r in runs])),
                     float(np.std([r[key] for r in runs], ddof=1)) if len(runs) > 1 else 0.0)
               if all(r[key] is not None for r in runs) else None for key, _ in COLUMNS}
        table[name] = row
        print(f"{name:<26}" + "".join(f"{f'{row[k][0]:.1f} +- {row[k][1]:.1f}' if row[k] else '-':>18}" for k, _ in COLUMNS)
              + f"{len(runs):>7}")
    if args.per_class:
        print_per_class(histories, args.last)
    print(f"total wall time {time.time() - t0:.0f} s")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "table.json").write_text(json.dumps({"args": vars(args), "table": table}, indent=2))


def print_per_class(histories: dict[str, dict[int, list[dict]]], last: int) -> None:
    """Each class's EMA accuracy (per run the mean of the last `last` evaluations, then the mean over
    seeds) and, where there is a bank, the evaluation at which it was first at its largest and the
    classes that were never in it at any evaluation, per seed."""
    print(f"\nper class: EMA accuracy (%), mean of the last {last} evaluations, then over seeds")
    print(f"{'variant':<26}" + "".join(f"{name[:8]:>9}" for name in FMNIST_CLASSES))
    for name, runs in histories.items():
        if not runs:
            continue
        acc = np.mean([np.mean([r["per_class_acc"] for r in records[-last:]], axis=0) for records in runs.values()], axis=0)
        print(f"{name:<26}" + "".join(f"{100 * a:>9.0f}" for a in acc))
    for name, runs in histories.items():
        for seed, records in runs.items():
            counts = [r.get("bank_class_counts") for r in records]
            if not any(counts):
                continue
            sizes = [sum(c) if c else 0 for c in counts]
            first_largest = records[sizes.index(max(sizes))]["step"]
            never = [FMNIST_CLASSES[k] for k in range(len(counts[-1])) if all(not c or c[k] == 0 for c in counts)]
            print(f"{name} seed {seed}: bank at its largest ({max(sizes)} entries) first at step {first_largest}; "
                  f"never in the bank: {', '.join(never) or 'none'}")


if __name__ == "__main__":
    main()
