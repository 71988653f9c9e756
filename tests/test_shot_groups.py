"""Many/medium/few shot groups by labeled count, and the group accuracies built from them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bmb_stream.evaluation.evaluator import group_accuracy, shot_groups


def test_default_thresholds_many_above_100_few_below_20_medium_between_inclusive():
    groups = shot_groups([500, 101, 100, 50, 20, 19, 0])
    assert groups == {"many": [0, 1], "medium": [2, 3, 4], "few": [5, 6]}


def test_custom_thresholds():
    groups = shot_groups([11, 10, 3, 2, 50], many_threshold=10, few_threshold=3)
    assert groups == {"many": [0, 4], "medium": [1, 2], "few": [3]}


def test_every_class_falls_in_exactly_one_group():
    counts = np.random.default_rng(0).integers(0, 300, 200)
    groups = shot_groups(counts, many_threshold=100, few_threshold=20)
    everyone = sorted(groups["many"] + groups["medium"] + groups["few"])
    assert everyone == list(range(200))
    for c in range(200):
        expected = "many" if counts[c] > 100 else "few" if counts[c] < 20 else "medium"
        assert c in groups[expected]


def test_an_empty_group_is_an_empty_list():
    assert shot_groups([150, 120]) == {"many": [0, 1], "medium": [], "few": []}


def test_group_accuracy_is_the_mean_over_its_classes_skipping_nan():
    per_class = [0.9, 0.8, math.nan, 0.2]
    assert group_accuracy(per_class, [0, 1, 2]) == pytest.approx(0.85)
    assert group_accuracy(per_class, [3]) == pytest.approx(0.2)
    assert group_accuracy(per_class, [2]) is None   # only a class without test samples
    assert group_accuracy(per_class, []) is None    # no class in the group


def test_many_medium_few_accuracy_of_a_long_tailed_label_set():
    labeled = [200, 150, 60, 30, 10, 5]
    per_class = [0.9, 0.8, 0.6, 0.5, 0.3, 0.1]
    groups = shot_groups(labeled)
    accs = {name: group_accuracy(per_class, classes) for name, classes in groups.items()}
    assert accs == pytest.approx({"many": 0.85, "medium": 0.55, "few": 0.2})
