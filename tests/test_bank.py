import numpy as np
import pytest
import torch

from bmb_stream.method.bank import MemoryBank, draw_probabilities, eviction_weights, put_probabilities


def skewed_labels(n, num_classes, gamma, gen):
    prior = torch.tensor([gamma ** (-k / (num_classes - 1)) for k in range(num_classes)])
    return torch.multinomial(prior / prior.sum(), n, replacement=True, generator=gen)


def banks_under_both_rules(num_classes, beta_put):
    return {rule: MemoryBank(256, 1, num_classes, beta_put=beta_put, beta_get=1.0, count_rule=rule, seed=0)
            for rule in ("reference", "present")}


def offer(banks, labels) -> None:
    """The same candidates to every bank."""
    for bank in banks.values():
        bank.put(torch.zeros(len(labels), 1), labels)


def tv_from_uniform(counts):
    counts = np.asarray(counts, dtype=float)
    p = counts / counts.sum()
    return 0.5 * np.abs(p - 1.0 / len(p)).sum()


def test_put_probabilities_formula_and_floor():
    rho = put_probabilities(torch.tensor([10, 20, 40]), beta_put=2.0)
    assert torch.allclose(rho, torch.tensor([1.0, 0.25, 0.0625]))
    # an absent class is floored at 1e-3: present classes get ~0, the absent one 1
    rho = put_probabilities(torch.tensor([0, 5]), beta_put=1.0)
    assert rho[0] == pytest.approx(1.0) and rho[1] == pytest.approx(1e-3 / 5)
    assert torch.all(put_probabilities(torch.tensor([3, 7, 100]), beta_put=0.0) == 1.0)


def test_eviction_weights_prefer_head_classes():
    rho = torch.tensor([1.0, 0.5, 0.1])
    w = eviction_weights(rho, torch.tensor([0, 1, 2, 2]))
    assert w[0] < 1e-9 and w[1] == pytest.approx(0.5) and w[2] == pytest.approx(0.9)


def test_capacity_is_never_exceeded():
    gen = torch.Generator().manual_seed(0)
    bank = MemoryBank(64, 4, 5, beta_put=2.0, beta_get=1.0, seed=1)
    for _ in range(300):
        n = int(torch.randint(0, 200, (1,), generator=gen))
        labels = torch.randint(0, 5, (n,), generator=gen)
        slots, sources = bank.put(torch.randn(n, 4, generator=gen), labels)
        assert 0 <= len(slots) == len(sources) <= n and len(set(slots.tolist())) == len(slots)
        assert bank.fill <= bank.capacity
        assert int(bank.class_counts().sum()) == bank.fill


def test_rebalancing_makes_a_skewed_stream_nearly_uniform():
    """Candidates drawn from a gamma-100 prior over 10 classes: the candidate mix is far from uniform
    (total variation ~0.45); after 2,000 steps the bank's mix is within 0.1 of uniform."""
    gen = torch.Generator().manual_seed(0)
    bank = MemoryBank(256, 2, 10, beta_put=2.0, beta_get=1.0, seed=0)
    seen = torch.zeros(10)
    for _ in range(2000):
        labels = skewed_labels(64, 10, 100.0, gen)
        seen += torch.bincount(labels, minlength=10)
        bank.put(torch.randn(64, 2, generator=gen), labels)
    tv_candidates, tv_bank = tv_from_uniform(seen), tv_from_uniform(bank.class_counts())
    assert tv_candidates > 0.4
    assert tv_bank < 0.1, bank.class_counts()
    assert bank.fill == bank.capacity


def test_without_rebalancing_the_bank_mirrors_the_candidates():
    """beta_put = 0 admits everything: the bank keeps the skew (the ablation really switches it off)."""
    gen = torch.Generator().manual_seed(0)
    bank = MemoryBank(256, 2, 10, beta_put=0.0, beta_get=1.0, seed=0)
    for _ in range(500):
        bank.put(torch.randn(64, 2, generator=gen), skewed_labels(64, 10, 100.0, gen))
    assert tv_from_uniform(bank.class_counts()) > 0.3


