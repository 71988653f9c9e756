"""What the memory bank buys: BMB with its bank against BMB without it (`method.bank.enabled=false`,
everything else equal), in settings where a bank could matter, several seeds each.

    python bench/bank_worth.py [--settings NAME ...] [--seeds 0 1 2] [--last 10] [--out bench/results/bank_worth]

Settings (small CNN, real Fashion-MNIST; offline ones from `experiment=fmnist_lt_r100`, gamma 100
unless said; stream ones stream mode's defaults, the bank taking labeled images as there):
{settings}

The statistic: per run, the mean balanced accuracy (%) of the last `--last` evaluations (offline: of
the run's evaluations every 50 steps; stream: every evaluation), of the EMA model and of the raw weights;
then mean +- std over the seeds. Per setting the difference (bank - no bank), and whether it is beyond
the seeds' spread: |difference| > the larger of the two standard deviations. Runs under --out are
reused when finished and resumed when started (bench/common.py), so the benchmark can be run in parts.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore", message="no QP solver found")

from common import run_folder, train_unless_finished  # noqa: E402

from bmb_stream.engine.offline import run_offline  # noqa: E402
from bmb_stream.engine.stream_loop import run_stream  # noqa: E402

OFFLINE = ["mode=offline", "experiment=fmnist_lt_r100", "model=small_cnn", "train.eval_every=50",
           "train.ema_warmup=true"]
SETTINGS = {
    "offline 1000 steps": (OFFLINE + ["train.steps=1000"], run_offline),
    "offline 3000 steps": (OFFLINE + ["train.steps=3000"], run_offline),
    "offline gamma 200": (OFFLINE + ["train.steps=1000", "dataset.gamma_l=200", "dataset.gamma_u=200"], run_offline),
    # classes arrive 2 at a time every 4 shards, so the tail classes come late (streams/)
    "stream class-incremental": (["stream.recipe=fmnist_class_incremental"], run_stream),
    # the unlabeled stream's head is the labeled set's tail
    "stream reversed": (["stream.recipe=fmnist_lt_reversed"], run_stream),
}
ARMS = {"bank": [], "no bank": ["method.bank.enabled=false"]}
__doc__ = __doc__.format(settings="\n".join(f"    {name}: {' '.join(o)}" for name, (o, _) in SETTINGS.items()))


def run_arm(setting: str, arm: str, seed: int, out: Path) -> list[dict]:
    overrides, run = SETTINGS[setting]
    run_dir = run_folder(out / setting.replace(" ", "_"), arm.replace(" ", "_"), seed)
    train_unless_finished(run_dir, ["method=bmb", *overrides, *ARMS[arm], f"seed={seed}", "progress=false"], run)
    return [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]


def mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--last", type=int, default=10, help="evaluations averaged per run")
    ap.add_argument("--out", type=Path, default=Path("bench/results/bank_worth"))
    args = ap.parse_args()
    t0 = time.time()
    table = {}
    for setting in args.settings:
        per_arm = {}
        for arm in ARMS:
            runs = []
            for seed in args.seeds:
                started = time.time()
                records = run_arm(setting, arm, seed, args.out)[-args.last:]
                ema = 100 * float(np.mean([r["balanced_acc"] for r in records]))
                raw = 100 * float(np.mean([r["raw_balanced_acc"] for r in records]))
                runs.append((ema, raw))
                print(f"{setting}, {arm}, seed {seed}: EMA {ema:.1f}, raw {raw:.1f} "
                      f"({len(records)} evaluations, {time.time() - started:.0f} s)", flush=True)
            per_arm[arm] = {"ema": mean_std([r[0] for r in runs]), "raw": mean_std([r[1] for r in runs])}
        table[setting] = per_arm
    print(f"\nBMB with and without its bank; per run the mean of the last {args.last} evaluations, then mean +- std "
          f"over seeds {args.seeds}; balanced accuracy, %")
    print(f"{'setting':<26}{'weights':>8}{'bank':>14}{'no bank':>14}{'difference':>12}  beyond the spread")
    for setting, arms in table.items():
        for weights in ("ema", "raw"):
            (mb, sb), (mn, sn) = arms["bank"][weights], arms["no bank"][weights]
            diff = mb - mn
            print(f"{setting:<26}{weights:>8}{f'{mb:.1f} +- {sb:.1f}':>14}{f'{mn:.1f} +- {sn:.1f}':>14}{diff:>+12.1f}  "
                  f"{'yes' if abs(diff) > max(sb, sn) else 'no'}")
    print(f"total wall time {time.time() - t0:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.json").write_text(json.dumps({"seeds": args.seeds, "last": args.last, "table": table}, indent=2))


if __name__ == "__main__":
    main()
