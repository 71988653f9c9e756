"""Monitoring with the true classes of unlabeled images, where they are known (simulated streams'
`gt.cls`, the offline protocols' unlabeled splits): pseudo-label precision and recall per class, the
memory bank's label purity, and the prequential accuracy of each experience: how often the model's
prediction for an incoming image (the prediction the algorithm pseudo-labels with, by the weights of
the step that first reads the image, before that step trains on it) is its true class. It reads what
a training step did; no training step ever reads it."""

from __future__ import annotations

import numpy as np
import torch

LABELED = -2  # bank_truth of an entry written from a labeled image (its label is its true class)


class StreamMonitor:
    def __init__(self, num_classes: int, bank_capacity: int = 0):
        self.num_classes = num_classes
        self.bank_truth = torch.full((bank_capacity,), -1, dtype=torch.long)  # true class per slot (-1: unknown)
        self.first_reads: dict[int, list[int]] = {}  # experience -> [right, known] over its images' first reads
        self.since_read = np.zeros(4, dtype=np.int64)  # since the last log point: right, known, confident right, confident
        self.reset_counts()

    def reset_counts(self) -> None:
        """Start the precision/recall counts afresh (at each experience)."""
        self.correct = np.zeros(self.num_classes, dtype=np.int64)    # confident and right, by pseudo-label
        self.predicted = np.zeros(self.num_classes, dtype=np.int64)  # confident, by pseudo-label
        self.present = np.zeros(self.num_classes, dtype=np.int64)    # samples with a known class, by class

    def observe(self, extras: dict, truth: torch.Tensor, first_read_of: int | None = None) -> None:
        """After a step: its pseudo-labels and bank writes against the batch's true classes (-1: unknown).
        `first_read_of`: the experience whose images the batch reads for the first time (its first pass)."""
        truth = truth.cpu()
        known = truth >= 0
        if "pseudo_labels" in extras and known.any():
            labels, mask = extras["pseudo_labels"].cpu(), extras["mask"].cpu()
            if first_read_of is not None:
                counts = self.first_reads.setdefault(first_read_of, [0, 0])
                counts[0] += int((labels[known] == truth[known]).sum())
                counts[1] += int(known.sum())
            sel = known & mask
            np.add.at(self.predicted, labels[sel].numpy(), 1)
            np.add.at(self.correct, labels[sel & (labels == truth)].numpy(), 1)
            np.add.at(self.present, truth[known].numpy(), 1)
            right = labels == truth
            self.since_read += [int((right & known).sum()), int(known.sum()), int((right & sel).sum()), int(sel.sum())]
        if "bank_write" in extras and len(self.bank_truth):
            slots, origin = extras["bank_write"]  # origin: unlabeled sample index, -1 for a labeled image
            self.bank_truth[slots] = torch.where(origin >= 0, truth[origin.clamp_min(0)], LABELED)

    def prequential(self, experiences) -> float | None:
        """The prequential accuracy over these experiences' images together (None: no image of known class)."""
        right, known = (sum(self.first_reads.get(k, [0, 0])[i] for k in experiences) for i in (0, 1))
        return right / known if known else None

    def step_scalars(self, bank=None) -> dict:
        """For the step log, since its last call: the accuracy of the pseudo-labels (of all unlabeled images
        of known class, and of the confident ones alone), and the bank's size and purity."""
        right, known, confident_right, confident = self.since_read.tolist()
        self.since_read[:] = 0
        out = {"pseudo_label_acc": right / known if known else None,
               "confident_pseudo_label_acc": confident_right / confident if confident else None}
        if bank is not None:
            out |= {"bank_size": bank.fill, "bank_purity": self.bank_purity(bank)}
        return out

    def bank_purity(self, bank) -> float | None:
        """The fraction of the bank's pseudo-labeled entries of known class whose pseudo-label is right."""
        truth = self.bank_truth[: bank.fill]
        known = truth >= 0  # pseudo-labeled entries whose true class the stream carries
        return float((truth[known] == bank.labels[: bank.fill][known]).float().mean()) if known.any() else None

    def report(self, bank=None) -> dict:
        if self.present.sum() == 0:
            return {}
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(self.predicted > 0, self.correct / self.predicted, np.nan)
            recall = np.where(self.present > 0, self.correct / self.present, np.nan)
        out = {"pseudo_label_precision": precision.tolist(), "pseudo_label_recall": recall.tolist()}
        if bank is not None and bank.fill:
            out["bank_purity"] = self.bank_purity(bank)
            out["bank_labeled"] = int((self.bank_truth[: bank.fill] == LABELED).sum())
        return out

    def state_dict(self) -> dict:
        return {"bank_truth": self.bank_truth.clone(), "correct": torch.from_numpy(self.correct.copy()),
                "predicted": torch.from_numpy(self.predicted.copy()), "present": torch.from_numpy(self.present.copy()),
                "first_reads": {k: list(v) for k, v in self.first_reads.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.bank_truth = state["bank_truth"].clone()
        # checkpoints written before prequential accuracy have no counts: it starts at the resumed experience
        self.first_reads = {int(k): [int(v[0]), int(v[1])] for k, v in state.get("first_reads", {}).items()}
        self.correct, self.predicted, self.present = (state[k].numpy().copy() for k in ("correct", "predicted", "present"))
