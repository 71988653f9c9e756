"""The BMB training step on a GPU: ResNet-50 (224 px) and WRN-28-2 (32 px) at 64 labeled + 3 x 64
unlabeled images, in fp32, bf16 autocast, bf16 + channels_last and bf16 + channels_last +
torch.compile of the backbone, side by side in one run; and the CPU input pipeline's images/s (JPEG
decode + the weak and two strong views, in DataLoader workers on every core) against what each
configuration consumes. Prints the device name. Under 5 minutes on one GPU.

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


def pipeline_images_per_s(size: int, n: int, workers: int, view: str, shorter_side: int | None = None) -> float:
    """JPEGs of 500x375 (or stored at `shorter_side`, as `shards shorter_side=256` writes them) decoded and
    turned into uint8 views in DataLoader workers: `unlabeled` (the weak and two strong views of one
    resize) or `weak` (a labeled image)."""
    from bmb_stream.datasets.transforms import build_views
    from bmb_stream.shards.reading import EncodedImages
    from bmb_stream.shards.writing import downscaled

    rng = np.random.default_rng(0)
    encoded = []
    for _ in range(64):
        img = Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8))
        img = (downscaled(img, shorter_side) if shorter_side else None) or img
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        encoded.append(buf.getvalue())
    views = build_views(size, [0.5] * 3, resize=True)
    dataset = EncodedImages([encoded[i % 64] for i in range(n)], np.zeros(n, dtype=np.int64), views[view])
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
    for model in args.models:
        size = SETTINGS[model][1]
        for stored in (None, 256) if size > 64 else (None,):
            per_core = {view: pipeline_images_per_s(size, args.pipeline_images, workers, view, stored) / workers
                        for view in ("unlabeled", "weak")}
            # a step takes 64 unlabeled images (3 views of each) and 64 labeled ones (the weak view): per 1,000
            # unlabeled images/s of training, 1,000 / unlabeled rate + 1,000 / weak rate cores
            per_thousand = 1e3 * (1 / per_core["unlabeled"] + 1 / per_core["weak"])
            need = (f"the fastest step above needs {per_thousand * 64 / fastest[model]:.1f} such cores"
                    if model in fastest else f"{per_thousand:.1f} cores per 1,000 unlabeled images/s of training")
            jpeg = "JPEG 500x375" + (f" stored at {stored} px" if stored else "")
            print(f"input pipeline for {model} ({size} px, {jpeg}, uint8 views, {workers} workers): per core "
                  f"{per_core['unlabeled']:.0f} unlabeled images/s (weak + 2 strong views), {per_core['weak']:.0f} "
                  f"labeled images/s (weak view); {need}")


if __name__ == "__main__":
    main()
