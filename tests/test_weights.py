import pytest
import torch

from bmb_stream.method.weights import PseudoLabelEstimate, class_weights


def test_class_weight_formula():
    w = class_weights(torch.tensor([100.0, 10.0, 1.0]), alpha=1.0, num_classes=3)
    assert torch.allclose(w, torch.tensor([0.01, 0.1, 1.0]))
    w = class_weights(torch.tensor([4.0, 1.0]), alpha=1.5, num_classes=2)
    assert torch.allclose(w, torch.tensor([0.125, 1.0]))


def test_rarest_class_gets_one_and_all_weights_in_unit_interval():
    w = class_weights(torch.tensor([7.0, 3.0, 11.0, 0.5]), alpha=0.75, num_classes=4)
    assert w.max() == pytest.approx(1.0) and w.argmax() == 3
    assert torch.all((w > 0) & (w <= 1))


def test_floor_for_absent_classes():
    w = class_weights(torch.tensor([0.0, 2.0]), alpha=1.0, num_classes=2)
    assert torch.allclose(w, torch.tensor([1.0, 1e-3 / 2.0]))


def test_no_statistic_means_unit_weights():
    assert torch.equal(class_weights(None, alpha=1.5, num_classes=5), torch.ones(5))


def test_cumulative_estimate_is_the_mean_per_step_and_resets():
    est = PseudoLabelEstimate(3, "cumulative")
    assert est.value() is None
    est.update(torch.tensor([4, 0, 2]))
    est.update(torch.tensor([2, 2, 0]))
    assert torch.allclose(est.value(), torch.tensor([3.0, 1.0, 1.0]))
    est.reset()
    assert est.value() is None
    est.update(torch.tensor([1, 1, 1]))
    assert torch.allclose(est.value(), torch.ones(3))


def test_ema_estimate_follows_drift():
    est = PseudoLabelEstimate(2, "ema", momentum=0.9)
    est.update(torch.tensor([10, 0]))
    assert torch.allclose(est.value(), torch.tensor([10.0, 0.0]))
    est.update(torch.tensor([0, 10]))
    assert torch.allclose(est.value(), torch.tensor([9.0, 1.0]))
    for _ in range(200):
        est.update(torch.tensor([0, 10]))
    assert est.value()[1] > 9.9 and est.value()[0] < 0.1
    cum = PseudoLabelEstimate(2, "cumulative")
    cum.update(torch.tensor([10, 0]))
    for _ in range(200):
        cum.update(torch.tensor([0, 10]))
    assert cum.value()[0] > 0.04  # the cumulative mean never forgets


def test_estimate_state_round_trip():
    a = PseudoLabelEstimate(2, "ema", momentum=0.5)
    a.update(torch.tensor([1, 3]))
    a.update(torch.tensor([5, 3]))
    b = PseudoLabelEstimate(2, "ema", momentum=0.5)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.value(), b.value())


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="cumulative"):
        PseudoLabelEstimate(2, "median")
