"""What an algorithm is, and what its step takes and gives.

An algorithm is one class (registered in `bmb_stream/algorithms/__init__.py`) with its config schema
(`Config`, a dataclass whose fields carry their defaults and checks). It makes and keeps its own
state, computes its training step's loss (the learner does backward, the optimizer, the EMA and the
rest that every algorithm shares), updates its state after the step, says which logits evaluation
reports, and saves and loads its state. The engine never asks for an algorithm by name.

Shared conventions of the steps: one forward pass over [x_L, u_w, u_s1, u_s2] so that batch norm sees
all four chunks; pseudo-labels come from the detached weak view; unlabeled means divide by 2 * B_U.
"""

from __future__ import annotations

import abc
import copy
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from omegaconf import MISSING

from bmb_stream.method.bank import MemoryBank


@dataclass
class MethodConfig:
    """The keys every algorithm's config has."""

    name: str = MISSING


@dataclass
class Setup:
    """What an algorithm is built from besides its config."""

    num_classes: int
    labeled_counts: torch.Tensor  # the labeled set's images per class
    feature_dim: int
    device: torch.device
    seed: int = 0
    total_steps: int | None = None  # the run's length in steps (None: unknown, a stream without a manifest)


@dataclass
class Batch:
    x_labeled: torch.Tensor
    y_labeled: torch.Tensor
    u_weak: torch.Tensor | None = None
    u_strong1: torch.Tensor | None = None
    u_strong2: torch.Tensor | None = None


@dataclass
class StepOutput:
    loss: torch.Tensor
    terms: dict[str, torch.Tensor]  # by name, detached, on the device: read only when logged (a read waits for the device)
    # for the monitor: `pseudo_labels` and `mask` of the unlabeled batch, `bank_write` (slots, origin);
    # and what the algorithm's `after_step` reads
    extras: dict = field(default_factory=dict)


class Algorithm(abc.ABC):
    """The base every algorithm extends. `test_logits` is what evaluation reports; an algorithm with a
    test-time rule of its own (a head, a correction) names it in `test_rule` and gives the same
    weights' logits without it too, reported beside them."""

    name: ClassVar[str]
    Config: ClassVar[type] = MethodConfig
    needs_unlabeled: ClassVar[bool] = True
    test_rule: ClassVar[str | None] = None
    bank: MemoryBank | None = None  # a memory bank, for the monitor's purity and the summary

    def __init__(self, cfg, setup: Setup):
        self.cfg = cfg  # an instance of `Config`
        self.setup = setup

    @property
    def needs_horizon(self) -> bool:
        """Whether a schedule of the algorithm is a fraction of the run, so the run's length must be known."""
        return False

    def progress(self, step: int, periods: int = 0) -> float:
        """The fraction of the run done before `step`, in [0, 1]; with `periods`, floored to a multiple
        of 1 / periods (schedules the authors step once per epoch)."""
        total = max(1, self.setup.total_steps or 1)
        done = min(step, total) / total
        return float(int(done * periods)) / periods if periods else done

    @abc.abstractmethod
    def step(self, model, batch: Batch, step: int) -> StepOutput:
        """The loss of one training step on a batch already on the device (`model`: the classifier, or
        its data-parallel wrapper, in train mode)."""

    def after_step(self, out: StepOutput) -> None:
        """Update the algorithm's state after the optimizer step."""

    def test_logits(self, classifier, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The logits evaluation reports, of normalised images (the classifier in eval mode), from one
        forward pass: `rule`, with the algorithm's test-time rule, and `plain`, without it (where it has one)."""
        return {"rule": classifier.head_std(classifier(x))}

    @classmethod
    def exported_head(cls, cfg, classifier, example: torch.Tensor) -> torch.nn.Linear:
        """One linear head that gives, on the classifier's features, the logits of `test_logits`' `rule`:
        the test-time rule folded into a plain model (`bmb-stream export`). `cfg`: the algorithm's config;
        `example`: a normalised input batch (its shape, dtype and device); the classifier is in eval mode."""
        return copy.deepcopy(classifier.head_std)

    def record(self) -> dict:
        """What each evaluation record adds about the algorithm's state."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict`. Checkpoints written before algorithms were classes hold the learner's
        whole state here (BMB's `bank` and `estimate` beside the model)."""


def active(step: int, start: int | None) -> float:
    """1 from step `start` on (a warm-up's end), else 0."""
    return 1.0 if step >= (start or 0) else 0.0


def forward_all(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features of the labeled, weak and (both) strong views from one forward pass."""
    b, u = len(batch.x_labeled), len(batch.u_weak)
    feats = model(torch.cat([batch.x_labeled, batch.u_weak, batch.u_strong1, batch.u_strong2]))
    f_l, f_w, f_s1, f_s2 = feats.split([b, u, u, u])
    return f_l, f_w, torch.cat([f_s1, f_s2])


def on_host(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Small integer or boolean tensors copied to the CPU in one transfer: a step's one wait for the
    device (each separate .cpu(), nonzero or boolean index would be another)."""
    flat = torch.cat([t.reshape(-1).long() for t in tensors]).cpu()
    return [part.view(t.shape).to(t.dtype) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


def unwrapped(model):
    """The classifier itself, without a data-parallel wrapper (for a forward pass no loss uses)."""
    return getattr(model, "module", model)

