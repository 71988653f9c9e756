"""Balanced accuracy and friends: per-class, balanced and top-1 accuracy, test loss, many/medium/few
groups and, in a stream that introduces classes over time, forgetting per segment of classes
(`stream_forgetting`; the continual-learning metrics of every stream are evaluation/continual.py's).

The test set is read (decoded and transformed) once, when the evaluator is built, and kept as tensors
(uint8 images, which the models normalise) if it fits in CACHE_BYTES; an evaluation is then one pass over those tensors that runs every model
under evaluation on each batch. Top-1 accuracy and the test loss are Avalanche's standalone `Accuracy`
and `LossMetric` (the mean cross-entropy of each batch, weighted by its size); per-class hits are
counted with tensors (Avalanche's `ClassAccuracy` counts one sample at a time, in Python). Forgetting
per segment is Avalanche's `Forgetting`: accuracy on the segment's classes at the first evaluation after
it was trained on, minus accuracy now. With segments, only test images of their classes count, as in
a test stream of one experience per segment.

The run writes each evaluation's record through its loggers (engine/loggers.py).

In a data-parallel run every rank reads and evaluates its own contiguous part of the test set; the
per-class counts, and the sample-weighted accuracy and loss, are summed over the ranks, so every rank
gets the numbers of the whole test set, and rank 0 alone writes them.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from bmb_stream import distributed

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="no QP solver found")
    from avalanche.evaluation.metrics import Accuracy, Forgetting, LossMetric

CACHE_BYTES = 2 * 2**30  # a larger test set (ImageNet-size images) is read again at every evaluation


def shot_groups(labeled_per_class, many_threshold: int = 100, few_threshold: int = 20) -> dict[str, list[int]]:
    """Classes by labeled count: many (> many_threshold), few (< few_threshold), medium in between."""
    counts = np.asarray(labeled_per_class)
    return {"many": np.flatnonzero(counts > many_threshold).tolist(),
            "few": np.flatnonzero(counts < few_threshold).tolist(),
            "medium": np.flatnonzero((counts <= many_threshold) & (counts >= few_threshold)).tolist()}


def group_accuracy(per_class: list[float], classes: list[int]) -> float | None:
    vals = [per_class[c] for c in classes if not np.isnan(per_class[c])]
    return float(np.mean(vals)) if vals else None


def in_order(dataset, batch_size: int) -> DataLoader:
    """The dataset's batches in order. The loader's own generator keeps evaluation from drawing on the
    global random state, so that when and how often a run evaluates never changes its training."""
    return DataLoader(dataset, batch_size=batch_size, generator=torch.Generator())


def read_once(dataset, batch_size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The whole dataset as (images, labels) tensors; None if the images would pass CACHE_BYTES
    (known from the first batch)."""
    images, labels = [], []
    for x, y in in_order(dataset, batch_size):
        if not images and x[0].numel() * x.element_size() * len(dataset) > CACHE_BYTES:
            return None
        images.append(x)
        labels.append(y)
    if not images:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.cat(images), torch.cat(labels)


def rank_part(dataset):
    """This rank's part of `dataset` (the whole of it with one process); the ranks' counts are summed."""
    return dataset if distributed.world_size() == 1 else Subset(dataset, list(distributed.rank_share(range(len(dataset)))))


@contextmanager
def eval_mode(models):
    """The models in eval mode; every module's previous train/eval mode restored after."""
    modes = [(m, m.training) for model in models for m in model.modules()]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for m, training in modes:  # parents come first, so a parent's (recursive) train() cannot undo a child's mode
            m.train(training)


class Tally:
    """One model's counts over one pass."""

    def __init__(self, num_classes: int, device: torch.device):
        self.accuracy, self.loss = Accuracy(), LossMetric()
        self.hits = torch.zeros(num_classes, dtype=torch.long, device=device)
        self.seen = torch.zeros(num_classes, dtype=torch.long, device=device)

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        predicted = logits.argmax(1)
        self.accuracy.update(predicted, targets)
        self.loss.update(F.cross_entropy(logits, targets), len(targets))
        self.hits += torch.bincount(targets[predicted == targets], minlength=len(self.hits))
        self.seen += torch.bincount(targets, minlength=len(self.seen))

    def result(self, segments: list[list[int]] | None) -> dict:
        """The whole test set's numbers (summed over the ranks' parts in a data-parallel run)."""
        hits, seen = distributed.sum_all(self.hits).double().cpu(), distributed.sum_all(self.seen).double().cpu()
        per_class = torch.where(seen > 0, hits / seen.clamp(min=1), float("nan")).tolist()
        top1, loss = self.accuracy.result(), self.loss.result()
        if distributed.world_size() > 1:  # means of the ranks' parts, weighted by their sizes
            n = float(self.seen.sum())
            top1_sum, loss_sum, total = distributed.sum_all(torch.tensor([top1 * n, loss * n, n], dtype=torch.float64)).tolist()
            top1, loss = top1_sum / max(total, 1.0), loss_sum / max(total, 1.0)
        with warnings.catch_warnings():  # no class in the test set: nan, as before
            warnings.filterwarnings("ignore", message="Mean of empty slice")
            result = {"balanced_acc": float(np.nanmean(per_class)), "top1_acc": top1,
                      "per_class_acc": per_class, "test_loss": loss}
        if segments is not None:  # a segment without test images: 0, as Avalanche's Accuracy gives
            result["segment_acc"] = [float(hits[s].sum() / seen[s].sum()) if seen[s].sum() > 0 else 0.0
                                     for s in segments]
        return result