def test_evictions_are_without_replacement():
    """A full bank of head-class entries receives 200 tail candidates, all admitted (rho = 1):
    every one of them must be in the bank afterwards; with replacement two would share a slot."""
    bank = MemoryBank(256, 1, 2, beta_put=1.0, beta_get=1.0, seed=0)
    bank.put(torch.full((256, 1), -1.0), torch.zeros(256, dtype=torch.long))
    assert bank.fill == 256
    ids = torch.arange(200, dtype=torch.float32).unsqueeze(1)
    slots, sources = bank.put(ids, torch.ones(200, dtype=torch.long))
    assert len(slots) == 200 and sorted(sources.tolist()) == list(range(200))
    assert torch.equal(bank.features[slots, 0], ids[sources, 0])  # each slot holds the candidate it reports
    stored = set(bank.features[bank.labels == 1, 0].tolist())
    assert stored == set(range(200))
    assert bank.class_counts().tolist() == [56, 200]


def test_draw_probabilities_follow_nhat():
    nhat = torch.tensor([100.0, 10.0, 1.0, 0.0])
    labels = torch.tensor([0, 1, 2, 3])
    p = draw_probabilities(nhat, labels, beta_get=1.0)
    expected = torch.tensor([1 / 100, 1 / 10, 1.0, 1 / 1e-3])
    assert torch.allclose(p, expected / expected.sum())


def test_bank_draws_match_the_probabilities_empirically():
    bank = MemoryBank(30, 1, 3, beta_put=0.0, beta_get=1.5, seed=0)
    bank.put(torch.randn(30, 1), torch.tensor([0] * 10 + [1] * 10 + [2] * 10))
    nhat = torch.tensor([8.0, 2.0, 1.0])
    counts = torch.zeros(3)
    for _ in range(400):
        _, labels = bank.draw(128, nhat)
        counts += torch.bincount(labels, minlength=3)
    expected = nhat ** -1.5
    expected = expected / expected.sum()
    assert torch.allclose(counts / counts.sum(), expected, atol=0.01)


def test_draw_size_and_empty_bank():
    bank = MemoryBank(16, 2, 2, beta_put=1.0, beta_get=1.0)
    assert bank.draw(8, torch.ones(2)) is None
    bank.put(torch.randn(5, 2), torch.tensor([0, 1, 0, 1, 0]))
    feats, labels = bank.draw(8, torch.ones(2))
    assert feats.shape == (5, 2) and labels.shape == (5,)


def test_state_dict_round_trip_continues_the_same_random_stream():
    gen = torch.Generator().manual_seed(3)
    a = MemoryBank(32, 3, 4, beta_put=2.0, beta_get=1.0, seed=7)
    for _ in range(20):
        a.put(torch.randn(16, 3, generator=gen), torch.randint(0, 4, (16,), generator=gen))
    b = MemoryBank(32, 3, 4, beta_put=2.0, beta_get=1.0, seed=99)
    b.load_state_dict(a.state_dict())
    cand = torch.randn(16, 3, generator=gen), torch.randint(0, 4, (16,), generator=gen)
    a.put(*cand)
    b.put(*cand)
    assert torch.equal(a.labels[: a.fill], b.labels[: b.fill]) and torch.equal(a.features, b.features)
    da, db = a.draw(10, torch.ones(4)), b.draw(10, torch.ones(4))
    assert torch.equal(da[1], db[1])


# --- the count rule: `present` keeps the rebalancing but lets no absent class gate the bank ----------

def test_present_rule_equals_reference_when_every_class_is_in_the_bank():
    for counts in (torch.tensor([10, 20, 40]), torch.tensor([1, 7, 3, 250])):
        for beta in (0.0, 1.0, 2.0, 3.0):
            assert torch.equal(put_probabilities(counts, beta, rule="present"), put_probabilities(counts, beta))
    nhat = torch.tensor([8.0, 2.0, 0.5])
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    assert torch.allclose(draw_probabilities(nhat, labels, 1.5, rule="present"), draw_probabilities(nhat, labels, 1.5))


