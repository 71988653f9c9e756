import numpy as np
import pytest

from bmb_stream.datasets.splits import long_tailed_counts, split_by_counts, split_by_ratio


def test_cifar10_gamma100_counts():
    counts = long_tailed_counts(1500, 100, 10)
    assert counts == [1500, 899, 539, 323, 193, 116, 69, 41, 25, 15]
    assert sum(counts) == 3720


@pytest.mark.parametrize("gamma,total", [(50, 4196), (100, 3720), (150, 3496)])
def test_cifar10_labeled_totals(gamma, total):
    assert sum(long_tailed_counts(1500, gamma, 10)) == total


@pytest.mark.parametrize("gamma", [10, 20, 50, 100])
def test_cifar100_head_and_tail(gamma):
    counts = long_tailed_counts(150, gamma, 100)
    assert counts[0] == 150 and counts[-1] == int(150 / gamma)
    assert all(a >= b for a, b in zip(counts, counts[1:]))


def test_uniform_and_reversed_unlabeled_counts():
    assert long_tailed_counts(3000, 1, 10) == [3000] * 10
    forward = long_tailed_counts(3000, 100, 10)
    assert long_tailed_counts(3000, -100, 10) == forward[::-1]
    assert long_tailed_counts(3000, 0.01, 10) == forward[::-1]


def fake_targets(per_class=5000, num_classes=10):
    return np.repeat(np.arange(num_classes), per_class)[np.random.default_rng(1).permutation(per_class * num_classes)]


def test_unlabeled_set_includes_the_labeled_images():
    targets = fake_targets()
    lab, unl = split_by_counts(targets, 10, 1500, 3000, 100, 100, shuffle_seed=0)
    assert len(lab) == 3720
    n = long_tailed_counts(1500, 100, 10)
    m = long_tailed_counts(3000, 100, 10)
    assert np.bincount(targets[lab], minlength=10).tolist() == n
    assert np.bincount(targets[unl], minlength=10).tolist() == [a + b for a, b in zip(n, m)]
    assert set(lab) <= set(unl)


def test_split_is_seeded_and_the_no_shuffle_rule_takes_file_order():
    targets = fake_targets()
    a, _ = split_by_counts(targets, 10, 1500, 3000, 100, 100, shuffle_seed=0)
    b, _ = split_by_counts(targets, 10, 1500, 3000, 100, 100, shuffle_seed=0)
    c, _ = split_by_counts(targets, 10, 1500, 3000, 100, 100, shuffle_seed=1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    ordered, _ = split_by_counts(targets, 10, 1500, 3000, 100, 100, shuffle_seed=None)
    first_of_class_9 = np.flatnonzero(targets == 9)[:15]
    assert np.array_equal(ordered[-15:], first_of_class_9)


def test_split_too_large_for_the_data_says_so():
    with pytest.raises(ValueError, match="class 0 has 100 images"):
        split_by_counts(fake_targets(100), 10, 150, 300, 10, 10, shuffle_seed=0)


def test_imagenet_lt_ceil_and_imagenet127_round():
    sizes = [1280, 7, 5, 3]
    targets = np.concatenate([np.full(s, c) for c, s in enumerate(sizes)])
    lab, unl = split_by_ratio(targets, 4, 0.2, "ceil", shuffle_seed=None)
    assert np.bincount(targets[lab]).tolist() == [256, 2, 1, 1]
    assert len(unl) == len(targets)
    lab, _ = split_by_ratio(targets, 4, 0.1, "round", shuffle_seed=None)
    assert np.bincount(targets[lab], minlength=4).tolist() == [128, 1, 0, 0]
