"""The BMB training step on a GPU: ResNet-50 (224 px) and WRN-28-2 (32 px) at 64 labeled + 3 x 64
unlabeled images, in fp32, bf16 autocast, bf16 + channels_last and bf16 + channels_last +
torch.compile of the backbone, side by side in one run; and the CPU input pipeline at 224 px: the
DataLoader workers' CPU time per unlabeled image (decode + the weak and two strong views) and per labeled
image (decode + the weak view), hence the cores that feed 1,000 unlabeled images/s of training, for
photo-like JPEGs at ImageNet's sizes (bench/photos.py) stored as they are and at 256 px, with the strong
views' RandAugment in the workers (dataset.augment_on=loader) or on the device (augment_on=device), and
noise JPEGs of 500x375 as before; then the device-side RandAugment's own time per image. Prints the
device name. Under 5 minutes on one GPU.

    python bench/gpu_step.py [--steps 20] [--models resnet50 wrn28_2] [--device cuda]
    python bench/gpu_step.py --device cpu --steps 5 --models wrn28_2   # the same variants on the CPU (bf16 by CPU autocast)

Without a GPU (and without --device cpu) it says so and exits 0: nothing is measured.
Each step is the learner's own `train_step` (the bank, Nhat and EMA included) with the options a user
sets (`train.amp`, `train.channels_last`, `train.compile`), on random uint8 images in pinned host memory,
as the loaders give them: the learner copies them without blocking and normalises them on the device.
Times are medians over `--steps` steps after 3 warm-up steps (compile warms up longer), with a device
synchronisation around each step. On a GPU it also counts the host synchronisations inside one step
(CUDA's sync debug mode). The input pipeline's rate per core then says how many CPU cores each GPU
needs to be fed.
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

from bmb_stream.algorithms import Batch  # noqa: E402
from bmb_stream.config import compose, typed  # noqa: E402
from bmb_stream.engine.learner import Learner  # noqa: E402

SETTINGS = {"resnet50": ("imagenet_lt", 224, 1000), "wrn28_2": ("cifar10_lt", 32, 10)}
VARIANTS = ("fp32", "bf16", "bf16 + channels_last", "bf16 + channels_last + compile")


def learner_for(model: str, variant: str, device: torch.device) -> Learner:
    dataset, _, classes = SETTINGS[model]
    options = {"amp": "bf16" in variant, "channels_last": "channels_last" in variant, "compile": "compile" in variant}
    cfg = typed(compose(["mode=offline", f"dataset={dataset}", f"model={model}", "method=bmb", "progress=false",
                         *(f"train.{k}={str(v).lower()}" for k, v in options.items()), "run.dir=/tmp/bmb-gpu-step",
                         f"dataset.root={Path.cwd()}"]))  # composed, never read: the images are random
    return Learner(cfg, classes, [100] * classes, device)


def random_batch(model: str, device: torch.device, batch: int = 64) -> Batch:
    """uint8 images on the host, pinned where they go to a GPU: what the loaders deliver."""
    _, size, classes = SETTINGS[model]

    def images():
        x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
        return x.pin_memory() if device.type == "cuda" else x
    return Batch(images(), torch.randint(classes, (batch,)), images(), images(), images())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def host_syncs(learner: Learner, batch: Batch) -> int | None:
    """Host synchronisations inside one step (CUDA only: the sync debug mode warns at each)."""
    if learner.device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            learner.train_step(batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def step_ms(model: str, variant: str, device: torch.device, steps: int) -> tuple[float, int | None]:
    learner = learner_for(model, variant, device)
    batch = random_batch(model, device)
    times = []
    for i in range((10 if "compile" in variant else 3) + steps):
        sync(device)
        t = time.perf_counter()
        learner.train_step(batch)
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times[-steps:]) * 1e3, host_syncs(learner, batch)


def encoded_images(kind: str, n: int, shorter_side: int | None) -> list[bytes]:
    """`n` JPEGs (64 distinct ones, repeated): `photos` (photo-like, at ImageNet's sizes: bench/photos.py) or
    `noise` (uniform noise of 500x375, what this benchmark used before), stored at `shorter_side` as
    `shards shorter_side=256` writes them (None: the originals)."""
    from photos import jpeg_bytes, photo_like

    from bmb_stream.shards.writing import downscaled

    if kind == "photos":
        images = photo_like(64, seed=0)
    else:
        rng = np.random.default_rng(0)
        images = [Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)) for _ in range(64)]
    encoded = [jpeg_bytes((downscaled(img, shorter_side) if shorter_side else None) or img) for img in images]
    return [encoded[i % 64] for i in range(n)]


def worker_cpu_ms(encoded: list[bytes], view, workers: int) -> float:
    """CPU milliseconds the DataLoader workers spend per image (decode, view, collation, the queue),
    from the workers' own resource usage once they have exited."""
    import resource

    from bmb_stream.shards.reading import EncodedImages

    def children_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    before = children_cpu()
    loader = torch.utils.data.DataLoader(EncodedImages(encoded, np.zeros(len(encoded), dtype=np.int64), view),
                                         batch_size=64, num_workers=workers)
    for _ in loader:
        pass
    del loader  # the workers exit and are waited for: their usage is counted from here
    return (children_cpu() - before) / len(encoded) * 1e3


def device_augment_ms(device: torch.device, kind: str = "torchvision", repeats: int = 5) -> float:
    """Milliseconds per 224-px image of the device-side RandAugment (dataset.augment_on=device), median
    over batches of 64; on the CPU with one thread, so that it reads as one core's time."""
    from bmb_stream.datasets.transforms import device_strong_augment

    augment = device_strong_augment(224, [0.5] * 3, kind)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    x = torch.randint(0, 256, (64, 3, 224, 224), dtype=torch.uint8, device=device)
    times = []
    for _ in range(repeats + 1):
        sync(device)
        t = time.perf_counter()
        augment(x)
        sync(device)
        times.append(time.perf_counter() - t)
    torch.set_num_threads(threads)
    return statistics.median(times[1:]) / 64 * 1e3


PIPELINES = [  # (images, stored at, strong views' augmentation)
    ("noise", None, "loader"), ("photos", None, "loader"), ("photos", 256, "loader"),
    ("photos", None, "device"), ("photos", 256, "device")]


def print_pipeline(args, workers: int, device: torch.device, fastest: dict) -> None:
    """Per row: the loader workers' CPU ms per unlabeled image (the weak and two strong views of one decode)
    and per labeled image (the weak view; a step takes as many labeled as unlabeled images), hence the
    cores that feed 1,000 unlabeled images/s of training: 1,000 x (unlabeled + labeled) ms / 1,000."""
    from bmb_stream.datasets.transforms import build_views

    print(f"input pipeline at 224 px: the loader workers' CPU time per image ({workers} workers, "
          f"{args.pipeline_images} images a row)")
    print(f"{'images':<8} {'stored at':<10} {'strong views':<13} {'unlabeled ms':>12} {'labeled ms':>10} "
          f"{'cores per 1,000 unlabeled/s':>28}")
    for images, stored, place in PIPELINES:
        encoded = encoded_images(images, args.pipeline_images, stored)
        views = build_views(224, [0.5] * 3, augment_on=place)
        unlabeled = worker_cpu_ms(encoded, views["unlabeled"], workers)
        labeled = worker_cpu_ms(encoded, views["weak"], workers)
        original = "500x375" if images == "noise" else "originals"
        print(f"{images:<8} {f'{stored} px' if stored else original:<10} {'on ' + place:<13} {unlabeled:>12.2f} "
              f"{labeled:>10.2f} {unlabeled + labeled:>28.1f}")
    augment = device_augment_ms(device)
    where = "one CPU core" if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"device-side RandAugment (torchvision's table, 224 px, batches of 64) on {where}: {augment:.2f} ms per "
          f"strong view, {2 * augment:.2f} ms per unlabeled image (two strong views)")
    if "resnet50" in fastest:
        step_ms = fastest["resnet50"]
        print(f"its share of the fastest ResNet-50 step above: {128 * augment / (step_ms + 128 * augment):.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--models", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--pipeline-images", type=int, default=2048)
    ap.add_argument("--cpu-compile", action="store_true", help="with --device cpu, also the compiled variant")
    ap.add_argument("--pipeline-only", action="store_true", help="the input pipeline's rates alone, no step")
    args = ap.parse_args()
    print_header()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available() and not args.pipeline_only:
        print("no GPU here: nothing measured (run it where one is, or with --device cpu for the code path)")
        return
    name = torch.cuda.get_device_name(device) if device.type == "cuda" and torch.cuda.is_available() else "CPU"
    workers = max(1, len(__import__("os").sched_getaffinity(0)) - 1)
    if not args.pipeline_only:
        print(f"device: {name}; BMB step, 64 labeled + 3 x 64 unlabeled images, median of {args.steps} steps")
        print(f"{'model':<9} {'variant':<31} {'ms/step':>8} {'unlabeled images/s':>19} {'x fp32':>7} {'host syncs':>10}")
    fastest = {}
    for model in args.models:
        base = None
        for variant in VARIANTS:
            if "compile" in variant and device.type != "cuda" and not args.cpu_compile:
                continue  # compiling on the CPU takes minutes: --cpu-compile
            if args.pipeline_only:
                break
            ms, syncs = step_ms(model, variant, device, args.steps)
            base = base or ms
            fastest[model] = min(fastest.get(model, ms), ms)
            print(f"{model:<9} {variant:<31} {ms:>8.1f} {64 / ms * 1e3:>19.0f} {base / ms:>7.2f} "
                  f"{'-' if syncs is None else syncs:>10}")
    if "resnet50" in args.models:
        print_pipeline(args, workers, device if device.type == "cpu" or torch.cuda.is_available()
                       else torch.device("cpu"), fastest)

if __name__ == "__main__":
    main()
