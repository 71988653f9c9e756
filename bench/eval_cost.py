"""What one evaluation costs against the bare forward passes it needs, side by side in one run.

An evaluation (`Evaluator.evaluate(ema_model, raw_model)`: both models over the test set, per-class
counts, loss; then the record into the run's logs, `RunLoggers.evaluation`) against the same two models' forward passes over the same decoded test tensors
(uint8, which each model normalises first) and nothing else. Two test sets: Fashion-MNIST's 10,000 test images (the default job's, small CNN)
and an ImageNet-size one (JPEGs of 500x375 made here, resized to 256 and centre-cropped to 224,
ResNet-50). Medians of alternating rounds; also the one-time cost of reading the test set. Then the
same evaluation with stream mode's continual-learning metrics (evaluation/continual.py) computed from a
history of --history earlier evaluations over as many experiences, and, alone, those metrics at
ImageNet-LT's scale (1,000 classes, 200 evaluations of 200 experiences).

    python bench/eval_cost.py [--rounds 3] [--imagenet-images 128] [--history 20] [--threads N]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
import warnings

import numpy as np
import torch
from PIL import Image

warnings.filterwarnings("ignore", message="no QP solver found")

from bmb_stream.config import compose, typed  # noqa: E402
from bmb_stream.datasets import build_split  # noqa: E402
from bmb_stream.datasets.transforms import DeviceNormalize, build_views  # noqa: E402
from bmb_stream.engine.loggers import RunLoggers  # noqa: E402
from bmb_stream.evaluation.continual import continual_metrics  # noqa: E402
from bmb_stream.evaluation.evaluator import Evaluator  # noqa: E402
from bmb_stream.models import build_model  # noqa: E402
from bmb_stream.models.heads import Predictor  # noqa: E402
from bmb_stream.shards.reading import EncodedImages  # noqa: E402


def jpeg_test_set(n: int, classes: int = 10) -> EncodedImages:
    rng = np.random.default_rng(0)
    images = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
        images.append(buf.getvalue())
    views = build_views(224, (0.485, 0.456, 0.406))
    return EncodedImages(images, np.arange(n) % classes, views["test"])


def bare_forward(evaluator: Evaluator, models) -> float:
    t = time.perf_counter()
    with torch.inference_mode():
        for x, _ in evaluator.batches():
            for m in models:
                m(x)
    return time.perf_counter() - t


def bmb_test_logits(model, x):
    """What a BMB run evaluates: both heads from one backbone pass (bmb_stream/algorithms/bmb.py)."""
    features = model(x)
    return {"rule": model.head_bal(features), "plain": model.head_std(features)}


def continual_extra(classes: int, history: int):
    """Stream mode's metrics after `history` earlier evaluations of as many experiences (random accuracies
    and priors: the cost depends on the sizes only)."""
    rng = np.random.default_rng(0)
    rows = rng.random((history, classes)).tolist()
    priors = rng.integers(0, 50, (history + 1, classes))
    initial = rng.random(classes).tolist()
    return lambda record: continual_metrics(rows + [record["per_class_acc"]], list(range(history + 1)), priors, initial)


def measure(name: str, test_set, model_name: str, classes: int, rounds: int, batch_size: int, mean, std,
            history: int) -> str:
    # the test set is decoded once into uint8; the models normalise it, as the learner's do
    ema, online = (Predictor(build_model(model_name, classes), bmb_test_logits, DeviceNormalize(mean, std)).eval()
                   for _ in range(2))
    with tempfile.TemporaryDirectory() as run_dir:
        t = time.perf_counter()
        evaluator = Evaluator(test_set, classes, [100] * classes, torch.device("cpu"), batch_size=batch_size)
        read_s = time.perf_counter() - t
        loggers = RunLoggers(run_dir)
        full, bare, continual = [], [], []
        extra = continual_extra(classes, history)

        def evaluation(with_continual: bool) -> float:
            t = time.perf_counter()
            record = evaluator.evaluate(ema, online)
            loggers.evaluation(record | (extra(record) if with_continual else {}))
            return time.perf_counter() - t

        for _ in range(rounds):  # alternating, so that a change in the machine's load hits all three
            full.append(evaluation(with_continual=False))
            bare.append(bare_forward(evaluator, (ema, online)))
            continual.append(evaluation(with_continual=True))
        loggers.close()
    f, b, c = statistics.median(full), statistics.median(bare), statistics.median(continual)
    return (f"| {name} | {len(test_set):,} | {model_name} | {read_s:.1f} | {f:.2f} | {b:.2f} | {f / b:.2f} "
            f"| {c:.2f} | {c / f:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--imagenet-images", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--history", type=int, default=20, help="earlier evaluations (and experiences) of the stream")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = typed(compose(["mode=offline", "experiment=fmnist_lt_r100"]))
    fmnist = build_split(cfg.dataset, check_images=False, progress=False).test
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; medians of {args.rounds} rounds")
    print(f"| test set | images | model | read once (s) | evaluation (s) | bare forward (s) | ratio "
          f"| with continual metrics, {args.history} earlier (s) | ratio to evaluation |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(measure("Fashion-MNIST", fmnist, "small_cnn", 10, args.rounds, 256, cfg.dataset.mean, cfg.dataset.std,
                  args.history), flush=True)
    print(measure("ImageNet-size JPEGs", jpeg_test_set(args.imagenet_images), "resnet50", 10, args.rounds, 64,
                  (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), args.history), flush=True)
    extra = continual_extra(1000, 200)
    record = {"per_class_acc": np.random.default_rng(1).random(1000).tolist()}
    times = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        extra(record)
        times.append(time.perf_counter() - t)
    print(f"continual metrics alone at 1,000 classes, 200 evaluations of 200 experiences: "
          f"{statistics.median(times):.3f} s an evaluation")


if __name__ == "__main__":
    main()
