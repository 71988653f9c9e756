"""`bmb-stream export`: a run folder's checkpoint as an exported model (models/exported.py) and the JSON
of what running it needs."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

from bmb_stream.algorithms import ALGORITHMS
from bmb_stream.config import stored_config
from bmb_stream.engine.checkpoint import check_layout, load_checkpoint
from bmb_stream.errors import ConfigError, DataNotFound
from bmb_stream.models.exported import FORMAT, HEADS, WEIGHTS, ExportedClassifier, meta_path
from bmb_stream.models.registry import build_model, model_options
from bmb_stream.redaction import redacted
from bmb_stream.storage.atomic import atomic_write, write_text


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
    options = model_options(cfg.model)
    classifier = build_model(cfg.model.name, num_classes, **options)
    classifier.load_state_dict(weights_state)
    classifier.eval()
    channels, size = len(cfg.dataset.mean), cfg.dataset.image_size
    input_size = size if size <= 64 else 224  # the test view: large images are centre-cropped to 224
    example = torch.zeros(1, channels, input_size, input_size)
    algorithm = ALGORITHMS[cfg.method.name]
    chosen = algorithm.exported_head(cfg.method, classifier, example) if head == "rule" else classifier.head(head)
    model = ExportedClassifier(classifier.backbone, chosen, cfg.dataset.mean, cfg.dataset.std)
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    names = summary.get("data", {}).get("class_names") or [str(c) for c in range(num_classes)]
    meta = {
        "format": FORMAT, "model": {"name": cfg.model.name, "options": options}, "num_classes": num_classes,
        "class_names": names, "channels": channels, "mean": list(cfg.dataset.mean), "std": list(cfg.dataset.std),
        "input_size": input_size,
        "preprocessing": ("decode as RGB, resize the shorter side to 256, centre-crop 224" if size > 64 else
                          f"decode as RGB, resize to {size}x{size}") + "; a uint8 (0-255) or float (0-1) tensor, N x C x H x W",
        "algorithm": cfg.method.name, "head": head if head != "rule" else f"rule: {algorithm.test_rule or 'the standard head'}",
        "weights": weights,
        "source": {"run_dir": str(run_dir.resolve()), "checkpoint": str(path), "step": learner.get("step")},
        "config": OmegaConf.to_yaml(redacted(cfg), resolve=True),  # the data and settings it was trained on
    }
    return model.eval(), meta


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
