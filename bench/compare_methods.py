"""Supervised vs FixMatch vs BMB at the same budget on real Fashion-MNIST-LT (gamma 100), small CNN,
several seeds: prints mean and standard deviation of balanced and few-shot accuracy (%).

    python bench/compare_methods.py [--steps 1000] [--seeds 0 1 2] [--out bench/results/methods]

Runs already finished under --out are reused (their summary.json), so an interrupted benchmark
continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore", message="no QP solver found")

from bmb_stream.config import compose  # noqa: E402
from bmb_stream.engine.offline import run_offline  # noqa: E402

METHODS = ("supervised", "fixmatch", "bmb")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--out", default="bench/results/methods")
    args = ap.parse_args()
    results: dict[str, list[dict]] = {m: [] for m in args.methods}
    t0 = time.time()
    for seed in args.seeds:
        for method in args.methods:
            run_dir = Path(args.out) / f"{method}-seed{seed}"
            summary_file = run_dir / "summary.json"
            if not summary_file.exists():
                cfg = compose(["mode=offline", "experiment=fmnist_lt_r100", "model=small_cnn", f"method={method}", f"seed={seed}",
                               f"train.steps={args.steps}", f"train.eval_every={args.eval_every}",
                               "train.ema_warmup=true", "progress=false", f"run.dir={run_dir}"])
                run_offline(cfg)
            summary = json.loads(summary_file.read_text())
            results[method].append(summary)
            f = summary["final"]
            print(f"{method:<11} seed {seed}: balanced {100 * f['balanced_acc']:.1f}  few {100 * f['few_acc']:.1f}  "
                  f"online balanced {100 * f['raw_balanced_acc']:.1f}  ({summary['wall_s']:.0f} s)", flush=True)
    print(f"\nFashion-MNIST-LT gamma 100 (N1 1500, M1 3000), small CNN, {args.steps} steps, batch 64 + 64, "
          f"seeds {args.seeds}; final evaluation (EMA model, decay warm-up), mean +- std over seeds, %")
    print(f"{'method':<12}{'balanced':>16}{'few-shot':>16}{'many-shot':>16}{'online balanced':>18}")
    table = {}
    for method, runs in results.items():
        row = {}
        for key in ("balanced_acc", "few_acc", "many_acc", "raw_balanced_acc"):
            vals = 100 * np.asarray([r["final"][key] for r in runs])
            row[key] = (float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0)
        table[method] = row
        cells = [f"{row[k][0]:.1f} +- {row[k][1]:.1f}" for k in ("balanced_acc", "few_acc", "many_acc", "raw_balanced_acc")]
        print(f"{method:<12}{cells[0]:>16}{cells[1]:>16}{cells[2]:>16}{cells[3]:>18}")
    print(f"total wall time {time.time() - t0:.0f} s")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "table.json").write_text(json.dumps({"args": vars(args), "table": table}, indent=2))


if __name__ == "__main__":
    main()
