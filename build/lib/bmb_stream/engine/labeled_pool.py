"""The labeled pool: labeled samples the stream learner met in the shards, kept to train on beside the
seed set. It is learner state, not a reader: it grows and changes with every experience, its eviction
draws from its own generator, and it is checkpointed with the run (StreamRun.checkpoint_state), so a
resumed run samples from exactly the pool an uninterrupted run would have."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class LabeledPool:
    """Labeled samples met in the stream, bounded and class-balanced: when full, a random entry of
    the most represented class leaves. Part of the learner's persistent state."""

    capacity: int
    num_classes: int
    seed: int = 0

    def __post_init__(self):
        self.images: list[bytes] = []
        self.labels: list[int] = []
        self.generator = torch.Generator().manual_seed(self.seed)

    def add(self, image: bytes, label: int) -> None:
        if self.capacity <= 0:
            return
        if len(self.labels) >= self.capacity:
            counts = np.bincount(self.labels, minlength=self.num_classes)
            biggest = int(counts.argmax())
            if counts[label] >= counts[biggest]:  # the newcomer's class is already the largest
                return
            members = [i for i, c in enumerate(self.labels) if c == biggest]
            victim = members[int(torch.randint(len(members), (), generator=self.generator))]
            self.images[victim], self.labels[victim] = image, label
            return
        self.images.append(image)
        self.labels.append(label)

    def class_counts(self) -> list[int]:
        return np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=self.num_classes).tolist()

    # the checkpoint's "labeled_pool" entry: plain lists and the generator's state, no class reference,
    # so checkpoints written before the pool left the shard reader load unchanged
    def state_dict(self) -> dict:
        return {"images": list(self.images), "labels": list(self.labels), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.images, self.labels = list(state["images"]), [int(x) for x in state["labels"]]
        self.generator.set_state(state["generator"])
