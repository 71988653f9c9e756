"""Adaptive per-class loss weights and the online estimate of the pseudo-label distribution."""

from __future__ import annotations

import torch

COUNT_RULES = ("reference", "present")  # what a class the statistic has not seen does to the others (relative_rarity)
ESTIMATE_KINDS = ("cumulative", "ema")


def relative_rarity(stat: torch.Tensor, power: float, floor: float = 1e-3, rule: str = "reference") -> torch.Tensor:
    """(min_c s_c / s_k) ** power with s = max(stat, floor): 1 for the rarest class, less for the head.

    BMB's put probabilities, class weights and (normalised) draw weights are all this ratio.
    `reference`: the minimum runs over every class, so a single class below the floor (absent) pins it
    at the floor and every other class gets ~(floor / s_k) ** power ~ 0: the gate that keeps the bank
    nearly empty and the unlabeled weights off until the last class shows up.
    `present`: the minimum runs over the classes at or above the floor (those the statistic has seen);
    a class below it counts as the rarest (1) and does not pull the others down. It equals `reference`
    whenever every class is at or above the floor, so the rebalancing among seen classes is unchanged.
    """
    if rule not in COUNT_RULES:
        raise ValueError(f"unknown count rule {rule!r}; accepted: {', '.join(COUNT_RULES)}")
    s = stat.float().clamp_min(floor)
    if rule == "reference":
        return (s.min() / s) ** power
    seen = stat.float() >= floor
    if not seen.any():
        return torch.ones_like(s)
    return torch.where(seen, (s[seen].min() / s) ** power, torch.ones_like(s))


def class_weights(stat: torch.Tensor | None, alpha: float, num_classes: int, floor: float = 1e-3,
                  rule: str = "reference") -> torch.Tensor:
    """w_k = (min_c s_c / s_k) ** alpha with s = max(stat, floor): the rarest class gets 1, the head less.

    Without a statistic yet (None) every weight is 1. `rule`: see `relative_rarity` (`present` keeps a
    class with no confident pseudo-label yet from zeroing everyone else's unlabeled weight).
    """
    if stat is None:
        return torch.ones(num_classes)
    return relative_rarity(stat, alpha, floor, rule)


class PseudoLabelEstimate:
    """Nhat: per class, the expected number of confident pseudo-labels of that class in a batch.

    `cumulative` is the mean over all steps since the last reset (the reference, never forgets);
    `ema` is an exponential moving average with `momentum`, which follows a drifting class mix.
    """

    KINDS = ESTIMATE_KINDS

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
