"""The balanced memory bank: past features with hard pseudo-labels, kept class-rebalanced.

Balance is enforced by probabilities, not quotas: a candidate of class c is admitted with
probability rho_c = (min_j n_j / n_c) ** beta_put, evictions prefer classes with small rho (the
head classes), and draws for the bank loss favour classes the pseudo-label estimate says are rare.
"""

from __future__ import annotations

import torch


def put_probabilities(class_counts: torch.Tensor, beta_put: float, floor: float = 1e-3) -> torch.Tensor:
    """rho_k = (min_c n_c / n_k) ** beta_put with counts floored at `floor`.

    While a class is absent (count = floor) every present class gets rho ~ 0: only candidates of
    absent classes get in. That is the reference behaviour; a larger floor softens it.
    """
    n = class_counts.float().clamp_min(floor)
    return (n.min() / n) ** beta_put


def eviction_weights(rho: torch.Tensor, entry_labels: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Victim weights proportional to 1 - rho(label); `eps` keeps every entry evictable when needed."""
    return (1.0 - rho[entry_labels]).clamp_min(0.0) + eps


def draw_probabilities(nhat: torch.Tensor, entry_labels: torch.Tensor, beta_get: float,
                       floor: float = 1e-3) -> torch.Tensor:
    """Normalised draw probabilities, entry e proportional to max(Nhat[label(e)], floor) ** -beta_get."""
    w = nhat.float().clamp_min(floor)[entry_labels] ** (-beta_get)
    return w / w.sum()


class MemoryBank:
    """A fixed-capacity bank of detached features and their pseudo-labels.

    Entries occupy slots [0, fill). The bank owns a random generator, so the same seed gives the
    same admissions, evictions and draws (on every rank of a distributed run, too), and the
    generator state travels in `state_dict` for an exact resume.
    """

    def __init__(self, capacity: int, feature_dim: int, num_classes: int, *, beta_put: float,
                 beta_get: float, count_floor: float = 1e-3, seed: int = 0):
        if capacity <= 0:
            raise ValueError(f"bank capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.num_classes = num_classes
        self.beta_put = beta_put
        self.beta_get = beta_get
        self.count_floor = count_floor
        self.features = torch.zeros(capacity, feature_dim)
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
        features = features.detach().float().cpu()
        labels = labels.detach().long().cpu()
        rho = put_probabilities(self.class_counts(), self.beta_put, self.count_floor)
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
        self.features[slots] = features[sources]
        self.labels[slots] = labels[sources]
        self.fill = min(self.capacity, self.fill + n_new)
        return slots, sources

    def draw(self, k: int, nhat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Draw min(k, fill) entries with replacement, favouring rare classes; None when empty."""
        k = min(k, self.fill)
        if k == 0:
            return None
        p = draw_probabilities(nhat.cpu(), self.labels[: self.fill], self.beta_get, self.count_floor)
        idx = torch.multinomial(p, k, replacement=True, generator=self.generator)
        return self.features[idx], self.labels[idx]

    def state_dict(self) -> dict:
        return {"features": self.features[: self.fill].clone(), "labels": self.labels[: self.fill].clone(),
                "capacity": self.capacity, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"checkpoint bank capacity {int(state['capacity'])} != configured {self.capacity}")
        self.fill = int(state["labels"].numel())
        self.features[: self.fill] = state["features"]
        self.labels[: self.fill] = state["labels"]
        self.generator.set_state(state["generator"])
