"""Weights users take away: a trained run's classifier as a plain PyTorch model (written by
engine/export.py, `bmb-stream export`), read back (`load_exported`), and a backbone started from a state
dict (`model.pretrained`).

An exported model is the backbone and one linear head with the algorithm's test-time rule folded in
(BMB's and ABC's balanced head, CDMAD's refinement as the head's bias), plus the input's normalisation:
it takes image batches as uint8 (0-255) or float (0-1) tensors, N x C x H x W, after the test view
(`preprocessing` in its JSON), and returns logits. Beside the weights (`.pt`: a state dict for
`torch.load(weights_only=True)`; `.safetensors` with the `safetensors` package), a JSON file of the
same name says what a user needs to run it: model, classes and their names, input size, mean and std,
the test view, and where the weights came from.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from bmb_stream.errors import BadData, ConfigError, DataNotFound
from bmb_stream.models.registry import build_model

FORMAT = 1
WEIGHTS = ("ema", "raw")
HEADS = ("rule", "std", "bal")  # rule: the algorithm's test-time rule; std / bal: that head as it is


class ExportedClassifier(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Linear, mean, std):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32)[:, None, None])
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32)[:, None, None])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().mul(1.0 / 255) if images.dtype == torch.uint8 else images.float()
        return self.head(self.backbone((x - self.mean) / self.std))


def build_exported(meta: dict) -> ExportedClassifier:
    """An exported model's architecture, from its JSON, with untrained weights."""
    model = build_model(meta["model"]["name"], meta["num_classes"], **meta["model"]["options"])
    return ExportedClassifier(model.backbone, nn.Linear(model.feature_dim, meta["num_classes"]), meta["mean"], meta["std"])


def meta_path(weights_path: str | Path) -> Path:
    return Path(weights_path).with_suffix(".json")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a .pt file (never unpickling anything but tensors) or a .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFound(f"{path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise ConfigError(f"{path}: reading .safetensors needs the safetensors package: pip install safetensors") from None
    except Exception as e:  # a truncated or foreign file: pickle, zip and safetensors errors alike
        raise BadData(f"{path}: not a readable state dict ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # Lightning-style wrappers
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BadData(f"{path}: not a state dict (a mapping of names to tensors)")
    return state


def load_exported(path: str | Path, device: str | torch.device = "cpu") -> tuple[ExportedClassifier, dict]:
    """An exported model (in eval mode) and its JSON."""
    path = Path(path)
    if not meta_path(path).is_file():
        raise DataNotFound(f"{meta_path(path)}: the JSON beside {path.name} is missing (bmb-stream export writes both)")
    meta = json.loads(meta_path(path).read_text())
    if meta.get("format") != FORMAT:
        raise BadData(f"{meta_path(path)}: not an exported bmb-stream model of format {FORMAT}")
    model = build_exported(meta)
    model.load_state_dict(read_state_dict(path))
    return model.to(device).eval(), meta


def load_pretrained(classifier, path: str | Path) -> str:
    """Start `classifier`'s backbone from the state dict at `path` (`model.pretrained`): an exported model,
    a run's checkpoint weights (`backbone.*` keys), or a plain backbone state dict such as torchvision's
    ResNet-50 weights (its `fc.*` classifier is left out). The heads start untrained: their classes are
    the run's. Returns what was loaded, in words."""
    state = read_state_dict(path)
    if any(k.startswith("backbone.") for k in state):
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    expected = classifier.backbone.state_dict()
    state = {k: v for k, v in state.items() if k in expected or not k.startswith("fc.")}  # a classifier's last layer
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        shown = "; ".join(f"{what}: {', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}" for what, keys in
                          (("missing", missing), ("not in the model", unexpected), ("of another shape", wrong)) if keys)
        raise ConfigError(f"model.pretrained={path} does not fit this model's backbone ({shown}): give the weights "
                          f"of the same architecture (model=...)")
    classifier.backbone.load_state_dict(state)
    return f"backbone from {path} ({len(state)} tensors); the heads start untrained"
