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


# --- the count rule: `present` keeps an unseen class from zeroing everyone else's weight -------------

def test_present_rule_equals_reference_when_every_class_is_seen():
    for stat in (torch.tensor([100.0, 10.0, 1.0]), torch.tensor([7.0, 3.0, 11.0, 0.5]), torch.tensor([1e-3, 2.0])):
        assert torch.equal(class_weights(stat, 1.5, len(stat), rule="present"), class_weights(stat, 1.5, len(stat)))


def test_present_rule_with_a_class_at_nhat_zero():
    stat = torch.tensor([16.0, 4.0, 1.0, 0.0])
    ref = class_weights(stat, alpha=1.0, num_classes=4)
    assert torch.all(ref[:3] <= 1e-3)  # the reference gate: every seen class weighs ~0
    w = class_weights(stat, alpha=1.0, num_classes=4, rule="present")
    assert torch.allclose(w, torch.tensor([1 / 16, 1 / 4, 1.0, 1.0]))  # rebalanced among the seen; unseen 1
    assert w[0] < w[1] < w[2]


def test_present_rule_counts_a_statistic_below_the_floor_as_unseen():
    """An EMA estimate of a class not predicted for a while decays towards 0; below the floor the
    reference cannot tell it from 0, and `present` does not let it gate the others either."""
    w = class_weights(torch.tensor([1e-7, 2.0, 8.0]), alpha=1.0, num_classes=3, rule="present")
    assert torch.allclose(w, torch.tensor([1.0, 1.0, 0.25]))
    assert torch.equal(class_weights(torch.zeros(3), alpha=1.0, num_classes=3, rule="present"), torch.ones(3))


def test_unknown_count_rule_is_rejected():
    with pytest.raises(ValueError, match="reference, present"):
        class_weights(torch.ones(2), alpha=1.0, num_classes=2, rule="smoothed")


def test_count_rule_defaults_and_the_learner_uses_it():
    from bmb_stream.config import compose, typed
    from bmb_stream.engine.learner import Learner

    rules = lambda *o: (compose(list(o)).method.bank.count_rule, compose(list(o)).method.weights.count_rule)  # noqa: E731
    assert rules("mode=offline", "experiment=fmnist_lt_r100") == ("reference", "reference")
    assert rules("experiment=cifar10_lt_r100", "dataset.root=/tmp") == ("reference", "reference")
    assert rules("mode=stream", "experiment=fmnist_lt_r100") == ("present", "reference")  # stream mode: the bank gate only
    assert rules() == ("present", "reference")  # the default job: stream mode's rules
    labeled = lambda *o: compose(list(o)).method.bank.labeled  # noqa: E731
    assert labeled() and labeled("mode=stream", "experiment=fmnist_lt_r100") and labeled("mode=offline", "experiment=demo")
    assert not labeled("mode=offline", "experiment=fmnist_lt_r100")  # the published protocols: the reference's bank
    cfg = typed(compose(["mode=offline", "model.width=4", "method.bank.capacity=16", "method.weights.count_rule=present"]))
    learner = Learner(cfg, 3, [100, 10, 1], torch.device("cpu"))
    assert learner.algorithm.bank.count_rule == "reference"
    learner.algorithm.estimate.update(torch.tensor([8, 2, 0]))
    _, wu = learner.algorithm.class_weights()
    assert torch.allclose(wu, torch.tensor([(2 / 8) ** 1.5, 1.0, 1.0]))
