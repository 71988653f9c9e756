import math

import pytest
import torch
import torch.nn.functional as F

from bmb_stream.method.losses import hard_pseudo_label_loss, labeled_loss, pseudo_labels, soft_pseudo_label_loss


def test_labeled_loss_weights_each_sample_by_its_class():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([0, 1, 1])
    ce = F.cross_entropy(logits, y, reduction="none")
    w = torch.tensor([0.1, 1.0])
    assert labeled_loss(logits, y).item() == pytest.approx(ce.mean().item())
    assert labeled_loss(logits, y, w).item() == pytest.approx(((ce * torch.tensor([0.1, 1.0, 1.0])).mean()).item())


def test_pseudo_labels_threshold_is_inclusive_and_detached():
    logits = torch.log(torch.tensor([[0.95, 0.05], [0.6, 0.4], [0.02, 0.98]])).requires_grad_()
    probs, labels, mask = pseudo_labels(logits, 0.95)
    assert labels.tolist() == [0, 0, 1]
    assert mask.tolist() == [True, False, True]
    assert not probs.requires_grad


def test_hard_loss_divides_by_all_samples_not_the_masked_ones():
    logits = torch.tensor([[3.0, 0.0], [0.0, 3.0], [1.0, 0.0], [0.0, 0.0]])
    targets = torch.tensor([0, 0, 0, 1])
    mask = torch.tensor([True, True, False, False])
    ce = F.cross_entropy(logits, targets, reduction="none")
    assert hard_pseudo_label_loss(logits, targets, mask).item() == pytest.approx((ce[0] + ce[1]).item() / 4)
    assert hard_pseudo_label_loss(logits, targets, torch.zeros(4, dtype=torch.bool)).item() == 0.0


def test_soft_loss_uses_soft_targets_mask_and_class_weights():
    strong = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.5, 0.5]])
    p = torch.tensor([[0.97, 0.03], [0.1, 0.9], [0.96, 0.04]])
    mask = torch.tensor([True, False, True])
    w = torch.tensor([0.5, 1.0])
    log_q = F.log_softmax(strong, dim=1)
    h = -(p * log_q).sum(1)
    expected = (0.5 * h[0] + 0.5 * h[2]) / 3
    assert soft_pseudo_label_loss(strong, p, mask, w).item() == pytest.approx(expected.item())
    assert soft_pseudo_label_loss(strong, p, mask).item() == pytest.approx(((h[0] + h[2]) / 3).item())
    # soft, not hard: a hard target would give CE(strong, argmax p), a different number
    hard = hard_pseudo_label_loss(strong, p.argmax(1), mask)
    assert not math.isclose(hard.item(), soft_pseudo_label_loss(strong, p, mask).item(), rel_tol=1e-3)
