"""The classifier BMB trains: one backbone, a standard head and a balanced head on its features."""

from __future__ import annotations

import torch
from torch import nn


def linear_head(feature_dim: int, num_classes: int) -> nn.Linear:
    head = nn.Linear(feature_dim, num_classes)
    nn.init.xavier_normal_(head.weight)
    nn.init.zeros_(head.bias)
    return head


class TwoHeadClassifier(nn.Module):
    """`forward` returns features; `head_std` (FixMatch's head) and `head_bal` (the balanced head: BMB's,
    ABC's auxiliary one) map them to logits. Which head predicts is the algorithm's choice, not the model's."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.head_std = linear_head(feature_dim, num_classes)
        self.head_bal = linear_head(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def head(self, name: str) -> nn.Linear:
        return {"std": self.head_std, "bal": self.head_bal}[name]


class Predictor(nn.Module):
    """Wraps a classifier so that calling it gives the logits evaluation consumes: `logits(classifier, x)`
    (an algorithm's test-time rule); `prepare` turns its input into the classifier's (the uint8 images
    into normalised floats)."""

    def __init__(self, classifier: TwoHeadClassifier, logits, prepare=None):
        super().__init__()
        self.classifier = classifier
        self.logits = logits
        self.prepare = prepare

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.prepare is not None:
            x = self.prepare(x)
        return self.logits(self.classifier, x)
