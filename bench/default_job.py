"""The default job (`bmb-stream`: BMB, small CNN, the simulated fmnist_lt_drift stream, 320 steps) over
several seeds, with the memory bank as configured against the reference's bank (unlabeled pseudo-labels
only, the reference count rule), and against supervised training and FixMatch on the same stream and
budget, and ABC and CDMAD: balanced accuracy of the EMA model, of the raw weights and of the EMA
model without the algorithm's test-time rule (BMB's and ABC's standard head, CDMAD's unrefined logits),
each the mean of the run's evaluations (after every experience: 10 per run), then mean +- std over the
seeds; and the bank at the end (entries, classes, entries from labeled images, purity of the
pseudo-labeled ones).

    python bench/default_job.py [--seeds 0 1 2] [--variants default reference-bank supervised fixmatch abc cdmad bf16]
                                [--out bench/results/default_job] [--set KEY=VALUE ...]

Every seed trains on the same stream (the recipe's own seed fixes it; simulated once and cached); the run
seed changes the initial weights, the shuffling and the augmentations. Runs under --out are reused
when finished and resumed when started (bench/common.py).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore", message="no QP solver found")

from bmb_stream.engine.stream_loop import run_stream  # noqa: E402
from common import run_folder, train_unless_finished  # noqa: E402

VARIANTS = {
    "default": [],
    "reference-bank": ["method.bank.labeled=false", "method.bank.count_rule=reference"],
    "supervised": ["method=supervised"],  # the labeled images only
    "fixmatch": ["method=fixmatch"],
    "abc": ["method=abc"],
    "cdmad": ["method=cdmad"],
    "cdmad, running bn": ["method=cdmad", "method.bias_batch_norm=running"],
    "cdmad, mean colour": ["method=cdmad", "method.bias_value=0.0"],
    "cdmad, threshold": ["method=cdmad", "method.tau=0.95", "method.soft_targets=false"],
    "bf16": ["train.amp=true"],  # bfloat16 autocast, at equal accuracy or not
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--out", default="bench/results/default_job")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="overrides added to every variant's (give another --out: finished runs are reused as they are)")
    args = ap.parse_args()
    rows: dict[str, list[dict]] = {v: [] for v in args.variants}
    for seed in args.seeds:
        for name in args.variants:
            run_dir = run_folder(args.out, name, seed)
            started = time.time()
            train_unless_finished(run_dir, [f"seed={seed}", "progress=false", *VARIANTS[name], *args.set], run_stream)
            summary = json.loads((run_dir / "summary.json").read_text())
            records = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
            counts = summary.get("bank_class_counts") or []  # no bank: supervised, FixMatch
            row = {"ema": 100 * np.mean([r["balanced_acc"] for r in records]),
                   "raw": 100 * np.mean([r["raw_balanced_acc"] for r in records]),
                   "plain": (100 * np.mean([r["plain_balanced_acc"] for r in records])
                             if all("plain_balanced_acc" in r for r in records) else None),
                   "final_ema": 100 * summary["final"]["balanced_acc"], "entries": sum(counts),
                   "classes": sum(c > 0 for c in counts), "labeled": summary.get("bank_labeled") or 0,
                   "purity": summary.get("bank_purity")}
            rows[name].append(row)
            plain = f"{row['plain']:.1f}" if row["plain"] is not None else "-"
            print(f"{name:<15} seed {seed}: EMA {row['ema']:.1f}  raw {row['raw']:.1f}  without rule {plain}  final EMA "
                  f"{row['final_ema']:.1f}  bank {row['entries']}/{summary.get('bank_capacity') or 0}, {row['classes']} classes, "
                  f"{row['labeled']} labeled  ({time.time() - started:.0f} s)", flush=True)
    print(f"\nThe default job, seeds {args.seeds}: balanced accuracy (%), mean over each run's evaluations, "
          "then mean +- std over seeds; the bank at the end, mean over seeds")
    print(f"{'variant':<16}{'EMA model':>14}{'raw':>14}{'without rule':>14}{'final EMA':>14}{'entries':>9}"
          f"{'classes':>9}{'labeled':>9}")
    for name, runs in rows.items():
        def cell(key):
            vals = [r[key] for r in runs]
            if any(v is None for v in vals):
                return "-"
            return f"{np.mean(vals):.1f} +- {np.std(vals, ddof=1) if len(vals) > 1 else 0.0:.1f}"
        print(f"{name:<16}{cell('ema'):>14}{cell('raw'):>14}{cell('plain'):>14}{cell('final_ema'):>14}"
              + "".join(f"{np.mean([r[k] for r in runs]):>9.0f}" for k in ("entries", "classes", "labeled")))


if __name__ == "__main__":
    main()
