"""LabeledPool: the bounded, class-balanced store of labeled samples met in the stream."""

from __future__ import annotations

import io

import torch

from bmb_stream.engine.labeled_pool import LabeledPool


def fill(pool: LabeledPool, items) -> None:
    for image, label in items:
        pool.add(image, label)


def pairs(pool: LabeledPool) -> list[tuple[bytes, int]]:
    return list(zip(pool.images, pool.labels))


def test_below_capacity_every_sample_is_appended_in_order_even_of_one_class():
    pool = LabeledPool(capacity=10, num_classes=3)
    fill(pool, [(b"a", 0), (b"b", 0), (b"c", 0), (b"d", 2), (b"e", 0)])
    assert pool.images == [b"a", b"b", b"c", b"d", b"e"]
    assert pool.labels == [0, 0, 0, 2, 0]
    assert pool.class_counts() == [4, 0, 1]


def test_empty_pool_counts_zero_per_class():
    assert LabeledPool(capacity=5, num_classes=4).class_counts() == [0, 0, 0, 0]


def test_zero_or_negative_capacity_keeps_nothing():
    for capacity in (0, -3):
        pool = LabeledPool(capacity=capacity, num_classes=2)
        fill(pool, [(b"a", 0), (b"b", 1)])
        assert pool.images == [] and pool.labels == [] and pool.class_counts() == [0, 0]


def test_full_pool_rebalances_by_evicting_from_the_largest_class():
    pool = LabeledPool(capacity=4, num_classes=3, seed=0)
    fill(pool, [(b"a", 0), (b"b", 0), (b"c", 1), (b"d", 0)])
    assert pool.class_counts() == [3, 1, 0]

    pool.add(b"e", 0)  # the newcomer's class is the largest: refused
    assert pool.images == [b"a", b"b", b"c", b"d"] and pool.labels == [0, 0, 1, 0]

    pool.add(b"f", 1)  # class 1 (1) < class 0 (3): one class-0 entry leaves, f takes its slot
    assert pool.class_counts() == [2, 2, 0]
    assert b"c" in pool.images and b"f" in pool.images
    assert len(set(pool.images) & {b"a", b"b", b"d"}) == 2

    pool.add(b"g", 1)  # a tie with the largest class: refused as well
    assert pool.class_counts() == [2, 2, 0] and b"g" not in pool.images

    pool.add(b"h", 2)  # classes 0 and 1 tie at 2: the first of them (class 0) gives up an entry
    assert pool.class_counts() == [1, 2, 1]

    pool.add(b"i", 2)  # now class 1 is the largest
    assert pool.class_counts() == [1, 1, 2]
    assert len(pool.images) == len(pool.labels) == 4


def test_images_stay_paired_with_their_labels_through_evictions():
    added = {}
    pool = LabeledPool(capacity=6, num_classes=3, seed=5)
    sequence = [0, 0, 0, 0, 1, 0, 2, 2, 0, 1, 1, 2, 0, 1, 2, 2, 1, 0]
    for n, label in enumerate(sequence):
        image = f"img-{n}".encode()
        added[image] = label
        pool.add(image, label)
    assert len(pool.images) == 6 and len(set(pool.images)) == 6
    for image, label in pairs(pool):
        assert added[image] == label
    assert pool.class_counts() == [2, 2, 2]


def test_the_victim_is_uniform_among_entries_of_the_largest_class():
    hits = [0, 0, 0, 0]
    trials = 300
    for seed in range(trials):
        pool = LabeledPool(capacity=4, num_classes=2, seed=seed)
        fill(pool, [(b"a", 0), (b"b", 0), (b"c", 0), (b"x", 1)])
        pool.add(b"new", 1)
        slot = pool.images.index(b"new")
        hits[slot] += 1
        assert pool.images[3] == b"x"  # the class-1 entry is never the victim
    assert hits[3] == 0 and sum(hits) == trials
    # each of the three class-0 slots expects 100 hits (binomial sd ~8)
    assert all(60 <= h <= 140 for h in hits[:3]), hits


def test_the_same_seed_gives_the_same_evictions():
    sequence = [(f"{n}".encode(), n % 3 if n < 9 else (n * 7) % 3) for n in range(30)]
    a, b = LabeledPool(5, 3, seed=4), LabeledPool(5, 3, seed=4)
    fill(a, sequence)
    fill(b, sequence)
    assert pairs(a) == pairs(b)


def evicting_sequence(start: int, n: int) -> list[tuple[bytes, int]]:
    """Samples cycling over 5 classes: a full capacity-6 pool then always has one class of two entries
    and every newcomer of another class evicts one of those two (a draw)."""
    return [(f"s{start + k}".encode(), k % 5) for k in range(n)]


def test_state_dict_round_trip_gives_the_same_draws_after_load():
    original = LabeledPool(capacity=6, num_classes=5, seed=0)
    fill(original, [(f"f{k}".encode(), 0) for k in range(6)])
    fill(original, evicting_sequence(0, 12))  # some draws happen before the snapshot
    state = original.state_dict()

    follow = evicting_sequence(100, 40)
    resumed = LabeledPool(capacity=6, num_classes=5, seed=12345)  # its own seed is overridden by the state
    resumed.load_state_dict(state)
    assert pairs(resumed) == pairs(original)
    fill(original, follow)
    fill(resumed, follow)
    assert pairs(resumed) == pairs(original)

    # the generator's position matters: the same contents with a fresh seed-0 generator draw differently
    fresh = LabeledPool(capacity=6, num_classes=5, seed=0)
    fresh.load_state_dict({**state, "generator": torch.Generator().manual_seed(0).get_state()})
    fill(fresh, follow)
    assert pairs(fresh) != pairs(original)


def test_state_dict_is_a_snapshot_and_load_copies_it():
    pool = LabeledPool(capacity=3, num_classes=2)
    fill(pool, [(b"a", 0), (b"b", 1)])
    state = pool.state_dict()
    pool.add(b"c", 1)
    assert state["images"] == [b"a", b"b"] and state["labels"] == [0, 1]

    other = LabeledPool(capacity=3, num_classes=2)
    other.load_state_dict(state)
    other.add(b"d", 0)
    assert state["images"] == [b"a", b"b"] and state["labels"] == [0, 1]
    assert other.images == [b"a", b"b", b"d"]


def test_state_survives_a_weights_only_checkpoint_and_labels_come_back_as_ints():
    pool = LabeledPool(capacity=4, num_classes=3, seed=2)
    fill(pool, [(b"\x89PNG-a", 2), (b"\xff\xd8-b", 0), (b"c", 2), (b"d", 2)])
    pool.add(b"e", 1)  # one draw
    buffer = io.BytesIO()
    torch.save(pool.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    state["labels"] = torch.tensor(state["labels"])  # a tensor of labels is accepted too
    loaded = LabeledPool(capacity=4, num_classes=3)
    loaded.load_state_dict(state)
    assert loaded.images == pool.images
    assert loaded.labels == pool.labels and all(type(x) is int for x in loaded.labels)
    assert loaded.class_counts() == [1, 1, 2]
    follow = [(b"x", 0), (b"y", 1), (b"z", 0), (b"w", 1)]
    fill(pool, follow)
    fill(loaded, follow)
    assert pairs(loaded) == pairs(pool)
