"""Backbones and the two-head classifier. `build_model(name, num_classes, ...)` is the registry."""

from bmb_stream.models.heads import TwoHeadClassifier
from bmb_stream.models.registry import BACKBONES, build_model

__all__ = ["BACKBONES", "TwoHeadClassifier", "build_model"]
