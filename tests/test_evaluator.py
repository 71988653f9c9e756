"""The evaluator on hand-made test sets and models whose predictions are known."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from bmb_stream.evaluation import evaluator as evaluator_module
from bmb_stream.evaluation.evaluator import Evaluator

CPU = torch.device("cpu")
# classes 0, 1, 2 (3 is absent from the test set); predictions: class 0 3/4 right, class 1 1/2, class 2 1/3
TARGETS = [0, 0, 0, 0, 1, 1, 2, 2, 2]
PREDICTED = [0, 0, 0, 1, 1, 0, 2, 0, 0]


class Samples(Dataset):
    """Item i is (tensor([i]), targets[i]); counts the reads."""

    def __init__(self, targets):
        self.targets = list(targets)
        self.reads = 0

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        self.reads += 1
        return torch.tensor([float(i)]), self.targets[i]


class Table(nn.Module):
    """Logits for sample i favour predicted[i]; records the train/eval mode it ran in."""

    def __init__(self, predicted, num_classes=4):
        super().__init__()
        self.logits = 3 * F.one_hot(torch.tensor(predicted), num_classes).float() + 0.1 * torch.arange(num_classes)
        self.dropout = nn.Dropout(0.5)  # a child whose mode the evaluator must restore too
        self.modes = []

    def forward(self, x):
        self.modes.append(self.training)
        return self.logits[x[:, 0].long()]


def make(tmp_path, targets=TARGETS, **kw):
    kw = {"num_classes": 4, "labeled_per_class": [200, 50, 10, 5], "batch_size": 4, **kw}
    return Evaluator(Samples(targets), device=CPU, **kw)


def test_per_class_balanced_and_groups_on_known_predictions(tmp_path):
    ev = make(tmp_path)
    model = Table(PREDICTED)
    r = ev.evaluate(model)
    assert r["per_class_acc"][:3] == pytest.approx([3 / 4, 1 / 2, 1 / 3]) and math.isnan(r["per_class_acc"][3])
    assert r["balanced_acc"] == pytest.approx((3 / 4 + 1 / 2 + 1 / 3) / 3)  # the absent class left out
    assert r["top1_acc"] == pytest.approx(5 / 9)
    # labeled counts 200, 50, 10, 5: many = class 0, medium = class 1, few = classes 2 and 3 (3 absent)
    assert (r["many_acc"], r["medium_acc"], r["few_acc"]) == pytest.approx((3 / 4, 1 / 2, 1 / 3))
    expected_loss = F.cross_entropy(model.logits[: len(TARGETS)], torch.tensor(TARGETS)).item()
    assert r["test_loss"] == pytest.approx(expected_loss)
    assert (r["raw_balanced_acc"], r["raw_top1_acc"]) == (r["balanced_acc"], r["top1_acc"])
    assert "stream_forgetting" not in r


def test_the_raw_model_gives_the_raw_values(tmp_path):
    ev = make(tmp_path)
    r = ev.evaluate(Table(PREDICTED), Table(TARGETS))
    both = ev.evaluate_models({"ema": Table(PREDICTED), "raw": Table(TARGETS)})
    assert r["raw_top1_acc"] == 1.0 and r["raw_balanced_acc"] == 1.0
    assert r["top1_acc"] == pytest.approx(5 / 9)
    assert both["raw"]["top1_acc"] == 1.0 and both["ema"]["balanced_acc"] == r["balanced_acc"]
    assert both["ema"]["per_class_acc"][:3] == r["per_class_acc"][:3]


def test_forgetting_per_segment_and_its_state(tmp_path):
    # segments {0, 1} and {2, 3}; class 4 is in no segment, so it is not counted at all
    targets = [0, 0, 1, 1, 2, 2, 3, 3, 4]
    kw = {"num_classes": 5, "labeled_per_class": [50] * 5, "segments": [[0, 1], [2, 3]]}
    ev = make(tmp_path, targets, **kw)
    first = ev.evaluate(Table([0, 0, 1, 1, 0, 0, 0, 0, 4], 5), trained_segments=[0])
    assert first["segment_acc"] == [1.0, 0.0] and first["segment_forgetting"] == [0.0, None]
    assert first["stream_forgetting"] == 0.0
    assert math.isnan(first["per_class_acc"][4]) and first["top1_acc"] == pytest.approx(4 / 8)
    second = ev.evaluate(Table([0, 1, 0, 1, 2, 2, 3, 0, 4], 5), trained_segments=[0, 1])
    assert second["segment_acc"] == [0.5, 0.75]
    assert second["segment_forgetting"] == [0.5, 0.0] and second["stream_forgetting"] == pytest.approx(0.25)
    state = ev.state_dict()
    resumed = make(tmp_path, targets, **kw)
    resumed.load_state_dict(state)
    third = resumed.evaluate(Table([0, 0, 1, 1, 0, 0, 0, 0, 4], 5), trained_segments=[0, 1])
    assert third["segment_forgetting"] == [0.0, 0.75] and third["stream_forgetting"] == pytest.approx(0.375)


def test_test_set_is_read_once(tmp_path):
    ev = make(tmp_path)
    for _ in range(2):
        ev.evaluate(Table(PREDICTED), Table(TARGETS))
    assert ev.dataset.reads == len(TARGETS)


def test_large_test_set_is_read_at_every_evaluation(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluator_module, "CACHE_BYTES", 0)
    ev = make(tmp_path)
    results = [ev.evaluate(Table(PREDICTED)) for _ in range(2)]
    assert ev.cache is None and ev.dataset.reads == 4 + 2 * len(TARGETS)  # the first batch told the size
    assert results[1]["top1_acc"] == pytest.approx(5 / 9)


def test_models_modes_are_restored(tmp_path):
    ev = make(tmp_path)
    training, evaluating = Table(PREDICTED), Table(TARGETS).eval()
    training.train()
    training.dropout.eval()
    ev.evaluate(training, evaluating)
    assert training.modes and not any(training.modes) and not any(evaluating.modes)
    assert training.training and not training.dropout.training
    assert not evaluating.training and not evaluating.dropout.training
