"""What CDMAD's bias image looks like to a trained model: the EMA model of a finished run (its
checkpoint and config.yaml) classifies the image whose every entry is 1.0 after normalisation (the
authors' "white" image), and, for comparison, the dataset-mean image (0.0) and a black one (0 before
normalisation). CDMAD subtracts these logits, so the classes they favour are the ones it suppresses:
the premise is that a pattern-less image favours the classes the classifier is biased toward.

    python bench/cdmad_bias.py RUN_DIR [RUN_DIR ...]      # e.g. bench/results/methods/cdmad-seed0
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore", message="no QP solver found")

from bmb_stream.config import stored_config  # noqa: E402
from bmb_stream.engine.checkpoint import load_checkpoint  # noqa: E402
from bmb_stream.engine.learner import Learner  # noqa: E402


def bias_softmax(run_dir: Path) -> dict[str, list[float]]:
    cfg = stored_config(run_dir / "config.yaml")
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    labeled = [1] * cfg.dataset.num_classes  # the learner's counts do not enter the model's logits
    learner = Learner(cfg, cfg.dataset.num_classes, labeled, torch.device("cpu"))
    learner.load_state_dict(state["learner"])
    model = (learner.ema.module if learner.ema is not None else learner.model).eval()
    size = cfg.dataset.image_size
    black = [-m / s for m, s in zip(cfg.dataset.mean, cfg.dataset.std)]
    images = {"ones (the authors')": torch.ones(1, 3, size, size), "mean (0.0)": torch.zeros(1, 3, size, size),
              "black": torch.tensor(black).view(1, 3, 1, 1).expand(1, 3, size, size)}
    with torch.no_grad():
        return {name: model.head_std(model(x))[0].softmax(0).tolist() for name, x in images.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args()
    for run_dir in args.runs:
        print(f"{run_dir}: softmax of the bias logits, per class (%)")
        for name, probs in bias_softmax(run_dir).items():
            print(f"  {name:<20}" + " ".join(f"{100 * p:5.1f}" for p in probs))


if __name__ == "__main__":
    main()