def test_present_rule_admits_present_classes_while_one_is_absent():
    counts = torch.tensor([0, 5, 20])
    ref = put_probabilities(counts, beta_put=2.0)
    assert ref[1] < 1e-7 and ref[2] < 1e-8  # the reference gate: nothing present gets in
    rho = put_probabilities(counts, beta_put=2.0, rule="present")
    assert torch.allclose(rho, torch.tensor([1.0, 1.0, 0.0625]))  # absent 1, rarest present 1, head (5/20)^2
    w = eviction_weights(rho, torch.tensor([1, 2]))
    assert w[1] > w[0]  # eviction still prefers the head class
    assert torch.equal(put_probabilities(torch.zeros(4, dtype=torch.long), 2.0, rule="present"), torch.ones(4))


def test_present_rule_draws_do_not_all_go_to_a_class_nhat_has_not_counted():
    nhat = torch.tensor([10.0, 1.0, 0.0])
    labels = torch.tensor([0] * 10 + [1] * 10 + [2])
    ref = draw_probabilities(nhat, labels, beta_get=1.0)
    assert ref[-1] > 0.9  # the reference: one entry of the uncounted class takes > 90% of the draws
    p = draw_probabilities(nhat, labels, beta_get=1.0, rule="present")
    assert p[-1] == pytest.approx(p[10]) and p[10] == pytest.approx(10 * p[0])  # as rare as the rarest counted


def test_zipf_candidates_fill_the_bank_with_every_class_under_the_present_rule():
    """100 classes, gamma-100 candidates, few per step (an early, rarely confident balanced head): the
    reference keeps the bank at about one entry per class while any class is missing; `present` fills
    it, holds every class and keeps it balanced."""
    gen = torch.Generator().manual_seed(0)
    banks = banks_under_both_rules(100, beta_put=3.0)
    for step in range(3000):
        offer(banks, skewed_labels(6, 100, 100.0, gen))
        if step == 99:
            assert banks["reference"].fill < 100 < banks["present"].fill
    counts = banks["present"].class_counts()
    assert banks["present"].fill == 256 and bool((counts > 0).all()), counts
    assert counts.max() <= 8 * counts.min()


def test_a_late_class_gates_the_reference_bank_but_not_the_present_one():
    """Class 9 is never offered: the reference bank stays nearly empty, `present` fills and balances
    the nine classes it has; when class 9 arrives it is admitted at once (rho = 1)."""
    gen = torch.Generator().manual_seed(1)
    banks = banks_under_both_rules(10, beta_put=2.0)
    for _ in range(500):
        offer(banks, skewed_labels(16, 9, 100.0, gen))
    assert banks["reference"].fill < 40
    present = banks["present"]
    assert present.fill == 256 and tv_from_uniform(present.class_counts()[:9]) < 0.15  # 0.09 measured
    slots, _ = present.put(torch.zeros(3, 1), torch.full((3,), 9))
    assert len(slots) == 3 and int(present.class_counts()[9]) == 3


def test_count_rule_is_validated_and_not_part_of_the_state():
    with pytest.raises(ValueError, match="reference, present"):
        MemoryBank(8, 1, 2, beta_put=1.0, beta_get=1.0, count_rule="smooth")
    with pytest.raises(ValueError, match="reference, present"):
        put_probabilities(torch.tensor([1, 2]), 1.0, rule="smooth")
    bank = MemoryBank(8, 1, 2, beta_put=1.0, beta_get=1.0, count_rule="present")
    bank.put(torch.randn(4, 1), torch.tensor([0, 1, 0, 1]))
    assert set(bank.state_dict()) == {"features", "labels", "capacity", "generator"}  # same form as before
