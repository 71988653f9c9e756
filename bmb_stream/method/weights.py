"""Adaptive per-class loss weights and the online estimate of the pseudo-label distribution."""

from __future__ import annotations

import torch


def class_weights(stat: torch.Tensor | None, alpha: float, num_classes: int, floor: float = 1e-3) -> torch.Tensor:
    """w_k = (min_c s_c / s_k) ** alpha with s = max(stat, floor): the rarest class gets 1, the head less.

    Without a statistic yet (None) every weight is 1.
    """
    if stat is None:
        return torch.ones(num_classes)
    s = stat.float().clamp_min(floor)
    return (s.min() / s) ** alpha


class PseudoLabelEstimate:
    """Nhat: per class, the expected number of confident pseudo-labels of that class in a batch.

    `cumulative` is the mean over all steps since the last reset (the reference, never forgets);
    `ema` is an exponential moving average with `momentum`, which follows a drifting class mix.
    """

    KINDS = ("cumulative", "ema")

    def __init__(self, num_classes: int, kind: str = "cumulative", momentum: float = 0.99):
        if kind not in self.KINDS:
            raise ValueError(f"unknown estimate kind {kind!r}; accepted: {', '.join(self.KINDS)}")
        self.num_classes = num_classes
        self.kind = kind
        self.momentum = momentum
        self.reset()

    def reset(self) -> None:
        self.total = torch.zeros(self.num_classes, dtype=torch.float64)
        self.steps = 0

    def update(self, step_counts: torch.Tensor) -> None:
        counts = step_counts.detach().cpu().to(torch.float64)
        if self.kind == "cumulative":
            self.total = self.total + counts
        elif self.steps == 0:  # the first observation initialises the average
            self.total = counts.clone()
        else:
            self.total = self.momentum * self.total + (1.0 - self.momentum) * counts
        self.steps += 1

    def value(self) -> torch.Tensor | None:
        if self.steps == 0:
            return None
        return (self.total / self.steps if self.kind == "cumulative" else self.total).float()

    def state_dict(self) -> dict:
        return {"total": self.total.clone(), "steps": self.steps, "kind": self.kind}

    def load_state_dict(self, state: dict) -> None:
        self.total = state["total"].to("cpu", torch.float64)
        self.steps = int(state["steps"])
