"""Strong-view augmentation speed on 32x32 images: the project's PIL pipeline against the same
torchvision v2 ops applied to uint8 tensors, side by side in one run, with one torch thread (as in a
DataLoader worker) and with torch's default thread count (as in the main process).

    python bench/augment_speed.py [--n 2000]
"""

from __future__ import annotations

import argparse
import time

import torch
from PIL import Image
from torchvision.transforms import v2

from bmb_stream.datasets.transforms import Cutout, build_views, mean_fill


def rate(fn, inputs) -> float:
    for x in inputs[:50]:
        fn(x)
    t = time.perf_counter()
    for x in inputs:
        fn(x)
    return len(inputs) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=g) for _ in range(args.n)]
    pils = [Image.fromarray(t.permute(1, 2, 0).numpy()) for t in tensors]
    mean = [0.5] * 3
    project = build_views(32, mean)["strong"]  # uint8 out, as the tensor pipeline below
    on_tensors = v2.Compose([v2.RandomCrop(32, padding=4, padding_mode="reflect"), v2.RandomHorizontalFlip(),
                             v2.RandAugment(num_ops=3, magnitude=4, num_magnitude_bins=31), Cutout(16, mean_fill(mean))])
    for threads in (1, torch.get_num_threads()):
        torch.set_num_threads(threads)
        pil_rate, tensor_rate = rate(project, pils), rate(on_tensors, tensors)
        print(f"strong view, 32x32, {threads} torch thread(s): PIL pipeline {pil_rate:.0f} img/s, "
              f"tensor pipeline {tensor_rate:.0f} img/s, ratio {pil_rate / tensor_rate:.2f}")


if __name__ == "__main__":
    main()
