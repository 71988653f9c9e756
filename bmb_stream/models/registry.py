"""Backbone registry: plain nn.Modules with a `feature_dim` attribute."""

from __future__ import annotations

import dataclasses
from typing import Callable

from torch import nn
from torchvision.models import resnet50

from bmb_stream.models.heads import TwoHeadClassifier
from bmb_stream.models.small_cnn import SmallCNN
from bmb_stream.models.wrn import WideResNet


def _resnet50(small_stem: bool = False, **_) -> nn.Module:
    net = resnet50(weights=None)
    if small_stem:  # 32 or 64 px images: a 3x3 stride-1 stem and no max-pool keep the spatial detail
        net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    net.feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "wrn28_2": lambda **kw: WideResNet(depth=28, widen=2),
    "resnet50": _resnet50,
    "small_cnn": lambda width=16, **kw: SmallCNN(width=width),
}


def model_options(model_cfg) -> dict:
    """The backbone's options of a `model` config (its schema's dataclass): all but the name and where the
    weights start from."""
    return {k: v for k, v in dataclasses.asdict(model_cfg).items() if k not in ("name", "pretrained")}


def build_model(name: str, num_classes: int, **options) -> TwoHeadClassifier:
    if name not in BACKBONES:
        raise ValueError(f"unknown model {name!r}; accepted: {', '.join(BACKBONES)}")
    backbone = BACKBONES[name](**options)
    return TwoHeadClassifier(backbone, backbone.feature_dim, num_classes)
