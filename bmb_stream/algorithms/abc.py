"""ABC, the Auxiliary Balanced Classifier (Lee, Shin and Kim, NeurIPS 2021), on FixMatch.

FixMatch trains the backbone and its head (`head_std`) as usual. A second linear head on the same,
non-detached features (`head_bal`, ABC's auxiliary classifier) learns from the same images through
Bernoulli masks that keep a sample of class k with probability r_k = N_L / N_k (labeled counts, N_L
the smallest), so that it sees a class-balanced stream:

    L_cls = 1/B * sum_b M_b CE(h_abc(x_b), y_b)                      M_b ~ Bernoulli(r[y_b])
    q_b = softmax(h_abc(weak u_b)) (detached), c_b = argmax q_b, s_b = [max q_b >= abc_tau]
    L_con = 1/(mu B) * sum_b sum_{k=1,2} s_b M'_b H(q_b, h_abc(strong_k u_b))   M'_b ~ Bernoulli(rho(c_b))
    rho(k) = 1 - progress * (1 - r_k)                                 1 at the start, r_k at the end
    L = L_x + L_u (FixMatch) + L_cls + L_con

Test-time rule: predictions come from the auxiliary head; the FixMatch head is reported beside it.
The authors step `progress` once per epoch of their 500 (e / 500); here it is the fraction of the
run done, stepped `schedule_periods` times (0: every step), so that it takes effect in short runs and
in streams. They run each view through the network separately; this project runs one forward pass
over all views, as its other algorithms do.

Published (Lee et al. 2021, Table 1, FixMatch+ABC, CIFAR-10-LT gamma 100, their split): 81.1
overall accuracy / 72.0 minority-class accuracy; in CDMAD's protocol (N1 1500, M1 3000, CDMAD
Table 1): 81.1 bACC / 80.3 GM.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bmb_stream.algorithms.base import Batch, StepOutput, active, forward_all
from bmb_stream.algorithms.fixmatch import FixMatch, FixMatchConfig, fixmatch_losses
from bmb_stream.config_checks import COUNT, FRACTION, key
from bmb_stream.method.losses import pseudo_labels, soft_pseudo_label_loss


@dataclass
class ABCConfig(FixMatchConfig):
    name: str = "abc"
    abc_tau: float = key(FRACTION, 0.95)  # confidence threshold on the auxiliary head's own probabilities
    schedule_periods: int = key(COUNT, 500)  # the unlabeled keep probability steps down this many times (0: every step)


def keep_probabilities(labeled_counts: torch.Tensor) -> torch.Tensor:
    """r_k = N_L / N_k with N_L the smallest labeled count: 1 for the rarest class. A class without
    labeled images (a stream's late class) counts as the rarest: r = 1."""
    counts = labeled_counts.float()
    present = counts > 0
    if not present.any():
        return torch.ones_like(counts)
    return torch.where(present, counts[present].min() / counts.clamp_min(1e-12), torch.ones_like(counts))


def unlabeled_keep_probabilities(r: torch.Tensor, progress: float) -> torch.Tensor:
    """rho(k) = 1 - progress * (1 - r_k): every confident sample is kept at the start, about r_k at the end."""
    return 1.0 - progress * (1.0 - r)


def bernoulli_mask(keep: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One draw per sample: 1 with probability keep[label]."""
    p = keep.to(labels.device)[labels]
    return (torch.rand(p.shape, device=p.device) < p).float()


def abc_losses(head, f_l, y_l, f_w, f_s, r: torch.Tensor, progress: float, abc_tau: float):
    """ABC's two terms for the auxiliary head, and its pseudo-labels, confidence mask and keep mask."""
    ce = F.cross_entropy(head(f_l), y_l, reduction="none")
    loss_cls = (bernoulli_mask(r, y_l) * ce).mean()
    q, c, confident = pseudo_labels(head(f_w), abc_tau)
    kept = bernoulli_mask(unlabeled_keep_probabilities(r, progress), c) * confident.float()
    # summed over the two strong views (each weighs 1), where FixMatch's L_u averages them
    loss_con = 2.0 * soft_pseudo_label_loss(head(f_s), q.repeat(2, 1), kept.repeat(2))
    return loss_cls, loss_con, c, confident, kept


class ABC(FixMatch):
    name = "abc"
    Config = ABCConfig
    test_rule = "the auxiliary balanced head"

    def __init__(self, cfg: ABCConfig, setup):
        super().__init__(cfg, setup)
        self.r = keep_probabilities(setup.labeled_counts)

    @property
    def needs_horizon(self) -> bool:
        return True  # the keep probability decays over the run

    def step(self, model, batch: Batch, step: int) -> StepOutput:
        cfg = self.cfg
        f_l, f_w, f_s = forward_all(model, batch)
        loss_l, loss_u, _, _ = fixmatch_losses(model.head_std, f_l, batch.y_labeled, f_w, f_s, cfg.tau)
        loss_cls, loss_con, labels, confident, kept = abc_losses(
            model.head_bal, f_l, batch.y_labeled, f_w, f_s, self.r, self.progress(step, cfg.schedule_periods), cfg.abc_tau)
        unlabeled = active(step, cfg.warmup)
        loss = loss_l + loss_cls + unlabeled * (cfg.lambda_u * loss_u + loss_con)
        terms = {"loss_l": loss_l.detach(), "loss_u": loss_u.detach(), "loss_cls": loss_cls.detach(),
                 "loss_con": loss_con.detach(), "mask": confident.float().mean(), "kept": kept.mean()}
        return StepOutput(loss, terms, extras={"pseudo_labels": labels, "mask": confident})

    def test_logits(self, classifier, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = classifier(x)
        return {"rule": classifier.head_bal(features), "plain": classifier.head_std(features)}

    @classmethod
    def exported_head(cls, cfg, classifier, example):
        return copy.deepcopy(classifier.head_bal)
