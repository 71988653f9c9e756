"""summarize: final, best, mean and median of the last 20 evaluations, over hand-made histories."""

from __future__ import annotations

import pytest

from bmb_stream.config_schema import STATISTICS
from bmb_stream.evaluation.summary import SCALARS, summarize


def record(step, balanced, per_class, raw=None, top1=None, many=None, medium=None, few=None, **extra) -> dict:
    return {"step": step, "balanced_acc": balanced, "raw_balanced_acc": raw, "top1_acc": top1, "many_acc": many,
            "medium_acc": medium, "few_acc": few, "per_class_acc": per_class, **extra}


SHORT = [  # three evaluations: fewer than 20, so the "last 20" are all of them
    record(10, 0.5, [0.9, 0.5, 0.1], raw=0.4, top1=0.6, many=0.9, medium=0.5, few=None),
    record(20, 0.7, [1.0, 0.6, 0.5], raw=0.6, top1=0.8, many=0.95, medium=0.6, few=0.2),
    record(30, 0.6, [0.8, 0.4, 0.6], raw=0.65, top1=0.7, many=1.0, medium=0.4, few=0.1, test_loss=1.5),
]


def test_statistic_names_and_keys():
    s = summarize(SHORT)
    assert set(s) == set(STATISTICS) == {"final", "best", "mean_last_20", "median_last_20"}
    keys = set(SCALARS) | {"per_class_acc"}
    assert set(s["final"]) == keys and set(s["best"]) == keys | {"step"}
    assert set(s["mean_last_20"]) == keys and set(s["median_last_20"]) == keys


def test_final_is_the_last_record_and_best_the_highest_balanced_accuracy():
    s = summarize(SHORT)
    assert s["final"] == {"balanced_acc": 0.6, "raw_balanced_acc": 0.65, "top1_acc": 0.7, "many_acc": 1.0,
                          "medium_acc": 0.4, "few_acc": 0.1, "per_class_acc": [0.8, 0.4, 0.6],
                          "plain_balanced_acc": None}  # an algorithm without a test-time rule has none
    assert s["best"] == {"balanced_acc": 0.7, "raw_balanced_acc": 0.6, "top1_acc": 0.8, "many_acc": 0.95,
                         "medium_acc": 0.6, "few_acc": 0.2, "per_class_acc": [1.0, 0.6, 0.5], "step": 20,
                         "plain_balanced_acc": None}


def test_mean_and_median_of_fewer_than_20_records_use_them_all_and_skip_none():
    s = summarize(SHORT)
    mean, median = s["mean_last_20"], s["median_last_20"]
    assert mean["balanced_acc"] == pytest.approx(0.6)           # (0.5 + 0.7 + 0.6) / 3
    assert mean["raw_balanced_acc"] == pytest.approx(0.55)      # (0.4 + 0.6 + 0.65) / 3
    assert mean["few_acc"] == pytest.approx(0.15)               # the None of the first record is skipped
    assert median["few_acc"] == pytest.approx(0.15)
    assert median["balanced_acc"] == pytest.approx(0.6)
    assert median["raw_balanced_acc"] == pytest.approx(0.6)
    assert median["many_acc"] == pytest.approx(0.95)
    assert mean["per_class_acc"] == pytest.approx([0.9, 0.5, 0.4])    # each class over the three records
    assert median["per_class_acc"] == pytest.approx([0.9, 0.5, 0.5])


def test_a_scalar_missing_everywhere_is_none_not_an_error():
    history = [record(1, 0.3, [0.3, 0.3], few=None), record(2, 0.4, [0.4, 0.4], few=None)]
    s = summarize(history)
    for stat in STATISTICS:
        assert s[stat]["few_acc"] is None and s[stat]["many_acc"] is None
    assert s["mean_last_20"]["balanced_acc"] == pytest.approx(0.35)


def long_history() -> list[dict]:
    """25 records: the best (0.99, step 3) lies outside the last 20, which hold nineteen 0.5 and one 0.9;
    per class: [k, k*k] for record k."""
    out = []
    for k in range(25):
        balanced = 0.99 if k == 3 else 0.1 if k < 5 else 0.9 if k == 17 else 0.5
        out.append(record(100 * k, balanced, [float(k), float(k * k)], many=None if k % 2 else 1.0))
    return out


def test_only_the_last_20_records_enter_mean_and_median():
    s = summarize(long_history())
    mean, median = s["mean_last_20"], s["median_last_20"]
    assert mean["balanced_acc"] == pytest.approx((19 * 0.5 + 0.9) / 20)  # 0.52
    assert median["balanced_acc"] == pytest.approx(0.5)
    # records 5..24: k averages 14.5; k*k averages 4870 / 20 = 243.5, its median is (14^2 + 15^2) / 2
    assert mean["per_class_acc"] == pytest.approx([14.5, 243.5])
    assert median["per_class_acc"] == pytest.approx([14.5, 210.5])
    assert mean["many_acc"] == pytest.approx(1.0)  # the None of every odd record is skipped


def test_best_is_searched_over_the_whole_history_and_final_is_the_last():
    s = summarize(long_history())
    assert s["best"]["step"] == 300 and s["best"]["balanced_acc"] == 0.99
    assert s["final"]["balanced_acc"] == 0.5 and s["final"]["per_class_acc"] == [24.0, 576.0]


def test_the_window_length_can_be_changed():
    s = summarize(long_history(), last=5)
    assert set(s) == {"final", "best", "mean_last_5", "median_last_5"}
    assert s["mean_last_5"]["per_class_acc"] == pytest.approx([22.0, (400 + 441 + 484 + 529 + 576) / 5])


def test_empty_history_is_refused():
    with pytest.raises(ValueError, match="no evaluations"):
        summarize([])
