"""Summary statistics over a run's evaluations: final, best, mean and median of the last 20."""

from __future__ import annotations

import numpy as np

SCALARS = ("balanced_acc", "raw_balanced_acc", "plain_balanced_acc", "top1_acc", "many_acc", "medium_acc", "few_acc")


def _pick(record: dict) -> dict:
    return {k: record.get(k) for k in SCALARS + ("per_class_acc",)}


def _reduce(records: list[dict], fn) -> dict:
    out = {}
    for k in SCALARS:
        vals = [r[k] for r in records if r.get(k) is not None]
        out[k] = float(fn(vals)) if vals else None
    out["per_class_acc"] = np.asarray(fn(np.asarray([r["per_class_acc"] for r in records]), axis=0)).tolist()
    return out


def summarize(history: list[dict], last: int = 20) -> dict:
    """`final`, `best` (highest balanced accuracy), `mean_last_20` and `median_last_20`."""
    if not history:
        raise ValueError("no evaluations to summarise")
    tail = history[-last:]
    best = max(history, key=lambda r: r["balanced_acc"])
    return {
        "final": _pick(history[-1]),
        "best": {**_pick(best), "step": best.get("step")},
        f"mean_last_{last}": _reduce(tail, np.mean),
        f"median_last_{last}": _reduce(tail, np.median),
    }
