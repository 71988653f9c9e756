"""The continual-learning metrics on hand-made accuracy sequences, against hand-computed values and
against Avalanche's own metric classes."""

import math
import warnings

import numpy as np
import pytest

from bmb_stream.evaluation.continual import accuracy_matrix, class_forgetting, continual_metrics, prior_weighted

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="no QP solver found")
    from avalanche.evaluation.metrics import BWT, Forgetting, ForwardTransfer

# three classes, one experience per class (one-hot priors): an experience's accuracy is its class's
INITIAL = [0.1, 0.2, 0.3]
ROWS = [[0.9, 0.1, 0.2],    # after experience 0
        [0.7, 0.8, 0.25],   # after experience 1
        [0.5, 0.6, 0.9]]    # after experience 2
ONE_HOT = [np.eye(3, dtype=int)[j] * 100 for j in range(3)]


def test_hand_computed_accuracy_matrix_transfer_and_forgetting():
    out = continual_metrics(ROWS, [0, 1, 2], ONE_HOT, INITIAL)
    assert accuracy_matrix(ROWS, ONE_HOT) == ROWS
    assert out["experience_accuracy"] == ROWS[-1]  # a record keeps its own row of the matrix
    assert out["average_accuracy"] == pytest.approx((0.5 + 0.6 + 0.9) / 3)
    # BWT (Lopez-Paz and Ranzato): mean over i < T of R[T, i] - R[i, i]
    assert out["bwt"] == pytest.approx(((0.5 - 0.9) + (0.6 - 0.8)) / 2)
    # FWT: mean over i > 1 of R[i - 1, i] - b_i, b the initial model's accuracy
    assert out["fwt"] == pytest.approx(((0.1 - 0.2) + (0.25 - 0.3)) / 2)
    # forgetting per class: best earlier accuracy minus the last
    assert out["forgetting_per_class"] == pytest.approx([0.9 - 0.5, 0.8 - 0.6, 0.25 - 0.9])
    assert out["forgetting"] == pytest.approx((0.4 + 0.2 - 0.65) / 3)
    assert out["prior_accuracy"] == pytest.approx(0.9)  # the last experience showed class 2 only


def test_transfer_agrees_with_avalanches_classes():
    out = continual_metrics(ROWS, [0, 1, 2], ONE_HOT, INITIAL)
    forgetting, bwt, fwt = Forgetting(), BWT(), ForwardTransfer()
    for j in range(2):  # the first evaluation after experience j was trained is evaluation j
        for metric in (forgetting, bwt):
            metric.update(j, ROWS[j][j], initial=True)
            metric.update(j, ROWS[-1][j])
        fwt.update(j + 1, INITIAL[j + 1], initial=True)
        fwt.update(j + 1, ROWS[j][j + 1])
    assert out["bwt"] == pytest.approx(np.mean(list(bwt.result().values())))
    assert out["bwt"] == pytest.approx(-np.mean(list(forgetting.result().values())))
    assert out["fwt"] == pytest.approx(np.mean(list(fwt.result().values())))


def test_evaluations_every_second_experience_and_mixed_priors():
    histograms = [np.array([90, 10]), np.array([50, 50]), np.array([10, 90]), np.array([0, 100])]
    rows = [[0.8, 0.2], [0.4, 0.9]]  # after experiences 1 and 3
    out = continual_metrics(rows, [1, 3], histograms)
    expected = [[0.9 * 0.8 + 0.1 * 0.2, 0.5, 0.1 * 0.8 + 0.9 * 0.2, 0.2],
                [0.9 * 0.4 + 0.1 * 0.9, 0.65, 0.1 * 0.4 + 0.9 * 0.9, 0.9]]
    assert np.allclose(accuracy_matrix(rows, histograms), expected)
    assert np.allclose(out["experience_accuracy"], expected[-1])
    # experiences 0 and 1 were first evaluated at evaluation 0; 2 and 3 only at the last one
    assert out["bwt"] == pytest.approx(((expected[1][0] - expected[0][0]) + (expected[1][1] - expected[0][1])) / 2)
    assert out["fwt"] is None  # no initial accuracy given
    # experiences 2 and 3 were shown since the previous evaluation: their summed prior is [10, 190]
    assert out["prior_accuracy"] == pytest.approx((10 * 0.4 + 190 * 0.9) / 200)


def test_without_priors_or_history_only_what_is_defined():
    out = continual_metrics([[0.5, 0.7]], [0], None)
    assert out == {"forgetting_per_class": [None, None], "forgetting": None}
    out = continual_metrics([[0.5, 0.7]], [0], [np.array([1, 1]), np.array([1, 0])])
    assert out["bwt"] is None and out["average_accuracy"] == pytest.approx(0.6)


def test_a_class_without_test_images_carries_no_weight():
    assert prior_weighted([0.5, math.nan], [1, 3]) == 0.5
    assert prior_weighted([math.nan, 0.2], [5, 0]) is None
    assert accuracy_matrix([[0.5, 0.3]], [[1, 1]]) == [[pytest.approx(0.4)]]
    assert class_forgetting([[math.nan, 0.5], [0.3, 0.1]]) == [None, pytest.approx(0.4)]
