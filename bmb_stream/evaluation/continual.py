"""Continual-learning metrics of a stream, from its evaluations' per-class test accuracies.

An experience's accuracy is the test set's per-class accuracy weighted by that experience's class
prior (its shards' class histograms, from the stream's manifest): the accuracy on data distributed as
that experience was. For a stream that introduces classes, that is the accuracy on its classes; for a
stream whose prior drifts, the accuracy under that phase's prior. Rows of the accuracy matrix are the
evaluations (each after experience `trained[r]`), columns the stream's experiences, trained or not.

- `average_accuracy`: the mean over the experiences trained so far of their accuracy now (ACC, Lopez-Paz
  and Ranzato 2017).
- `bwt`, backward transfer: per experience trained before the last evaluation, its accuracy now minus
  its accuracy at the first evaluation after it was trained; the mean over those experiences (Avalanche's
  `BWT` gives each). Negative: forgetting.
- `fwt`, forward transfer: per experience evaluated just before it was trained (after the previous
  one), that accuracy minus the initial model's (before any training); the mean (Avalanche's
  `ForwardTransfer` gives each).
- `forgetting_per_class`: per class, its best accuracy at an earlier evaluation minus its accuracy now
  (Chaudhry et al. 2018); `forgetting` is its mean over the classes that have one.
- `prior_accuracy`: the test accuracy weighted by the prior of the experiences trained since the
  previous evaluation (what the stream showed last), beside the balanced accuracy (a uniform prior).
"""

from __future__ import annotations

import warnings

import numpy as np

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="no QP solver found")
    from avalanche.evaluation.metrics import BWT, ForwardTransfer

# what an evaluation record keeps: its own row of the accuracy matrix (`experience_accuracy`), so that a
# long stream's records stay the size of one row; summary.json assembles the matrix from them
KEYS = ("experience_accuracy", "average_accuracy", "bwt", "fwt", "forgetting_per_class", "forgetting", "prior_accuracy")


def prior_weighted(per_class_acc, histogram) -> float | None:
    """sum_c p_c acc_c with p the histogram normalised over the classes that have test images (None: no mass there)."""
    acc, p = np.asarray(per_class_acc, dtype=float), np.asarray(histogram, dtype=float)
    p = np.where(np.isnan(acc), 0.0, p)
    return float((p * np.nan_to_num(acc)).sum() / p.sum()) if p.sum() > 0 else None


def accuracy_matrix(rows: list[list[float]], histograms: list) -> list[list[float | None]]:
    """Row r, column j: evaluation r's accuracy under experience j's prior (`prior_weighted`, for all at once)."""
    acc, p = np.asarray(rows, dtype=float), np.asarray(histograms, dtype=float)
    weight = (~np.isnan(acc)).astype(float) @ p.T
    weighted = np.nan_to_num(acc) @ p.T
    return [[float(w / m) if m > 0 else None for w, m in zip(wr, mr)] for wr, mr in zip(weighted, weight)]


def class_forgetting(rows: list[list[float]]) -> list[float | None]:
    """Per class: the best accuracy of an earlier evaluation minus the last one's (None: no earlier one)."""
    if len(rows) < 2:
        return [None] * (len(rows[0]) if rows else 0)
    earlier, last = np.asarray(rows[:-1], dtype=float), np.asarray(rows[-1], dtype=float)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="All-NaN slice")
        best = np.nanmax(earlier, axis=0)
    return [None if np.isnan(b) or np.isnan(a) else float(b - a) for b, a in zip(best, last)]


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def continual_metrics(rows: list[list[float]], trained: list[int], histograms: list | None,
                      initial: list[float] | None = None) -> dict:
    """The metrics above after the last of `rows` (each evaluation's per-class accuracy; `trained[r]`:
    the last experience trained before evaluation r). `histograms`: each experience's class histogram
    (None: unknown, and only the per-class metrics are given). `initial`: the per-class accuracy of the
    model before training (for `fwt`)."""
    forgetting = class_forgetting(rows)
    out = {"forgetting_per_class": forgetting, "forgetting": _mean(forgetting)}
    if histograms is None:
        return out
    matrix = accuracy_matrix(rows, histograms)
    last = len(rows) - 1
    first_after = {}  # experience -> the first evaluation after it was trained
    for r, k in enumerate(trained):
        for j in range(k + 1):
            first_after.setdefault(j, r)
    bwt = BWT()
    for j, r in first_after.items():
        if r < last and matrix[r][j] is not None and matrix[last][j] is not None:
            bwt.update_initial(j, matrix[r][j])
            bwt.update_last(j, matrix[last][j])
    fwt = ForwardTransfer()
    if initial is not None:
        for r, k in enumerate(trained):
            j = k + 1  # evaluated after experience k, before experience k + 1 was trained
            if j < len(histograms) and matrix[r][j] is not None:
                start = prior_weighted(initial, histograms[j])
                if start is not None:
                    fwt.update_initial(j, start)
                    fwt.update_previous(j, matrix[r][j])
    since = trained[last - 1] + 1 if last > 0 else 0  # the experiences shown since the previous evaluation
    shown = np.sum([histograms[j] for j in range(since, trained[last] + 1)], axis=0)
    out.update({"experience_accuracy": matrix[last],
                "average_accuracy": _mean(matrix[last][j] for j in range(trained[last] + 1)),
                "bwt": _mean(bwt.result().values()), "fwt": _mean(fwt.result().values()),
                "prior_accuracy": prior_weighted(rows[last], shown)})
    return out
