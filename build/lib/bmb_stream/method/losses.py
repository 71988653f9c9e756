"""The loss terms of BMB and FixMatch as pure functions over logits and targets.

Every unlabeled term is a mean over all unlabeled samples of the batch, masked ones included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def labeled_loss(logits: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """mean_i w[y_i] * CE(logits_i, y_i); unweighted when `class_weights` is None."""
    ce = F.cross_entropy(logits, targets, reduction="none")
    if class_weights is not None:
        ce = ce * class_weights.to(ce.device)[targets]
    return ce.mean()


def hard_pseudo_label_loss(strong_logits: torch.Tensor, pseudo_labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """FixMatch's term: mean of mask * CE(strong logits, argmax of the weak view)."""
    ce = F.cross_entropy(strong_logits, pseudo_labels, reduction="none")
    return (ce * mask.float()).mean()


def soft_pseudo_label_loss(strong_logits: torch.Tensor, weak_probs: torch.Tensor, mask: torch.Tensor,
                           class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """BMB's balanced-head term: mean of mask * w[argmax p] * H(p, softmax(strong logits))."""
    ce = -(weak_probs * F.log_softmax(strong_logits, dim=1)).sum(dim=1)
    weight = mask.float()
    if class_weights is not None:
        weight = weight * class_weights.to(ce.device)[weak_probs.argmax(dim=1)]
    return (ce * weight).mean()


def pseudo_labels(weak_logits: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Detached probabilities, hard labels and the confidence mask (max p >= tau) of a weak view."""
    probs = weak_logits.detach().float().softmax(dim=1)
    confidence, labels = probs.max(dim=1)
    return probs, labels, confidence >= tau
