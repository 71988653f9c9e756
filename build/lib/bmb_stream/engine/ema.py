"""Exponential moving average of the weights, batch-norm buffers included (as in the reference)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay_at(step: int, decay: float, warmup: bool) -> float:
    """The decay used after `step` updates: fixed, or min(decay, (1 + t) / (10 + t)) with warm-up,
    so that a short run is not dominated by the initial weights (0.999 ** 1000 = 0.37)."""
    return min(decay, (1.0 + step) / (10.0 + step)) if warmup else decay


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float, warmup: bool = False):
        self.module = copy.deepcopy(model)
        self.module.requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = ema_decay_at(self.updates, self.decay, self.warmup)
        online = model.state_dict()
        for name, avg in self.module.state_dict().items():
            if avg.dtype.is_floating_point:
                avg.mul_(d).add_(online[name].detach(), alpha=1.0 - d)
            else:  # counters such as num_batches_tracked
                avg.copy_(online[name])
        self.updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
