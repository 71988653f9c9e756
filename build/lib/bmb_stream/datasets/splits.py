"""Long-tailed splits exactly as the published protocols define them (see docs: protocols)."""

from __future__ import annotations

import math

import numpy as np

from bmb_stream.errors import BadData


def long_tailed_counts(head: int, gamma: float, num_classes: int) -> list[int]:
    """N_k = int(head * gamma ** (-(k - 1) / (C - 1))), k = 1..C, class 1 the head.

    gamma = 1 is uniform; a negative gamma or one below 1 (the reciprocal) is the reversed list:
    gamma = -100 and gamma = 0.01 both give the head count to the last class.
    """
    if head < 0:
        raise BadData(f"head count must be >= 0, got {head}: set dataset.n1 / dataset.m1 to 0 or more")
    if gamma == 0:
        raise BadData("imbalance ratio gamma must be non-zero: set dataset.gamma_l / dataset.gamma_u")
    reverse = gamma < 0 or abs(gamma) < 1
    ratio = abs(gamma) if abs(gamma) >= 1 else 1.0 / abs(gamma)
    if num_classes == 1:
        return [head]
    counts = [int(head * ratio ** (-(k / (num_classes - 1)))) for k in range(num_classes)]
    return counts[::-1] if reverse else counts


def indices_by_class(targets: np.ndarray, num_classes: int, shuffle_seed: int | None) -> list[np.ndarray]:
    """Indices of each class in dataset order, shuffled per class with the seed unless it is None."""
    targets = np.asarray(targets)
    rng = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
    out = []
    for c in range(num_classes):
        idx = np.flatnonzero(targets == c)
        if rng is not None:
            idx = rng.permutation(idx)
        out.append(idx)
    return out


def split_by_counts(targets: np.ndarray, num_classes: int, n1: int, m1: int, gamma_l: float, gamma_u: float,
                    shuffle_seed: int | None, class_names: list[str] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Family-B split: labeled = first N_k of class k; unlabeled = first N_k + M_k (labeled included)."""
    n_counts = long_tailed_counts(n1, gamma_l, num_classes)
    m_counts = long_tailed_counts(m1, gamma_u, num_classes)
    per_class = indices_by_class(targets, num_classes, shuffle_seed)
    labeled, unlabeled = [], []
    for c, idx in enumerate(per_class):
        need = n_counts[c] + m_counts[c]
        if need > len(idx):
            name = f" ({class_names[c]})" if c < len(class_names) else ""
            raise BadData(f"class {c} has {len(idx)} images{name}, the split needs {n_counts[c]} labeled + "
                          f"{m_counts[c]} unlabeled = {need}: lower dataset.n1 / dataset.m1, or make "
                          f"|dataset.gamma_l| / |dataset.gamma_u| larger (every class but the head shrinks)")
        labeled.append(idx[: n_counts[c]])
        unlabeled.append(idx[:need])
    return np.concatenate(labeled), np.concatenate(unlabeled)


def split_by_ratio(targets: np.ndarray, num_classes: int, ratio: float, rounding: str,
                   shuffle_seed: int | None) -> tuple[np.ndarray, np.ndarray]:
    """ImageNet-style split: labeled = first ceil or round(n_k * ratio) of class k; unlabeled = all."""
    if not 0 < ratio <= 1:
        raise BadData(f"dataset.labeled_ratio={ratio}: must be in (0, 1]")
    take = {"ceil": math.ceil, "round": round}.get(rounding)
    if take is None:
        raise BadData(f"dataset.ratio_rounding={rounding}: must be ceil or round")
    per_class = indices_by_class(targets, num_classes, shuffle_seed)
    labeled = [idx[: take(len(idx) * ratio)] for idx in per_class]
    return np.concatenate(labeled), np.arange(len(targets))


def class_histogram(targets: np.ndarray, num_classes: int) -> list[int]:
    return np.bincount(np.asarray(targets, dtype=np.int64), minlength=num_classes).tolist()
