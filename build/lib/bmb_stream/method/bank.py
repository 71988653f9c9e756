"""The balanced memory bank: past features with hard pseudo-labels, kept class-rebalanced.

Balance is enforced by probabilities, not quotas: a candidate of class c is admitted with
probability rho_c = (min_j n_j / n_c) ** beta_put, evictions prefer classes with small rho (the
head classes), and draws for the bank loss favour classes the pseudo-label estimate says are rare.
The count rule (`reference` or `present`, see weights.relative_rarity) says what an absent class
does to that minimum.
"""

from __future__ import annotations

import torch

from bmb_stream.method.weights import COUNT_RULES, relative_rarity


def put_probabilities(class_counts: torch.Tensor, beta_put: float, floor: float = 1e-3,
                      rule: str = "reference") -> torch.Tensor:
    """rho_k = (min_c n_c / n_k) ** beta_put with counts floored at `floor`.

    `reference`: while a class is absent (count = floor) every present class gets rho ~ 0, so only
    candidates of absent classes get in and the bank holds about one entry per class until the last
    class arrives (a larger floor softens it). `present`: the minimum runs over the classes in the bank;
    absent classes get rho = 1 and the present ones are rebalanced among themselves as the reference
    does once every class is in.
    """
    return relative_rarity(class_counts, beta_put, floor, rule)


def eviction_weights(rho: torch.Tensor, entry_labels: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Victim weights proportional to 1 - rho(label); `eps` keeps every entry evictable when needed."""
    return (1.0 - rho[entry_labels]).clamp_min(0.0) + eps


def draw_probabilities(nhat: torch.Tensor, entry_labels: torch.Tensor, beta_get: float,
                       floor: float = 1e-3, rule: str = "reference") -> torch.Tensor:
    """Normalised draw probabilities, entry e proportional to max(Nhat[label(e)], floor) ** -beta_get.

    `reference`: an entry of a class Nhat has not counted weighs floor ** -beta_get (1,000 times a class
    at Nhat = 1), so one such entry takes almost every draw. `present`: it weighs as much as an entry of
    the rarest class Nhat has counted; the same distribution as `reference` when Nhat has seen them all.
    """
    if rule == "reference":
        w = nhat.float().clamp_min(floor)[entry_labels] ** (-beta_get)
    else:
        w = relative_rarity(nhat, beta_get, floor, rule)[entry_labels]
    return w / w.sum()


class MemoryBank:
    """A fixed-capacity bank of detached features and their pseudo-labels.

    Entries occupy slots [0, fill). The bank owns a random generator, so the same seed gives the
    same admissions, evictions and draws (on every rank of a distributed run, too), and the
    generator state travels in `state_dict` for an exact resume. `count_rule` (reference | present)
    applies to the put and the draw probabilities; it is configuration, not state.
    """

    def __init__(self, capacity: int, feature_dim: int, num_classes: int, *, beta_put: float,
                 beta_get: float, count_floor: float = 1e-3, count_rule: str = "reference", seed: int = 0,
                 device: torch.device | str = "cpu"):
        if capacity <= 0:
            raise ValueError(f"bank capacity must be positive, got {capacity}")
        if count_rule not in COUNT_RULES:
            raise ValueError(f"unknown count rule {count_rule!r}; accepted: {', '.join(COUNT_RULES)}")
        self.capacity = capacity
        self.num_classes = num_classes
        self.beta_put = beta_put
        self.beta_get = beta_get
        self.count_floor = count_floor
        self.count_rule = count_rule
        # features on the training device, so that only index tensors cross to it; labels and the
        # generator on the CPU, where the rebalancing decisions are made (and resume exactly)
        self.features = torch.zeros(capacity, feature_dim, device=device)
        self.labels = torch.zeros(capacity, dtype=torch.long)
        self.fill = 0
        self.generator = torch.Generator().manual_seed(seed)

    def class_counts(self) -> torch.Tensor:
        return torch.bincount(self.labels[: self.fill], minlength=self.num_classes)

    def reset(self) -> None:
        self.fill = 0

    def put(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Offer candidates; returns (slots written, indices of the admitted candidates), in pairs."""
        empty = torch.zeros(0, dtype=torch.long)
        if labels.numel() == 0:
            return empty, empty
        features = features.detach().float()
        labels = labels.detach().long().cpu()
        rho = put_probabilities(self.class_counts(), self.beta_put, self.count_floor, self.count_rule)
        sources = torch.nonzero(torch.rand(labels.numel(), generator=self.generator) < rho[labels]).flatten()
        if sources.numel() > self.capacity:  # more newcomers than the whole bank: keep a random subset
            sources = sources[torch.randperm(sources.numel(), generator=self.generator)[: self.capacity]]
        n_new = sources.numel()
        free = self.capacity - self.fill
        slots = torch.arange(self.fill, self.fill + min(n_new, free))
        if n_new > free:
            weights = eviction_weights(rho, self.labels[: self.fill])
            # without replacement: one slot is never chosen twice, so no newcomer overwrites another
            victims = torch.multinomial(weights, n_new - free, replacement=False, generator=self.generator)
            slots = torch.cat([slots, victims])
        dev = self.features.device  # index copies to it need not wait for the device
        self.features[slots.to(dev, non_blocking=True)] = features.to(dev)[sources.to(dev, non_blocking=True)]
        self.labels[slots] = labels[sources]
        self.fill = min(self.capacity, self.fill + n_new)
        return slots, sources

    def draw(self, k: int, nhat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Draw min(k, fill) entries with replacement, favouring rare classes; None when empty."""
        k = min(k, self.fill)
        if k == 0:
            return None
        p = draw_probabilities(nhat.cpu(), self.labels[: self.fill], self.beta_get, self.count_floor,
                               self.count_rule)
        idx = torch.multinomial(p, k, replacement=True, generator=self.generator)
        return self.features[idx.to(self.features.device, non_blocking=True)], self.labels[idx]

    def state_dict(self) -> dict:
        return {"features": self.features[: self.fill].cpu().clone(), "labels": self.labels[: self.fill].clone(),
                "capacity": self.capacity, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"checkpoint bank capacity {int(state['capacity'])} != configured {self.capacity}")
        self.fill = int(state["labels"].numel())
        self.features[: self.fill] = state["features"].to(self.features.device)
        self.labels[: self.fill] = state["labels"]
        self.generator.set_state(state["generator"])
