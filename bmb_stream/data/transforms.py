"""Weak, strong and test views (bmb-method section 7), built from torchvision's v2 transforms.

Inputs are PIL images (decoded files stay PIL until the end; on small images PIL's ops are as fast
as tensor ops in a one-thread worker and far faster with several threads, bench/augment_speed.py);
outputs are normalised float tensors. Small images (32/64 px): weak = pad-and-crop + flip; strong = weak +
RandAugment(3 ops, magnitude 4 of 30) + Cutout of half the image side. ImageNet-size images: weak =
resize 256, random crop 224, flip; strong adds RandAugment; test = resize 256, center crop 224.

Two strong views (`randaugment`, the config key `dataset.randaugment`):

- `torchvision`: torchvision's v2.RandAugment after the crop (reflect padding) and the flip.
- `reference`: the BMB reference's RandAugment (bmb_stream/data/randaugment.py) in the reference's order:
  [resize 256 (large) | fit (image folders)], RandAugment, random crop (zero padding of side/8 on small
  images; no padding on large ones), flip, to tensor, normalise, Cutout (small images).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.transforms import v2

from bmb_stream.config_schema import RANDAUGMENT_KINDS
from bmb_stream.data.randaugment import ReferenceRandAugment


class Cutout(nn.Module):
    """Zero a size x size square (clipped at the border) at a uniformly random centre.

    Applied after normalisation, so the square holds the dataset mean, as in the reference.
    """

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        half = self.size // 2
        img = img.clone()
        img[..., max(0, cy - half): min(h, cy + half), max(0, cx - half): min(w, cx + half)] = 0
        return img


def _normalize(mean, std) -> v2.Compose:
    return v2.Compose([v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])


def _geometric(image_size: int, large: bool, resize: bool) -> list:
    if large:
        return [v2.Resize(256, antialias=True), v2.RandomCrop(224), v2.RandomHorizontalFlip()]
    fit = [v2.Resize((image_size, image_size), antialias=True)] if resize else []
    return fit + [v2.RandomCrop(image_size, padding=image_size // 8, padding_mode="reflect"), v2.RandomHorizontalFlip()]


def _reference_strong(image_size: int, large: bool, resize: bool, ops: int, magnitude: int) -> list:
    """The reference's strong-view order: RandAugment before the crop; the crop pads with zeros."""
    if large:
        return [v2.Resize(256, antialias=True), ReferenceRandAugment(ops, magnitude), v2.RandomCrop(224),
                v2.RandomHorizontalFlip()]
    fit = [v2.Resize((image_size, image_size), antialias=True)] if resize else []
    return fit + [ReferenceRandAugment(ops, magnitude), v2.RandomCrop(image_size, padding=image_size // 8),
                  v2.RandomHorizontalFlip()]


def build_views(image_size: int, mean, std, randaugment_ops: int = 3, randaugment_magnitude: int = 4,
                cutout: bool | None = None, resize: bool = False,
                randaugment: str = "torchvision") -> dict[str, v2.Compose]:
    """The `weak`, `strong` and `test` transforms for one dataset.

    `resize` fits small images of any size to image_size first (image folders); in-memory arrays
    already have the right size and skip it. `randaugment` chooses the strong view (module docstring);
    the weak and test views are the same for both.
    """
    if randaugment not in RANDAUGMENT_KINDS:
        raise ValueError(f"randaugment={randaugment!r}: expected one of {', '.join(RANDAUGMENT_KINDS)}")
    large = image_size > 64
    cutout = (not large) if cutout is None else cutout
    weak = v2.Compose(_geometric(image_size, large, resize) + [_normalize(mean, std)])
    if randaugment == "reference":
        strong_steps = _reference_strong(image_size, large, resize, randaugment_ops, randaugment_magnitude)
    else:
        strong_steps = _geometric(image_size, large, resize) + [
            v2.RandAugment(num_ops=randaugment_ops, magnitude=randaugment_magnitude, num_magnitude_bins=31)]
    strong_steps.append(_normalize(mean, std))
    if cutout:
        strong_steps.append(Cutout(image_size // 2))
    fit = [v2.Resize((image_size, image_size), antialias=True)] if resize else []
    test = v2.Compose(([v2.Resize(256, antialias=True), v2.CenterCrop(224)] if large else fit) + [_normalize(mean, std)])
    return {"weak": weak, "strong": v2.Compose(strong_steps), "test": test}


class MultiView:
    """Applies several transforms to one image and returns the views as a tuple."""

    def __init__(self, *transforms):
        self.transforms = transforms

    def __call__(self, img):
        return tuple(t(img) for t in self.transforms)
