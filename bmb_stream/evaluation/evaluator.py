"""Balanced accuracy and friends, computed by Avalanche's metrics in an EvaluationPlugin.

The test set is an Avalanche test stream; an eval-only Avalanche strategy runs the model given to it
(the EMA model's head by default, then the online weights) and the plugin's metrics and loggers
(text, CSV, TensorBoard) do the counting and the writing.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="no QP solver found")
    from avalanche.benchmarks import benchmark_from_datasets
    from avalanche.benchmarks.utils import _make_taskaware_classification_dataset
    from avalanche.evaluation.metrics import accuracy_metrics, class_accuracy_metrics, forgetting_metrics, loss_metrics
    from avalanche.logging import CSVLogger, TensorboardLogger, TextLogger
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.templates import SupervisedTemplate

ACC_KEY = "Top1_Acc_Stream/eval_phase/test_stream"
LOSS_KEY = "Loss_Stream/eval_phase/test_stream"
CLASS_ACC_PREFIX = "Top1_ClassAcc_Stream/eval_phase/test_stream/Task000/"


def shot_groups(labeled_per_class, many_threshold: int = 100, few_threshold: int = 20) -> dict[str, list[int]]:
    """Classes by labeled count: many (> many_threshold), few (< few_threshold), medium in between."""
    counts = np.asarray(labeled_per_class)
    return {"many": np.flatnonzero(counts > many_threshold).tolist(),
            "few": np.flatnonzero(counts < few_threshold).tolist(),
            "medium": np.flatnonzero((counts <= many_threshold) & (counts >= few_threshold)).tolist()}


def group_accuracy(per_class: list[float], classes: list[int]) -> float | None:
    vals = [per_class[c] for c in classes if not np.isnan(per_class[c])]
    return float(np.mean(vals)) if vals else None


def _eval_strategy(plugin: EvaluationPlugin, batch_size: int, device: torch.device) -> SupervisedTemplate:
    placeholder = torch.nn.Linear(1, 1)  # replaced by the model under evaluation on every call
    return SupervisedTemplate(model=placeholder, optimizer=torch.optim.SGD(placeholder.parameters(), lr=0.0),
                              eval_mb_size=batch_size, evaluator=plugin, device=device)


class Evaluator:
    def __init__(self, test_dataset, num_classes: int, labeled_per_class: list[int], run_dir: str | Path,
                 device: torch.device, batch_size: int = 256, many_threshold: int = 100, few_threshold: int = 20):
        self.num_classes = num_classes
        self.groups = shot_groups(labeled_per_class, many_threshold, few_threshold)
        dataset = _make_taskaware_classification_dataset(test_dataset, task_labels=0,
                                                         targets=[int(t) for t in test_dataset.targets])
        self.stream = benchmark_from_datasets(test=[dataset]).test_stream
        run_dir = Path(run_dir)
        self._log = open(run_dir / "log.txt", "a", encoding="utf-8")
        self._tensorboard = TensorboardLogger(str(run_dir / "tensorboard"))
        self.strategy = _eval_strategy(EvaluationPlugin(
            accuracy_metrics(stream=True), class_accuracy_metrics(stream=True), loss_metrics(stream=True),
            forgetting_metrics(experience=True, stream=True),
            loggers=[TextLogger(self._log), CSVLogger(str(run_dir / "csv")), self._tensorboard]), batch_size, device)
        with warnings.catch_warnings():  # the online-weights pass logs nothing on purpose
            warnings.filterwarnings("ignore", message="No loggers specified")
            self.raw_strategy = _eval_strategy(EvaluationPlugin(
                accuracy_metrics(stream=True), class_accuracy_metrics(stream=True), loggers=[]), batch_size, device)

    def _run(self, strategy: SupervisedTemplate, model) -> tuple[float, list[float], float | None]:
        strategy.model = model
        with torch.inference_mode(False):
            metrics = strategy.eval(self.stream)
        per_class = [float(metrics.get(f"{CLASS_ACC_PREFIX}{c}", float("nan"))) for c in range(self.num_classes)]
        return float(metrics[ACC_KEY]), per_class, metrics.get(LOSS_KEY)

    def evaluate(self, learner) -> dict:
        was_training = learner.model.training
        top1, per_class, loss = self._run(self.strategy, learner.evaluated_model())
        if learner.ema is not None:
            raw_top1, raw_per_class, _ = self._run(self.raw_strategy, learner.online_model())
        else:
            raw_top1, raw_per_class = top1, per_class
        learner.model.train(was_training)
        return {
            "balanced_acc": float(np.nanmean(per_class)),
            "raw_balanced_acc": float(np.nanmean(raw_per_class)),
            "top1_acc": top1,
            "raw_top1_acc": raw_top1,
            "per_class_acc": per_class,
            "many_acc": group_accuracy(per_class, self.groups["many"]),
            "medium_acc": group_accuracy(per_class, self.groups["medium"]),
            "few_acc": group_accuracy(per_class, self.groups["few"]),
            "test_loss": None if loss is None else float(loss),
        }

    def close(self) -> None:
        self._tensorboard.writer.flush()
        self._tensorboard.writer.close()
        self._log.close()
