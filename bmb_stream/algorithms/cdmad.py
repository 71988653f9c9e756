"""CDMAD, Class-Distribution-Mismatch-Aware Debiasing (Lee and Kim, CVPR 2024), on FixMatch.

No new parameter and no new loss: the classifier's bias toward the head classes is measured as its
logits on an image without any pattern, b = g(I) (I: every entry 1.0 in the normalised input space,
a light grey), and subtracted from the logits

- in training, from the weak view's logits before the pseudo-labels are made (after `debias_start`
  of the run; b is measured at every step, raw weights, train mode, a forward pass of its own):

      q_b = softmax(g(weak u_b) - b);  L_u = 1/(2 mu B) sum_b sum_{k=1,2} [max q_b >= tau] H(q_b, g(strong_k u_b))

  with the authors' FixMatch variant: `tau` 0 (every sample counts) and soft targets q_b;
  `soft_targets: false` with `tau: 0.95` gives plain FixMatch's hard labels with the refinement;
- at test time: prediction = argmax_k (g(x)_k - g(I)_k), with the evaluated (EMA) model in eval mode.
  The unrefined logits are reported beside it.

The authors start refining after epoch 100 of 500 (step 50,500 of 250,000): `debias_start` is that
fraction of the run (0.2), so that it takes effect in short runs and streams.

Published (Lee and Kim 2024, Table 1, FixMatch+CDMAD, CIFAR-10-LT gamma 100, N1 1500, M1 3000):
83.6 +- 0.5 bACC / 83.1 +- 0.6 GM, with their recipe (Adam 1.5e-3, B 32, mu 2; see configs/method/cdmad.yaml).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from bmb_stream.algorithms.base import Batch, StepOutput, active, forward_all, unwrapped
from bmb_stream.algorithms.fixmatch import FixMatch, FixMatchConfig
from bmb_stream.config_checks import choice, key, number
from bmb_stream.method.losses import hard_pseudo_label_loss, labeled_loss, pseudo_labels, soft_pseudo_label_loss

BIAS_BATCH_NORM = ("batch", "running")


@dataclass
class CDMADConfig(FixMatchConfig):
    name: str = "cdmad"
    tau: float = key(number(0, 1), 0.0)  # 0: every pseudo-label counts (the authors' variant)
    soft_targets: bool = True  # the refined distribution as the target (false: its argmax)
    debias_start: float = key(number(0, 1), 0.2)  # the fraction of the run after which pseudo-labels are refined
    # batch: the bias image's forward pass in train mode, batch norm with its own statistics, updating the
    # running ones (the authors') | running: in eval mode, with the running statistics, which it leaves alone
    bias_batch_norm: str = key(choice(*BIAS_BATCH_NORM), "batch")
    # every entry of the bias image in the normalised input space: 1.0 is the authors' light grey; the
    # paper asks only for "an image without any patterns" (0.0: the data's mean colour)
    bias_value: float = key(number(), 1.0)


def bias_image(like: torch.Tensor, value: float = 1.0) -> torch.Tensor:
    """One image of the input's shape whose every entry is `value` after normalisation (not passed through it)."""
    return torch.full_like(like[:1], value)


def refined_pseudo_labels(weak_logits: torch.Tensor, bias: torch.Tensor | None, tau: float):
    """softmax(z - b) (z itself without a bias), its argmax and the confidence mask max >= tau."""
    z = weak_logits.detach()
    return pseudo_labels(z - bias if bias is not None else z, tau)


@torch.no_grad()
def training_bias(classifier, like: torch.Tensor, batch_norm: str, value: float = 1.0) -> torch.Tensor:
    """b with the raw weights: in train mode, a batch of one whose batch-norm statistics count (and
    update the running ones), or in eval mode with the running statistics."""
    classifier.train(batch_norm == "batch")
    try:
        return classifier.head_std(classifier(bias_image(like, value)))[0].float()
    finally:
        classifier.train(True)


def cdmad_step(model, batch: Batch, cfg: CDMADConfig, step: int, debias: bool) -> StepOutput:
    bias = training_bias(unwrapped(model), batch.u_weak, cfg.bias_batch_norm, cfg.bias_value)
    f_l, f_w, f_s = forward_all(model, batch)
    loss_l = labeled_loss(model.head_std(f_l), batch.y_labeled)
    probs, labels, mask = refined_pseudo_labels(model.head_std(f_w), bias if debias else None, cfg.tau)
    strong = model.head_std(f_s)
    if cfg.soft_targets:
        loss_u = soft_pseudo_label_loss(strong, probs.repeat(2, 1), mask.repeat(2))
    else:
        loss_u = hard_pseudo_label_loss(strong, labels.repeat(2), mask.repeat(2))
    loss = loss_l + active(step, cfg.warmup) * cfg.lambda_u * loss_u
    terms = {"loss_l": loss_l.detach(), "loss_u": loss_u.detach(), "mask": mask.float().mean(),
             "bias_spread": (bias.max() - bias.min()).detach()}
    return StepOutput(loss, terms, extras={"pseudo_labels": labels, "mask": mask})


class CDMAD(FixMatch):
    name = "cdmad"
    Config = CDMADConfig
    test_rule = "logits refined by the bias image's"

    @property
    def needs_horizon(self) -> bool:
        return 0.0 < self.cfg.debias_start  # the refinement starts at a fraction of the run

    def step(self, model, batch: Batch, step: int) -> StepOutput:
        debias = self.progress(step) >= self.cfg.debias_start
        return cdmad_step(model, batch, self.cfg, step, debias)

    def test_logits(self, classifier, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # in eval mode an image's logits do not depend on its batch: the bias image rides along
        logits = classifier.head_std(classifier(torch.cat([x, bias_image(x, self.cfg.bias_value)])))
        return {"rule": logits[:-1] - logits[-1], "plain": logits[:-1]}

    @classmethod
    @torch.no_grad()
    def exported_head(cls, cfg, classifier, example):
        # z(x) - z(bias) = W f(x) + b - (W f(bias) + b): the same head with the bias -W f(bias)
        head = copy.deepcopy(classifier.head_std)
        head.bias.copy_(-(head.weight @ classifier(bias_image(example, cfg.bias_value))[0]))
        return head
