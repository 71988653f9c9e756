"""Balanced accuracy and friends, computed by Avalanche's metrics in an EvaluationPlugin.

The test set is an Avalanche test stream (one experience, or one per segment of classes where a
stream introduces classes over time); an eval-only Avalanche strategy runs the model given to it
(the EMA model's head by default, then the online weights) and the plugin's metrics and loggers
(text, CSV, TensorBoard) do the counting and the writing. Forgetting per segment is Avalanche's
`Forgetting` metric: accuracy after the experience that introduced the segment minus accuracy now.
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
    from avalanche.evaluation.metrics import Forgetting, accuracy_metrics, class_accuracy_metrics, loss_metrics
    from avalanche.logging import CSVLogger, TensorboardLogger, TextLogger
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.templates import SupervisedTemplate

ACC_KEY = "Top1_Acc_Stream/eval_phase/test_stream"
EXP_ACC_PREFIX = "Top1_Acc_Exp/eval_phase/test_stream/"
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
                 device: torch.device, batch_size: int = 256, many_threshold: int = 100, few_threshold: int = 20,
                 segments: list[list[int]] | None = None):
        self.num_classes = num_classes
        self.groups = shot_groups(labeled_per_class, many_threshold, few_threshold)
        targets = np.asarray(test_dataset.targets)
        dataset = _make_taskaware_classification_dataset(test_dataset, task_labels=0, targets=targets.tolist())
        self.segments = segments if segments and len(segments) > 1 else None
        parts = [dataset] if self.segments is None else \
            [dataset.subset(np.flatnonzero(np.isin(targets, seg)).tolist()) for seg in self.segments]
        self.stream = benchmark_from_datasets(test=parts).test_stream
        self.forgetting = Forgetting()
        run_dir = Path(run_dir)
        self._log = open(run_dir / "log.txt", "a", encoding="utf-8")
        self._tensorboard = TensorboardLogger(str(run_dir / "tensorboard"))
        self.strategy = _eval_strategy(EvaluationPlugin(
            accuracy_metrics(experience=True, stream=True), class_accuracy_metrics(stream=True), loss_metrics(stream=True),
            loggers=[TextLogger(self._log), CSVLogger(str(run_dir / "csv")), self._tensorboard]), batch_size, device)
        with warnings.catch_warnings():  # the online-weights pass logs nothing on purpose
            warnings.filterwarnings("ignore", message="No loggers specified")
            self.raw_strategy = _eval_strategy(EvaluationPlugin(
                accuracy_metrics(stream=True), class_accuracy_metrics(stream=True), loggers=[]), batch_size, device)

    def _run(self, strategy: SupervisedTemplate, model) -> tuple[float, list[float], float | None, dict]:
        strategy.model = model
        with torch.inference_mode(False):
            metrics = strategy.eval(self.stream)
        per_class = [float(metrics.get(f"{CLASS_ACC_PREFIX}{c}", float("nan"))) for c in range(self.num_classes)]
        per_exp = {k[len(EXP_ACC_PREFIX):]: float(v) for k, v in metrics.items() if k.startswith(EXP_ACC_PREFIX)}
        return float(metrics[ACC_KEY]), per_class, metrics.get(LOSS_KEY), per_exp

    def _forgetting(self, per_exp: dict, trained_segments: list[int]) -> dict:
        accs = [per_exp[k] for k in sorted(per_exp)]
        for i in trained_segments:
            if i not in self.forgetting.initial:
                self.forgetting.update_initial(i, accs[i])
            self.forgetting.update_last(i, accs[i])
        result = self.forgetting.result()
        values = [result.get(i) for i in range(len(accs))]
        known = [v for v in values if v is not None]
        return {"segment_acc": accs, "segment_forgetting": values,
                "forgetting": float(np.mean(known)) if known else None}

    def evaluate(self, model, online_model=None, trained_segments: list[int] | None = None) -> dict:
        """Evaluate `model` (the EMA model where there is one) and `online_model` (the online weights;
        None: the same model). `trained_segments` (stream mode): the class segments trained so far."""
        top1, per_class, loss, per_exp = self._run(self.strategy, model)
        if online_model is not None:
            raw_top1, raw_per_class, _, _ = self._run(self.raw_strategy, online_model)
        else:
            raw_top1, raw_per_class = top1, per_class
        forgetting = self._forgetting(per_exp, trained_segments) if self.segments and trained_segments is not None else {}
        return {**forgetting,
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

    def log_scalars(self, values: dict, step: int) -> None:
        """Values Avalanche's plugin does not compute (forgetting, bank purity) into the same TensorBoard."""
        for name, value in values.items():
            if isinstance(value, (int, float)):
                self._tensorboard.writer.add_scalar(name, value, step)

    def state_dict(self) -> dict:
        return {"forgetting_initial": {int(k): float(v) for k, v in self.forgetting.initial.items()}}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state["forgetting_initial"].items():
            self.forgetting.update_initial(int(k), float(v))

    def close(self) -> None:
        self._tensorboard.writer.flush()
        self._tensorboard.writer.close()
        self._log.close()
