"""experience_shards: how the stream's shard URLs are cut into experiences."""

from __future__ import annotations

import pytest

from bmb_stream.errors import ShardError
from bmb_stream.shards.urls import experience_shards

URLS = [f"s/stream-{i:06d}.tar" for i in range(10)]


def chunk(urls, per, seed=0, shuffle=False, resampled=False, max_experiences=None):
    return experience_shards(urls, per, seed, shuffle, resampled, max_experiences)


def test_in_order_groups_of_shards_per_experience_the_last_one_shorter():
    groups = chunk(URLS, 3)
    assert groups == [URLS[0:3], URLS[3:6], URLS[6:9], URLS[9:10]]


def test_one_shard_per_experience_and_one_experience_for_all():
    assert chunk(URLS, 1) == [[u] for u in URLS]
    assert chunk(URLS, 10) == [URLS]
    assert chunk(URLS, 25) == [URLS]


def test_max_experiences_keeps_the_first_ones():
    assert chunk(URLS, 3, max_experiences=2) == [URLS[0:3], URLS[3:6]]
    assert chunk(URLS, 3, max_experiences=9) == chunk(URLS, 3)  # more than there are: all of them


def test_shuffle_is_a_permutation_reproducible_with_the_seed():
    a = chunk(URLS, 4, seed=7, shuffle=True)
    assert [len(g) for g in a] == [4, 4, 2]
    flat = [u for g in a for u in g]
    assert sorted(flat) == URLS and flat != URLS  # every shard once, not in the original order
    assert chunk(URLS, 4, seed=7, shuffle=True) == a
    orders = {tuple(u for g in chunk(URLS, 4, seed=s, shuffle=True) for u in g) for s in range(8)}
    assert len(orders) > 1  # another seed, another order


def test_shuffle_then_max_experiences_takes_the_first_groups_of_the_shuffled_order():
    full = chunk(URLS, 3, seed=2, shuffle=True)
    assert chunk(URLS, 3, seed=2, shuffle=True, max_experiences=2) == full[:2]


def test_the_seed_does_not_matter_without_shuffle():
    assert chunk(URLS, 3, seed=1) == chunk(URLS, 3, seed=99) == [URLS[0:3], URLS[3:6], URLS[6:9], URLS[9:10]]


def test_resampled_draws_max_experiences_full_groups_with_replacement():
    groups = chunk(URLS[:3], 5, seed=4, resampled=True, max_experiences=6)
    assert len(groups) == 6 and all(len(g) == 5 for g in groups)
    drawn = [u for g in groups for u in g]
    assert set(drawn) <= set(URLS[:3])
    assert len(drawn) > len(set(drawn))  # 30 draws from 3 shards: repeats
    assert chunk(URLS[:3], 5, seed=4, resampled=True, max_experiences=6) == groups
    assert any(chunk(URLS[:3], 5, seed=s, resampled=True, max_experiences=6) != groups for s in range(5, 9))


def test_resampled_needs_max_experiences():
    for bound in (None, 0):
        with pytest.raises(ShardError, match="stream.max_experiences"):
            chunk(URLS, 2, resampled=True, max_experiences=bound)


def test_no_urls_is_refused():
    with pytest.raises(ShardError, match="names no shards"):
        chunk([], 2)
