"""ABC's formulas on hand-made tensors (../shared/docs/baselines.md, section 4)."""

import copy
import math

import pytest
import torch

from bmb_stream.algorithms import Setup, build_algorithm
from bmb_stream.algorithms.abc import (abc_losses, bernoulli_mask, keep_probabilities, unlabeled_keep_probabilities)
from bmb_stream.algorithms.base import Batch, forward_all
from bmb_stream.algorithms.fixmatch import fixmatch_losses
from bmb_stream.models import build_model


def make_batch(seed=0, b=6, u=6, classes=3):
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(b, 3, 16, 16, generator=g), torch.arange(b) % classes,
                 *(torch.randn(u, 3, 16, 16, generator=g) for _ in range(3)))


def abc(labeled_counts, total_steps=100, **cfg):
    model = build_model("small_cnn", len(labeled_counts), width=4)
    setup = Setup(len(labeled_counts), torch.tensor(labeled_counts, dtype=torch.float32), model.feature_dim,
                  torch.device("cpu"), total_steps=total_steps)
    return build_algorithm({"name": "abc", **cfg}, setup), model


def test_equal_labeled_counts_keep_every_sample():
    r = keep_probabilities(torch.tensor([50.0, 50.0, 50.0]))
    assert torch.equal(r, torch.ones(3))
    labels = torch.randint(0, 3, (1000,))
    for progress in (0.0, 0.5, 1.0):
        assert torch.equal(bernoulli_mask(unlabeled_keep_probabilities(r, progress), labels), torch.ones(1000))
    assert torch.equal(bernoulli_mask(r, labels), torch.ones(1000))


def test_at_the_start_every_confident_unlabeled_sample_is_kept():
    r = keep_probabilities(torch.tensor([1000.0, 100.0, 10.0]))
    assert torch.equal(unlabeled_keep_probabilities(r, 0.0), torch.ones(3))


def test_the_rarest_class_is_always_kept_and_the_head_at_its_ratio():
    torch.manual_seed(0)
    r = keep_probabilities(torch.tensor([100.0, 10.0]))
    assert r.tolist() == pytest.approx([0.1, 1.0])
    tail = bernoulli_mask(r, torch.ones(100_000, dtype=torch.long))
    head = bernoulli_mask(r, torch.zeros(100_000, dtype=torch.long))
    assert torch.equal(tail, torch.ones(100_000))
    assert float(head.mean()) == pytest.approx(0.1, abs=0.005)


def test_a_class_without_labeled_images_counts_as_the_rarest():
    assert keep_probabilities(torch.tensor([100.0, 10.0, 0.0])).tolist() == pytest.approx([0.1, 1.0, 1.0])


def test_the_unlabeled_keep_probability_decays_to_r():
    r = keep_probabilities(torch.tensor([1500.0, 323.0, 15.0]))
    rhos = [unlabeled_keep_probabilities(r, e / 500) for e in range(501)]
    for earlier, later in zip(rhos, rhos[1:]):
        assert torch.all(later <= earlier + 1e-7)
    assert torch.allclose(rhos[-1], r)


def test_the_schedule_steps_once_per_period_of_the_run():
    algorithm, _ = abc([10, 10], total_steps=1000, schedule_periods=10)
    assert [algorithm.progress(s, 10) for s in (0, 99, 100, 999, 1000)] == [0.0, 0.0, 0.1, 0.9, 1.0]
    assert algorithm.progress(250) == 0.25 and algorithm.needs_horizon


def test_all_zero_logits_give_log_c_on_kept_labeled_samples_and_no_consistency_term():
    classes, b = 4, 8
    head = torch.nn.Linear(5, classes)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    f_l, f_w, f_s = torch.randn(b, 5), torch.randn(b, 5), torch.randn(2 * b, 5)
    y = torch.arange(b) % classes
    torch.manual_seed(0)
    r = keep_probabilities(torch.tensor([100.0, 50.0, 20.0, 10.0]))
    loss_cls, loss_con, _, confident, kept = abc_losses(head, f_l, y, f_w, f_s, r, 0.0, 0.95)
    torch.manual_seed(0)
    draws = bernoulli_mask(r, y)  # the same draw abc_losses made first
    assert loss_cls.item() == pytest.approx(float(draws.sum()) / b * math.log(classes), rel=1e-5)
    assert loss_con.item() == 0.0 and not confident.any() and not kept.any()  # max q = 1/C < 0.95


def test_the_total_is_the_sum_of_the_four_terms():
    algorithm, model = abc([100, 30, 10], abc_tau=0.0, tau=0.0)
    out = algorithm.step(model, make_batch(), 0)
    t = out.terms
    assert out.loss.item() == pytest.approx(float(t["loss_l"] + t["loss_u"] + t["loss_cls"] + t["loss_con"]), rel=1e-5)
    assert float(t["kept"]) == 1.0  # progress 0: every confident sample is kept
    assert float(t["loss_con"]) > 0


def test_each_part_trains_its_own_head_and_no_gradient_reaches_the_weak_view():
    algorithm, model = abc([100, 30, 10], abc_tau=0.0, tau=0.0)
    batch = make_batch()
    f_l, f_w, f_s = (f.detach().requires_grad_() for f in forward_all(model, batch))
    loss_cls, loss_con, *_ = abc_losses(model.head_bal, f_l, batch.y_labeled, f_w, f_s, algorithm.r, 0.0, 0.0)
    (loss_cls + loss_con).backward()
    assert model.head_std.weight.grad is None and model.head_bal.weight.grad.abs().sum() > 0
    assert f_w.grad is None
    model.zero_grad(set_to_none=True)
    loss_l, loss_u, _, _ = fixmatch_losses(model.head_std, f_l, batch.y_labeled, f_w, f_s, 0.0)
    (loss_l + loss_u).backward()
    assert model.head_bal.weight.grad is None and model.head_std.weight.grad.abs().sum() > 0
    assert f_w.grad is None


def test_test_predictions_come_from_the_auxiliary_head_whatever_the_standard_one():
    algorithm, model = abc([100, 30, 10])
    model.eval()
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        before = algorithm.test_logits(model, x)
        other = copy.deepcopy(model)
        torch.nn.init.normal_(other.head_std.weight)
        after = algorithm.test_logits(other, x)
    assert torch.equal(before["rule"], after["rule"]) and not torch.equal(before["plain"], after["plain"])
    assert torch.allclose(before["rule"], model.head_bal(model(x)))
