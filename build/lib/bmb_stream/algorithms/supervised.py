"""The supervised baseline: the labeled set alone, cross-entropy on the weak view."""

from __future__ import annotations

from dataclasses import dataclass

from bmb_stream.algorithms.base import Algorithm, Batch, MethodConfig, StepOutput
from bmb_stream.method.losses import labeled_loss


@dataclass
class SupervisedConfig(MethodConfig):
    name: str = "supervised"


def supervised_step(model, batch: Batch) -> StepOutput:
    loss = labeled_loss(model.head_std(model(batch.x_labeled)), batch.y_labeled)
    return StepOutput(loss, {"loss_l": loss.detach()})


class Supervised(Algorithm):
    name = "supervised"
    Config = SupervisedConfig
    needs_unlabeled = False

    def step(self, model, batch: Batch, step: int) -> StepOutput:
        return supervised_step(model, batch)
