"""StreamMonitor: pseudo-label precision and recall per class against the hidden true classes,
reset between evaluation windows, bank bookkeeping, and its state round trip."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from bmb_stream.evaluation.monitor import StreamMonitor
from bmb_stream.method.bank import MemoryBank

NAN = math.nan


def step(pseudo, mask, **extra) -> dict:
    return {"pseudo_labels": torch.tensor(pseudo), "mask": torch.tensor(mask), **extra}


# batch 1: sample 4 has no known class; sample 3 is not confident
BATCH1 = (step([0, 1, 1, 2, 0, 0], [True, True, True, False, True, True]), torch.tensor([0, 0, 1, 2, -1, 1]))
# batch 2: sample 2 is not confident
BATCH2 = (step([2, 0, 0], [True, True, False]), torch.tensor([2, 2, 0]))


def assert_values(actual: list[float], expected: list[float]) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert (math.isnan(a) and math.isnan(e)) or a == e, (actual, expected)


def test_precision_and_recall_per_class_from_one_batch():
    monitor = StreamMonitor(3)
    monitor.observe(*BATCH1)
    # confident with a known class: samples 0, 1, 2, 5 with pseudo-labels 0, 1, 1, 0; right: samples 0 and 2
    assert monitor.predicted.tolist() == [2, 2, 0]
    assert monitor.correct.tolist() == [1, 1, 0]
    # every sample with a known class counts for recall, confident or not: classes 0, 0, 1, 2, 1
    assert monitor.present.tolist() == [2, 2, 1]
    report = monitor.report()
    assert_values(report["pseudo_label_precision"], [1 / 2, 1 / 2, NAN])  # class 2 never predicted
    assert_values(report["pseudo_label_recall"], [1 / 2, 1 / 2, 0.0])
    assert set(report) == {"pseudo_label_precision", "pseudo_label_recall"}  # no bank given


def test_counts_accumulate_over_batches():
    monitor = StreamMonitor(3)
    monitor.observe(*BATCH1)
    monitor.observe(*BATCH2)
    assert monitor.predicted.tolist() == [3, 2, 1]
    assert monitor.correct.tolist() == [1, 1, 1]
    assert monitor.present.tolist() == [3, 2, 3]
    report = monitor.report()
    assert_values(report["pseudo_label_precision"], [1 / 3, 1 / 2, 1.0])
    assert_values(report["pseudo_label_recall"], [1 / 3, 1 / 2, 1 / 3])


def test_class_never_present_has_nan_recall_and_repeated_labels_all_count():
    monitor = StreamMonitor(4)
    monitor.observe(step([1, 1, 1, 1], [True, True, True, True]), torch.tensor([1, 1, 1, 0]))
    report = monitor.report()
    assert_values(report["pseudo_label_precision"], [NAN, 3 / 4, NAN, NAN])
    assert_values(report["pseudo_label_recall"], [0.0, 1.0, NAN, NAN])


def test_batches_without_known_classes_count_nothing_and_report_is_empty():
    monitor = StreamMonitor(3)
    monitor.observe(step([0, 1], [True, True]), torch.tensor([-1, -1]))
    monitor.observe({}, torch.tensor([0, 1]))  # no pseudo-labels in this step (e.g. a warm-up step)
    assert monitor.predicted.tolist() == [0, 0, 0] and monitor.present.tolist() == [0, 0, 0]
    assert monitor.report() == {}


def test_reset_counts_starts_afresh_and_keeps_the_bank_truth():
    bank = MemoryBank(4, 2, 3, beta_put=0.0, beta_get=1.0)
    slots, _ = bank.put(torch.zeros(2, 2), torch.tensor([0, 1]))
    monitor = StreamMonitor(3, bank_capacity=4)
    pseudo, truth = BATCH1
    monitor.observe({**pseudo, "bank_write": (slots, torch.tensor([0, 2]))}, truth)  # true classes 0 and 1: both right
    assert monitor.report(bank)["bank_purity"] == 1.0

    monitor.reset_counts()
    assert monitor.correct.tolist() == monitor.predicted.tolist() == monitor.present.tolist() == [0, 0, 0]
    assert monitor.report(bank) == {}  # nothing counted in this window yet
    monitor.observe(*BATCH2)
    report = monitor.report(bank)
    # only batch 2 counts now: predicted [1, 0, 1], correct [0, 0, 1], present [1, 0, 2]
    assert monitor.predicted.tolist() == [1, 0, 1] and monitor.present.tolist() == [1, 0, 2]
    assert_values(report["pseudo_label_precision"], [0.0, NAN, 1.0])
    assert_values(report["pseudo_label_recall"], [0.0, NAN, 1 / 2])
    assert report["bank_purity"] == 1.0 and report["bank_labeled"] == 0  # the bank's truth survived the reset


def test_bank_truth_follows_the_writes_unknown_classes_count_nowhere():
    bank = MemoryBank(6, 2, 3, beta_put=0.0, beta_get=1.0)
    slots, _ = bank.put(torch.zeros(5, 2), torch.tensor([1, 0, 2, 2, 1]))
    monitor = StreamMonitor(3, bank_capacity=6)
    truth = torch.tensor([0, 1, -1, 1])  # the unlabeled batch; sample 2's class is not known
    monitor.observe(step([0, 2, 2, 1], [True, True, True, True], bank_write=(slots, torch.tensor([-1, 0, 1, 2, 3]))),
                    truth)
    assert monitor.bank_truth.tolist()[:5] == [-2, 0, 1, -1, 1]
    report = monitor.report(bank)
    # known pseudo-labeled entries: slots 1, 2, 4 with labels 0, 2, 1 for classes 0, 1, 1
    assert report["bank_purity"] == pytest.approx(2 / 3)
    assert report["bank_labeled"] == 1

    # slot 2 is written again, now by a sample whose class (2) matches its label
    monitor.observe({"bank_write": (torch.tensor([2]), torch.tensor([0]))}, torch.tensor([2]))
    assert monitor.report(bank)["bank_purity"] == 1.0


def test_bank_of_labeled_entries_only_has_no_purity_and_unfilled_slots_are_ignored():
    bank = MemoryBank(8, 2, 3, beta_put=0.0, beta_get=1.0)
    slots, _ = bank.put(torch.zeros(3, 2), torch.tensor([0, 1, 2]))
    monitor = StreamMonitor(3, bank_capacity=8)
    monitor.bank_truth[5] = 0  # beyond the bank's fill: never read
    monitor.observe(step([0], [True], bank_write=(slots, torch.tensor([-1, -1, -1]))), torch.tensor([0]))
    report = monitor.report(bank)
    assert report["bank_purity"] is None and report["bank_labeled"] == 3
    assert "bank_purity" not in monitor.report(MemoryBank(8, 2, 3, beta_put=0.0, beta_get=1.0))  # an empty bank


def test_a_monitor_without_bank_slots_ignores_bank_writes():
    monitor = StreamMonitor(3)
    pseudo, truth = BATCH1
    monitor.observe({**pseudo, "bank_write": (torch.tensor([0, 1]), torch.tensor([0, 1]))}, truth)
    assert monitor.bank_truth.numel() == 0 and monitor.present.tolist() == [2, 2, 1]


def loaded(state: dict) -> StreamMonitor:
    monitor = StreamMonitor(3, bank_capacity=6)
    monitor.load_state_dict(state)
    return monitor


def test_state_dict_round_trip_reports_and_counts_the_same():
    bank = MemoryBank(6, 2, 3, beta_put=0.0, beta_get=1.0)
    slots, _ = bank.put(torch.zeros(4, 2), torch.tensor([0, 1, 1, 2]))
    original = StreamMonitor(3, bank_capacity=6)
    pseudo, truth = BATCH1
    original.observe({**pseudo, "bank_write": (slots, torch.tensor([-1, 0, 2, 3]))}, truth)
    state = original.state_dict()

    buffer = io.BytesIO()  # as in a checkpoint, loaded with weights_only
    torch.save(state, buffer)
    buffer.seek(0)
    resumed = loaded(torch.load(buffer, weights_only=True))
    np.testing.assert_equal(resumed.report(bank), original.report(bank))
    assert resumed.bank_truth.tolist() == original.bank_truth.tolist() == [-2, 0, 1, 2, -1, -1]

    original.observe(*BATCH2)
    resumed.observe(*BATCH2)
    np.testing.assert_equal(resumed.report(bank), original.report(bank))
    assert resumed.present.tolist() == [3, 2, 3]


def test_state_dict_is_a_snapshot_and_load_copies_it():
    original = StreamMonitor(3, bank_capacity=6)
    original.observe(*BATCH1)
    state = original.state_dict()
    original.observe(*BATCH2)
    original.bank_truth[0] = 1
    assert state["present"].tolist() == [2, 2, 1] and state["bank_truth"].tolist() == [-1] * 6

    resumed = loaded(state)
    resumed.observe(*BATCH2)
    resumed.bank_truth[1] = 2
    assert state["present"].tolist() == [2, 2, 1] and state["correct"].tolist() == [1, 1, 0]
    assert state["bank_truth"].tolist() == [-1] * 6
