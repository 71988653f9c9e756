"""Weights users take away: a trained run's classifier as a plain PyTorch model (`bmb-stream export`), and
back (`load_exported`, `model.pretrained`).

An exported model is the backbone and one linear head with the algorithm's test-time rule folded in
(BMB's and ABC's balanced head, CDMAD's refinement as the head's bias), plus the input's normalisation:
it takes image batches as uint8 (0-255) or float (0-1) tensors, N x C x H x W, after the test view
(`preprocessing` in its JSON), and returns logits. Beside the weights (`.pt`: a state dict for
`torch.load(weights_only=True)`; `.safetensors` with the `safetensors` package), a JSON file of the
same name says what a user needs to run it: model, classes and their names, input size, mean and std,
the test view, and where the weights came from.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

from bmb_stream.errors import BadData, ConfigError, DataNotFound
from bmb_stream.models.registry import build_model
from bmb_stream.storage.atomic import atomic_write, write_text

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


def save_exported(model: ExportedClassifier, meta: dict, out: str | Path) -> tuple[Path, Path]:
    out = Path(out)
    if out.suffix not in (".pt", ".safetensors"):
        raise ConfigError(f"out={out}: the weights file ends in .pt (a PyTorch state dict) or .safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if out.suffix == ".safetensors":
        try:
            from safetensors.torch import save as safetensors_bytes
        except ImportError:
            raise ConfigError("out=*.safetensors needs the safetensors package: pip install safetensors") from None
        with atomic_write(out) as f:
            f.write(safetensors_bytes(state))
    else:
        with atomic_write(out) as f:
            torch.save(state, f)
    write_text(meta_path(out), json.dumps(meta, indent=2) + "\n")
    return out, meta_path(out)


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


def checkpoint_of(run_dir: Path, checkpoint: str) -> Path:
    """`last`, `best` (eval.keep_best=true) or a path."""
    if checkpoint in ("last", "best"):
        path = run_dir / "checkpoints" / f"{checkpoint}.pt"
        if not path.is_file():
            hint = " (a run keeps it with eval.keep_best=true)" if checkpoint == "best" else ""
            raise DataNotFound(f"{path}: no such checkpoint{hint}")
        return path
    return Path(checkpoint)


def export_run(run_dir: str | Path, checkpoint: str = "last", weights: str = "ema",
               head: str = "rule") -> tuple[ExportedClassifier, dict]:
    """The classifier of a run folder's checkpoint as an exported model, and its JSON. `weights`: ema (the
    evaluated model) or raw; `head`: rule (the algorithm's test-time rule, what the run evaluates), std or bal."""
    from omegaconf import OmegaConf

    from bmb_stream.algorithms import ALGORITHMS
    from bmb_stream.config import stored_config
    from bmb_stream.engine.checkpoint import check_layout, load_checkpoint
    from bmb_stream.redaction import redacted

    if weights not in WEIGHTS or head not in HEADS:
        raise ConfigError(f"weights={weights} head={head}: weights is one of {', '.join(WEIGHTS)}, head one of "
                          f"{', '.join(HEADS)}")
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise DataNotFound(f"{run_dir}: not a run folder (no config.yaml)")
    cfg = stored_config(run_dir / "config.yaml")
    path = checkpoint_of(run_dir, checkpoint)
    state = check_layout(load_checkpoint(path), path)
    learner = state["learner"]
    if weights == "ema" and "ema" not in learner:
        raise ConfigError(f"{path} has no EMA model (the run had train.ema_decay=0): export weights=raw")
    weights_state = learner["ema"]["module"] if weights == "ema" else learner["model"]
    num_classes = weights_state["head_std.weight"].shape[0]
    options = {k: v for k, v in dataclasses.asdict(cfg.model).items() if k not in ("name", "pretrained")}
    classifier = build_model(cfg.model.name, num_classes, **options)
    classifier.load_state_dict(weights_state)
    classifier.eval()
    channels, size = len(cfg.dataset.mean), cfg.dataset.image_size
    example = torch.zeros(1, channels, size if size <= 64 else 224, size if size <= 64 else 224)
    algorithm = ALGORITHMS[cfg.method.name]
    chosen = algorithm.exported_head(cfg.method, classifier, example) if head == "rule" else classifier.head(head)
    model = ExportedClassifier(classifier.backbone, nn.Linear(classifier.feature_dim, num_classes), cfg.dataset.mean,
                               cfg.dataset.std)
    model.head.load_state_dict(chosen.state_dict())
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    names = summary.get("data", {}).get("class_names") or [str(c) for c in range(num_classes)]
    meta = {
        "format": FORMAT, "model": {"name": cfg.model.name, "options": options}, "num_classes": num_classes,
        "class_names": names, "channels": channels, "mean": list(cfg.dataset.mean), "std": list(cfg.dataset.std),
        "input_size": example.shape[-1],
        "preprocessing": ("decode as RGB, resize the shorter side to 256, centre-crop 224" if size > 64 else
                          f"decode as RGB, resize to {size}x{size}") + "; a uint8 (0-255) or float (0-1) tensor, N x C x H x W",
        "algorithm": cfg.method.name, "head": head if head != "rule" else f"rule: {algorithm.test_rule or 'the standard head'}",
        "weights": weights,
        "source": {"run_dir": str(run_dir.resolve()), "checkpoint": str(path), "step": learner.get("step")},
        "config": OmegaConf.to_yaml(redacted(cfg), resolve=True),  # the data and settings it was trained on
    }
    return model.eval(), meta


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
