"""FixMatch (Sohn et al., NeurIPS 2020): one head; both strong views learn the weak view's argmax
where it is at least `tau` confident. The base of BMB, ABC and CDMAD."""

from __future__ import annotations

from dataclasses import dataclass

from bmb_stream.algorithms.base import Algorithm, Batch, MethodConfig, StepOutput, active, forward_all
from bmb_stream.config_checks import COUNT, FRACTION, NON_NEGATIVE, key
from bmb_stream.method.losses import hard_pseudo_label_loss, labeled_loss, pseudo_labels


@dataclass
class FixMatchConfig(MethodConfig):
    name: str = "fixmatch"
    tau: float = key(FRACTION, 0.95)  # confidence threshold of pseudo-labels
    lambda_u: float = key(NON_NEGATIVE, 1.0)  # weight of the unlabeled term
    warmup: int = key(COUNT, 0)  # steps before the unlabeled terms start


def fixmatch_losses(head, f_l, y_l, f_w, f_s, tau: float):
    """FixMatch's terms for one head: the labeled CE, and the CE of both strong views against the weak
    view's confident argmax; also the pseudo-labels and their mask."""
    loss_l = labeled_loss(head(f_l), y_l)
    _, yhat, mask = pseudo_labels(head(f_w), tau)
    loss_u = hard_pseudo_label_loss(head(f_s), yhat.repeat(2), mask.repeat(2))
    return loss_l, loss_u, yhat, mask


def fixmatch_step(model, batch: Batch, cfg: FixMatchConfig, step: int) -> StepOutput:
    f_l, f_w, f_s = forward_all(model, batch)
    loss_l, loss_u, yhat, mask = fixmatch_losses(model.head_std, f_l, batch.y_labeled, f_w, f_s, cfg.tau)
    loss = loss_l + active(step, cfg.warmup) * cfg.lambda_u * loss_u
    return StepOutput(loss, {"loss_l": loss_l.detach(), "loss_u": loss_u.detach(), "mask": mask.float().mean()},
                      extras={"pseudo_labels": yhat, "mask": mask})


class FixMatch(Algorithm):
    name = "fixmatch"
    Config = FixMatchConfig

    def step(self, model, batch: Batch, step: int) -> StepOutput:
        return fixmatch_step(model, batch, self.cfg, step)