class Evaluator:
    def __init__(self, test_dataset, num_classes: int, labeled_per_class: list[int], device: torch.device,
                 batch_size: int = 256, many_threshold: int = 100, few_threshold: int = 20,
                 segments: list[list[int]] | None = None):
        self.num_classes, self.batch_size, self.device = num_classes, batch_size, torch.device(device)
        self.groups = shot_groups(labeled_per_class, many_threshold, few_threshold)
        self.segments = segments if segments and len(segments) > 1 else None
        if self.segments is not None:  # classes in no segment are not in the test stream
            kept = np.isin(np.asarray(test_dataset.targets), [c for s in self.segments for c in s])
            test_dataset = Subset(test_dataset, np.flatnonzero(kept).tolist())
        self.dataset = test_dataset = rank_part(test_dataset)
        self.cache = read_once(test_dataset, batch_size)
        if self.cache is not None and self.device.type == "cuda":
            self.cache = tuple(t.pin_memory() for t in self.cache)
        self.forgetting = Forgetting()

    def batches(self):
        """(images, labels) batches of the test set, on the device."""
        if self.cache is None:
            batches = in_order(self.dataset, self.batch_size)
        else:
            images, labels = self.cache
            batches = ((images[i:i + self.batch_size], labels[i:i + self.batch_size])
                       for i in range(0, len(labels), self.batch_size))
        for x, y in batches:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def evaluate_models(self, models: dict[str, nn.Module]) -> dict[str, dict]:
        """Each model's balanced_acc, top1_acc, per_class_acc, test_loss (and segment_acc with segments),
        from one pass over the test set; nothing is logged. A model may give several named logits from
        one forward pass (a dict: `rule`, the algorithm's prediction, and `plain`, the same without its
        test-time rule); the second is reported as `<name>_plain`."""
        tallies: dict[str, Tally] = {}
        with torch.inference_mode(), eval_mode(models.values()):
            for x, y in self.batches():
                for name, model in models.items():
                    out = model(x)
                    for kind, logits in (out.items() if isinstance(out, dict) else [("rule", out)]):
                        key = name if kind == "rule" else f"{name}_{kind}"
                        tallies.setdefault(key, Tally(self.num_classes, self.device)).update(logits, y)
        return {name: tally.result(self.segments) for name, tally in tallies.items()}

    def _forgetting(self, accs: list[float], trained_segments: list[int]) -> dict:
        for i in trained_segments:
            if i not in self.forgetting.initial:
                self.forgetting.update_initial(i, accs[i])
            self.forgetting.update_last(i, accs[i])
        result = self.forgetting.result()
        values = [result.get(i) for i in range(len(accs))]
        known = [v for v in values if v is not None]
        return {"segment_acc": accs, "segment_forgetting": values,
                "stream_forgetting": float(np.mean(known)) if known else None}

    def evaluate(self, model, raw_model=None, trained_segments: list[int] | None = None) -> dict:
        """Evaluate `model` (the EMA model where there is one) and `raw_model` (the raw weights;
        None: the same model); where `model` also gives its logits without the algorithm's test-time
        rule, they are reported as plain_balanced_acc and plain_top1_acc. `trained_segments` (stream
        mode): the class segments trained so far."""
        models = {"model": model} if raw_model is None else {"model": model, "raw": raw_model}
        results = self.evaluate_models(models)
        main, raw = results["model"], results.get("raw", results["model"])
        forgetting = (self._forgetting(main["segment_acc"], trained_segments)
                      if self.segments and trained_segments is not None else {})
        per_class = main["per_class_acc"]
        record = {**forgetting,
            "balanced_acc": main["balanced_acc"],
            "raw_balanced_acc": raw["balanced_acc"],
            "top1_acc": main["top1_acc"],
            "raw_top1_acc": raw["top1_acc"],
            "per_class_acc": per_class,
            "many_acc": group_accuracy(per_class, self.groups["many"]),
            "medium_acc": group_accuracy(per_class, self.groups["medium"]),
            "few_acc": group_accuracy(per_class, self.groups["few"]),
            "test_loss": main["test_loss"],
        }
        if "model_plain" in results:
            plain = results["model_plain"]
            record |= {"plain_balanced_acc": plain["balanced_acc"], "plain_top1_acc": plain["top1_acc"]}
        return record

    def state_dict(self) -> dict:
        return {"forgetting_initial": {int(k): float(v) for k, v in self.forgetting.initial.items()}}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state["forgetting_initial"].items():
            self.forgetting.update_initial(int(k), float(v))
