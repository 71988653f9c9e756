"""Class priors over a simulated stream: one probability vector per shard, from a named schedule.

Schedules (the recipe's `prior.schedule`):
- stationary: a long tail with ratio `gamma`, class 0 the head, the same for every shard;
- uniform: every class alike;
- reversed: the long tail turned around (the last class is the head);
- rotation: the long tail whose class order rotates by `shift` classes every `period` shards;
- drift: a linear blend from the `start` prior to the `end` prior over the stream;
- class_incremental: `initial_classes` classes at first, `classes_per_step` more every `period`
  shards, a long tail with ratio `gamma` over the classes present (gamma 1: uniform);
- custom: explicit `weights`, one vector for all shards or one per shard;
- natural: the source's own class mix, every remaining image once in a random order (the stream
  planner handles it; here it is the mix of the images available).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

SCHEDULES = ("stationary", "uniform", "reversed", "rotation", "drift", "class_incremental", "custom", "natural")


@dataclass(frozen=True)
class Prior:
    """A recipe's `prior`: its schedule and the schedule's parameters, each with its default (a schedule
    reads only its own)."""

    schedule: str
    gamma: float = 1.0  # the long tail's ratio: stationary, reversed, rotation, drift, class_incremental
    shift: int = 1  # rotation: classes the order moves by every period
    period: int = 1  # rotation, class_incremental: shards between two moves
    start: str = "stationary"  # drift: the first shard's prior (stationary, uniform or reversed)
    end: str = "reversed"  # drift: the last shard's prior
    initial_classes: int = 2  # class_incremental: the classes of the first shards
    classes_per_step: int = 2  # class_incremental: classes added every period
    weights: list | None = None  # custom: one vector of class weights, or one per shard

    @classmethod
    def from_recipe(cls, prior) -> Prior:
        """The recipe's `prior` section; a key no schedule has, or an unknown schedule, is a ValueError."""
        if isinstance(prior, Prior):
            return prior
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(prior) - set(known))
        if unknown:
            raise ValueError(f"{unknown[0]}: no such key of a prior; its keys: {', '.join(known)}")
        if prior.get("schedule") not in SCHEDULES:
            raise ValueError(f"unknown prior schedule {prior.get('schedule')!r}; accepted: {', '.join(SCHEDULES)}")
        return cls(**prior)


def long_tail(num_classes: int, gamma: float) -> np.ndarray:
    """p_k proportional to gamma ** (-k / (C - 1)), k = 0..C-1 (the offline protocols' shape)."""
    if gamma < 1:
        raise ValueError(f"prior.gamma must be >= 1, got {gamma}")
    k = np.arange(num_classes)
    w = float(gamma) ** (-k / max(1, num_classes - 1))
    return w / w.sum()


def _named(name: str, num_classes: int, gamma: float) -> np.ndarray:
    shapes = {"stationary": lambda: long_tail(num_classes, gamma), "uniform": lambda: np.full(num_classes, 1.0 / num_classes),
              "reversed": lambda: long_tail(num_classes, gamma)[::-1].copy()}
    if name not in shapes:
        raise ValueError(f"drift endpoint {name!r}: accepted {', '.join(shapes)}")
    return shapes[name]()


def _normalised(w, what: str) -> np.ndarray:
    w = np.asarray(w, dtype=float)
    if np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"{what} must be non-negative with a positive sum, got {w.tolist()}")
    return w / w.sum()


def _period(prior: Prior) -> int:
    period = int(prior.period)
    if period < 1:
        raise ValueError(f"prior.period={period}: must be a positive integer")
    return period


def _custom(prior: Prior, i: int, num_classes: int, num_shards: int) -> np.ndarray:
    """Shard i's row of `prior.weights`: one vector for every shard, or one per shard."""
    weights = np.asarray(prior.weights or [], dtype=float)
    rows = weights if weights.ndim == 2 else weights[None]
    if weights.ndim not in (1, 2) or rows.shape[1] != num_classes or 1 < len(rows) < num_shards:
        raise ValueError(f"prior.weights must be {num_classes} numbers (one per class), or a row of them per "
                         f"shard ({num_shards}); got shape {weights.shape}")
    return rows[i if len(rows) > 1 else 0]


def shard_priors(prior: Prior | dict, num_classes: int, num_shards: int, available_counts=None) -> np.ndarray:
    """A (num_shards, num_classes) array whose rows are the class priors of each shard."""
    prior = Prior.from_recipe(prior)
    kind, gamma = prior.schedule, float(prior.gamma)
    rows = []
    for i in range(num_shards):
        if kind in ("stationary", "uniform", "reversed"):
            p = _named(kind, num_classes, gamma)
        elif kind == "rotation":
            steps = i // _period(prior)
            p = np.roll(long_tail(num_classes, gamma), int(prior.shift) * steps)
        elif kind == "drift":
            t = i / max(1, num_shards - 1)
            p = (1 - t) * _named(prior.start, num_classes, gamma) + t * _named(prior.end, num_classes, gamma)
        elif kind == "class_incremental":
            present = min(num_classes, int(prior.initial_classes) + int(prior.classes_per_step) * (i // _period(prior)))
            p = np.zeros(num_classes)
            p[:present] = long_tail(present, gamma) if present > 1 else 1.0
        elif kind == "natural":
            p = np.ones(num_classes) if available_counts is None else np.asarray(available_counts, dtype=float)
        elif kind == "custom":
            p = _custom(prior, i, num_classes, num_shards)
        else:
            raise ValueError(f"unknown prior schedule {kind!r}; accepted: {', '.join(SCHEDULES)}")
        rows.append(_normalised(p, f"the prior of shard {i}"))
    return np.stack(rows)
