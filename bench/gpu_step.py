"""The BMB training step on a GPU: ResNet-50 (224 px) and WRN-28-2 (32 px) at 64 labeled + 3 x 64
unlabeled images, in fp32, bf16 autocast, bf16 + channels_last and bf16 + channels_last +
torch.compile of the backbone, side by side in one run; and the CPU input pipeline's images/s (JPEG
decode + the weak and two strong views, in DataLoader workers on every core) against what each
configuration consumes. Prints the device name. Under 5 minutes on one GPU.

    python bench/gpu_step.py [--steps 20] [--models resnet50 wrn28_2] [--device cuda]
    python bench/gpu_step.py --device cpu --steps 5 --models wrn28_2   # the same variants on the CPU (bf16 by CPU autocast)

Without a GPU (and without --device cpu) it says so and exits 0: nothing is measured.
Each step is the learner's own `train_step` (the bank, Nhat and EMA included) on random images already
on the device; times are medians over `--steps` steps after 3 warm-up steps (compile warms up longer),
with a device synchronisation around each step.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import print_header  # noqa: E402

from bmb_stream.config import compose  # noqa: E402
from bmb_stream.engine.learner import Learner  # noqa: E402
from bmb_stream.method.steps import Batch  # noqa: E402

SETTINGS = {"resnet50": ("imagenet_lt", 224, 1000), "wrn28_2": ("cifar10_lt", 32, 10)}
VARIANTS = ("fp32", "bf16", "bf16 + channels_last", "bf16 + channels_last + compile")


def learner_for(model: str, variant: str, device: torch.device) -> Learner:
    dataset, _, classes = SETTINGS[model]
    cfg = compose(["mode=offline", f"dataset={dataset}", f"model={model}", "method=bmb", "progress=false",
                   f"train.amp={str('bf16' in variant).lower()}", "run.dir=/tmp/bmb-gpu-step",
                   f"dataset.root={Path.cwd()}"])  # composed, never read: the images are random
    learner = Learner(cfg, classes, [100] * classes, device)
    if "channels_last" in variant:
        learner.model.to(memory_format=torch.channels_last)
    if "compile" in variant:  # the backbone's forward only: parameter names (EMA, checkpoints) unchanged
        learner.model.backbone.forward = torch.compile(learner.model.backbone.forward)
    return learner


def random_batch(model: str, device: torch.device, channels_last: bool, batch: int = 64) -> Batch:
    _, size, classes = SETTINGS[model]
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def images():
        return torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    return Batch(images(), torch.randint(classes, (batch,), device=device), images(), images(), images())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_ms(model: str, variant: str, device: torch.device, steps: int) -> float:
    learner = learner_for(model, variant, device)
    batch = random_batch(model, device, "channels_last" in variant)
    # the learner autocasts on CUDA (train.amp); on the CPU the benchmark does, to see what it would give
    cpu_bf16 = device.type == "cpu" and "bf16" in variant
    times = []
    for i in range((10 if "compile" in variant else 3) + steps):
        sync(device)
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_bf16):
            learner.train_step(batch)
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times[-steps:]) * 1e3


def pipeline_images_per_s(size: int, n: int, workers: int) -> float:
    """JPEGs of 500x375 decoded and turned into the weak and two strong views, in DataLoader workers."""
    from bmb_stream.data.stream import EncodedImages
    from bmb_stream.data.transforms import MultiView, build_views

    rng = np.random.default_rng(0)
    encoded = []
    for _ in range(64):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
        encoded.append(buf.getvalue())
    views = build_views(size, [0.5] * 3, [0.25] * 3, resize=True)
    dataset = EncodedImages([encoded[i % 64] for i in range(n)], np.zeros(n, dtype=np.int64),
                            MultiView(views["weak"], views["strong"], views["strong"]))
    loader = torch.utils.data.DataLoader(dataset, batch_size=64, num_workers=workers)
    t = time.perf_counter()
    for _ in loader:
        pass
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--models", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--pipeline-images", type=int, default=2048)
    ap.add_argument("--cpu-compile", action="store_true", help="with --device cpu, also the compiled variant")
    args = ap.parse_args()
    print_header()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no GPU here: nothing measured (run it where one is, or with --device cpu for the code path)")
        return
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    workers = max(1, len(__import__("os").sched_getaffinity(0)) - 1)
    print(f"device: {name}; BMB step, 64 labeled + 3 x 64 unlabeled images, median of {args.steps} steps")
    print(f"{'model':<9} {'variant':<31} {'ms/step':>8} {'unlabeled images/s':>19} {'x fp32':>7}")
    for model in args.models:
        base = None
        for variant in VARIANTS:
            if "compile" in variant and device.type != "cuda" and not args.cpu_compile:
                continue  # compiling on the CPU takes minutes: --cpu-compile
            ms = step_ms(model, variant, device, args.steps)
            base = base or ms
            print(f"{model:<9} {variant:<31} {ms:>8.1f} {64 / ms * 1e3:>19.0f} {base / ms:>7.2f}")
    for model in args.models:
        size = SETTINGS[model][1]
        rate = pipeline_images_per_s(size, args.pipeline_images, workers)
        print(f"input pipeline for {model} ({size} px, JPEG 500x375 -> weak + 2 strong views, {workers} workers): "
              f"{rate:.0f} unlabeled images/s ({rate / workers:.0f} per core)")


if __name__ == "__main__":
    main()
