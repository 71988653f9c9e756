"""The continual-learning metrics of BMB beside FixMatch, ABC, CDMAD and supervised training, on
simulated streams (stream mode's defaults, small CNN, real Fashion-MNIST), several seeds.

    python bench/continual_methods.py [--recipes fmnist_class_incremental fmnist_lt_drift]
                                      [--methods bmb fixmatch abc cdmad supervised] [--seeds 0 1 2]
                                      [--out bench/results/continual]

Per recipe and method, over the seeds (mean +- std) after the stream's last experience: the average
accuracy over the experiences (each under its own prior), backward transfer (BWT), forward transfer
(FWT), forgetting (per class, best earlier minus last, averaged), the balanced accuracy of the final
evaluation, and the mean prequential accuracy over the experiences (supervised training reads no
unlabeled images: none). Then, per recipe, each method's accuracy matrix averaged over the seeds
(rows: evaluations after each experience; columns: experiences), in %. Definitions:
docs/run-folder.md, "Continual-learning metrics". Every seed streams the same simulated stream
(the recipe's own seed fixes it). Runs under --out are reused when finished and resumed when started.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore", message="no QP solver found")

from bmb_stream.engine.stream_loop import run_stream  # noqa: E402
from common import run_folder, train_unless_finished  # noqa: E402

COLUMNS = (("average_accuracy", "avg acc"), ("bwt", "BWT"), ("fwt", "FWT"), ("forgetting", "forgetting"),
           ("final", "final bal"), ("prequential", "prequential"))


def run(recipe: str, method: str, seed: int, out: Path) -> dict:
    run_dir = run_folder(out / recipe, method, seed)
    train_unless_finished(run_dir, [f"stream.recipe={recipe}", f"method={method}", f"seed={seed}", "progress=false"],
                          run_stream)
    return json.loads((run_dir / "summary.json").read_text())


def row_of(summary: dict) -> dict:
    prequential = [p for p in summary.get("prequential_accuracy") or [] if p is not None]
    row = {key: summary.get(key) for key, _ in COLUMNS[:4]}
    return {**row, "final": summary["final"]["balanced_acc"],
            "prequential": float(np.mean(prequential)) if prequential else None}


def cell(values: list) -> str:
    if not values or any(v is None for v in values):
        return "-"
    values = 100 * np.asarray(values, dtype=float)
    return f"{values.mean():.1f} +- {values.std(ddof=1) if len(values) > 1 else 0.0:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=["fmnist_class_incremental", "fmnist_lt_drift"])
    ap.add_argument("--methods", nargs="+", default=["bmb", "fixmatch", "abc", "cdmad", "supervised"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=Path("bench/results/continual"))
    args = ap.parse_args()
    for recipe in args.recipes:
        rows, matrices = {}, {}
        for method in args.methods:
            for seed in args.seeds:
                started = time.time()
                summary = run(recipe, method, seed, args.out)
                rows.setdefault(method, []).append(row_of(summary))
                matrices.setdefault(method, []).append(summary["accuracy_matrix"])
                print(f"{recipe}, {method}, seed {seed}: " + ", ".join(
                    f"{label} {'-' if rows[method][-1][k] is None else f'{100 * rows[method][-1][k]:.1f}'}"
                    for k, label in COLUMNS) + f" ({time.time() - started:.0f} s)", flush=True)
        print(f"\n{recipe}: after the last experience, mean +- std over seeds {args.seeds}, %")
        print(f"| method | {' | '.join(label for _, label in COLUMNS)} |")
        print("|---" * (len(COLUMNS) + 1) + "|")
        for method, runs in rows.items():
            print(f"| {method} | " + " | ".join(cell([r[k] for r in runs]) for k, _ in COLUMNS) + " |")
        for method, ms in matrices.items():
            mean = 100 * np.nanmean([[[np.nan if v is None else v for v in row] for row in m] for m in ms], axis=0)
            print(f"\n{recipe}, {method}: accuracy matrix (rows: after experience i; columns: experience j), "
                  f"mean over seeds, %")
            for i, line in enumerate(mean):
                print(f"  {i:>3} " + " ".join(f"{v:5.1f}" for v in line))


if __name__ == "__main__":
    main()
