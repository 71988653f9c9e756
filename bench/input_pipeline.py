"""The input pipeline against what training consumes, stage by stage, in one run.

    python bench/input_pipeline.py [--images 1024] [--workers 2] [--steps 5]

Two unlabeled shards, written here: the default job's (Fashion-MNIST images as the simulated stream
stores them, PNGs) and an ImageNet-size one (random JPEGs of 500x375, views at
224 px). For each:

- per image, in this process, one thread: `read` (the tar read and the sample's parsing, WebDataset
  pipeline as stream mode runs it), `decode` (the image bytes to RGB) and `augment` (the weak and two
  strong uint8 views of one resize);
- `delivered`: unlabeled images/s from the stream loader itself (`make_unlabeled_batches` in a
  WebLoader) with `--workers` workers, batches of 64;
- `consumed` (the default job only): unlabeled images/s of the default job's training step (small
  CNN, its batch sizes, BMB) on a batch already in memory; the ratio delivered / consumed is the
  margin (the goal: at least 2). ResNet-50's consumption needs a GPU to mean anything:
  `bench/gpu_step.py` turns the per-core rate into cores per GPU.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from machine import print_header
from PIL import Image

warnings.filterwarnings("ignore", message="no QP solver found")

from bmb_stream.algorithms import Batch  # noqa: E402
from bmb_stream.config import compose, typed  # noqa: E402
from bmb_stream.datasets import build_split  # noqa: E402
from bmb_stream.datasets.transforms import build_views  # noqa: E402
from bmb_stream.engine.learner import Learner  # noqa: E402
from bmb_stream.shards.reading import decode_image, make_unlabeled_batches, shard_samples  # noqa: E402


def write_shard(path: Path, images: list[bytes], ext: str) -> None:
    with wds.TarWriter(str(path)) as sink:
        for i, data in enumerate(images):
            sink.write({"__key__": f"u{i:06d}", ext: data, "gt.cls": b"0"})


def encoded(arrays, fmt: str) -> list[bytes]:
    out = []
    for a in arrays:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        out.append(buf.getvalue())
    return out


def per_image_stages(url: str, views) -> dict[str, float]:
    """Milliseconds per image of read, decode and augment, one after another in this process, with one
    torch thread (as in a worker)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t = time.perf_counter()
    samples = list(shard_samples([url], split_by_rank=False))
    read = (time.perf_counter() - t) / len(samples)
    t = time.perf_counter()
    images = [decode_image(s["image"]) for s in samples]
    decode = (time.perf_counter() - t) / len(samples)
    t = time.perf_counter()
    for img in images:
        views(img)
    augment = (time.perf_counter() - t) / len(samples)
    torch.set_num_threads(threads)
    return {"read": read * 1e3, "decode": decode * 1e3, "augment": augment * 1e3}


def delivered(url: str, views, workers: int) -> float:
    """Unlabeled images/s from the stream loader, `workers` workers reading copies of the shard."""
    loader = wds.WebLoader(make_unlabeled_batches([url] * max(1, workers), views, 64), batch_size=None,
                           num_workers=workers)
    n, t = 0, time.perf_counter()
    for batch in loader:
        n += len(batch["u_weak"])
    return n / (time.perf_counter() - t)


def consumed(steps: int) -> float:
    """Unlabeled images/s of the default job's training step on a batch already in memory."""
    cfg = typed(compose(["progress=false"]))
    split = build_split(cfg.dataset, check_images=False, progress=False)
    learner = Learner(cfg, split.num_classes, split.labeled_per_class, torch.device("cpu"))
    b_l, b_u, size = cfg.train.batch_labeled, cfg.train.batch_unlabeled, cfg.dataset.image_size

    def images(n):
        return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)
    batch = Batch(images(b_l), torch.randint(10, (b_l,)), images(b_u), images(b_u), images(b_u))
    times = []
    for _ in range(2 + steps):
        t = time.perf_counter()
        learner.train_step(batch)
        times.append(time.perf_counter() - t)
    return b_u / statistics.median(times[2:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    print_header()
    cfg = typed(compose(["progress=false"]))
    fmnist = build_split(cfg.dataset, check_images=False, progress=False).unlabeled
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        cases = []
        # the default job's images as the simulated stream stores them
        small = [np.asarray(fmnist.image(i)) for i in range(min(args.images, len(fmnist)))]
        write_shard(Path(tmp) / "default.tar", encoded(small, "PNG"), "png")
        side = small[0].shape[0]
        cases.append((f"default job ({side} px PNG, views at {cfg.dataset.image_size} px)", Path(tmp) / "default.tar",
                      build_views(cfg.dataset.image_size, cfg.dataset.mean, resize=True)["unlabeled"]))
        large = [rng.integers(0, 256, (375, 500, 3), dtype=np.uint8) for _ in range(64)]
        jpegs = encoded(large, "JPEG")
        write_shard(Path(tmp) / "imagenet.tar", [jpegs[i % 64] for i in range(args.images // 4)], "jpg")
        cases.append(("ImageNet-size (JPEG 500x375, views at 224 px)", Path(tmp) / "imagenet.tar",
                      build_views(224, [0.485, 0.456, 0.406], resize=True)["unlabeled"]))
        need = consumed(args.steps)
        print(f"per image, one thread (ms): read | decode | augment (weak + 2 strong views); then unlabeled images/s "
              f"delivered by the stream loader with {args.workers} workers")
        for name, path, views in cases:
            stages = per_image_stages(str(path), views)
            rate = delivered(str(path), views, args.workers)
            total = sum(stages.values())
            line = (f"{name}: {stages['read']:.2f} | {stages['decode']:.2f} | {stages['augment']:.2f} "
                    f"(one core: {1e3 / total:.0f} images/s); delivered {rate:.0f} images/s")
            if name.startswith("default"):
                line += f"; training consumes {need:.0f}: delivered / consumed {rate / need:.2f}"
            print(line, flush=True)



if __name__ == "__main__":
    main()
