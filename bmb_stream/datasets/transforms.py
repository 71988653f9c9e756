"""Weak, strong and test views (bmb-method section 7), built from torchvision's v2 transforms.

Inputs are PIL images (decoded files stay PIL until the end; on small images PIL's ops are as fast
as tensor ops in a one-thread worker and far faster with several threads, bench/augment_speed.py);
outputs are uint8 tensors, a quarter of float32's bytes through the loaders' queues and to the device,
where `DeviceNormalize` makes them the float inputs a model takes. Small images (32/64 px): weak = pad-and-crop + flip; strong = weak +
RandAugment(3 ops, magnitude 4 of 30) + Cutout of half the image side. ImageNet-size images: weak =
resize 256, random crop 224, flip; strong adds RandAugment; test = resize 256, center crop 224.

Two strong views (`randaugment`, the config key `dataset.randaugment`):

- `torchvision`: torchvision's v2.RandAugment after the crop (reflect padding) and the flip.
- `reference`: the BMB reference's RandAugment (bmb_stream/datasets/randaugment.py) in the reference's order:
  [resize 256 (large) | fit (image folders)], RandAugment, random crop (zero padding of side/8 on small
  images; no padding on large ones), flip, to tensor, Cutout (small images).

The views of an unlabeled image (`unlabeled`: weak, strong, strong) share their first, deterministic
step: the resize of large images (and the fit of image folders) is done once for the three.

`augment_on="device"` (the config key `dataset.augment_on`): the training views are made on uint8
tensors (resized with torch's kernel, then crops and flips), the strong views stop after the crop and
flip, and `device_strong_augment` (bmb_stream/datasets/device_augment.py) finishes them on the collated
batch. Every view names the shorter side its first step resizes to (`decode_shorter_side`), so that
the decoder may decode a large JPEG at a reduced scale.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.transforms import v2

from bmb_stream.config_schema import AUGMENT_PLACES, RANDAUGMENT_KINDS
from bmb_stream.datasets.device_augment import StrongAugment
from bmb_stream.datasets.randaugment import ReferenceRandAugment


class Cutout(nn.Module):
    """Fill a size x size square (clipped at the border) at a uniformly random centre with `fill`.

    The reference zeroes the square after normalisation, so that it holds the dataset mean; on uint8
    images `fill` is that mean rounded to the nearest level (`mean_fill`), within 0.5/255 of it.
    """

    def __init__(self, size: int, fill: tuple[int, ...] = (0,)):
        super().__init__()
        self.size = size
        self.fill = torch.tensor(fill, dtype=torch.uint8)[:, None, None]

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        half = self.size // 2
        img = img.clone()
        img[..., max(0, cy - half): min(h, cy + half), max(0, cx - half): min(w, cx + half)] = self.fill.to(img.dtype)
        return img


def mean_fill(mean) -> tuple[int, ...]:
    """The dataset mean as uint8 levels: what normalises to (about) zero."""
    return tuple(int(round(255 * m)) for m in mean)


class DeviceNormalize:
    """uint8 image batches (from the loaders, or the evaluator's decoded test set) to the normalised
    float inputs of a model, on the training device: (x / 255 - mean) / std, in channels_last memory
    format when asked. Float inputs are taken as already normalised."""

    def __init__(self, mean, std, device: torch.device | str = "cpu", channels_last: bool = False):
        self.device = torch.device(device)
        self.mean = torch.tensor(list(mean), dtype=torch.float32, device=self.device)[:, None, None]
        self.std = torch.tensor(list(std), dtype=torch.float32, device=self.device)[:, None, None]
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = x.float().mul_(1.0 / 255).sub_(self.mean).div_(self.std)  # torchvision's arithmetic, to the bit
        return x.contiguous(memory_format=self.memory_format)


def _shared(image_size: int, large: bool, resize: bool, on_tensors: bool = False) -> list:
    """The deterministic first step of every training view: resize 256 (large images), fit (image folders).
    `on_tensors`: to a uint8 tensor first, and resized there (torch's uint8 antialiased kernel, about 4x
    faster than PIL's), so that the crops and flips after it are tensor slices."""
    first = [v2.PILToTensor()] if on_tensors else []
    if large:
        return first + [v2.Resize(256, antialias=True)]
    return first + ([v2.Resize((image_size, image_size), antialias=True)] if resize else [])


def _geometric(image_size: int, large: bool, padding_mode: str = "reflect") -> list:
    if large:
        return [v2.RandomCrop(224), v2.RandomHorizontalFlip()]
    return [v2.RandomCrop(image_size, padding=image_size // 8, padding_mode=padding_mode), v2.RandomHorizontalFlip()]


def _reference_strong(image_size: int, large: bool, ops: int, magnitude: int) -> list:
    """The reference's strong-view order: RandAugment before the crop; the crop pads with zeros."""
    if large:
        return [ReferenceRandAugment(ops, magnitude), v2.RandomCrop(224), v2.RandomHorizontalFlip()]
    return [ReferenceRandAugment(ops, magnitude), v2.RandomCrop(image_size, padding=image_size // 8),
            v2.RandomHorizontalFlip()]


class View(v2.Compose):
    """A view, and what its decoder may skip: `decode_shorter_side`, the shorter side its first step
    resizes to (None: no resize), down to which a JPEG may be decoded at 1/2, 1/4 or 1/8 scale."""

    def __init__(self, transforms: list, decode_shorter_side: int | None = None):
        super().__init__(transforms)
        self.decode_shorter_side = decode_shorter_side


def build_views(image_size: int, mean, randaugment_ops: int = 3, randaugment_magnitude: int = 4,
                cutout: bool | None = None, resize: bool = False,
                randaugment: str = "torchvision", augment_on: str = "loader") -> dict:
    """The `weak`, `strong` and `test` transforms for one dataset (uint8 tensors out), and `unlabeled`:
    (weak, strong, strong) of one image, resized once.

    `mean`: the dataset's, which Cutout fills in. `resize` fits small images of any size to image_size
    first (image folders); in-memory arrays already have the right size and skip it. `randaugment`
    chooses the strong view (module docstring); the weak and test views are the same for both.
    `augment_on="device"`: the training views are made on uint8 tensors and the strong views stop after
    the crop and flip; `device_strong_augment` finishes them on the collated batch.
    """
    if randaugment not in RANDAUGMENT_KINDS:
        raise ValueError(f"randaugment={randaugment!r}: expected one of {', '.join(RANDAUGMENT_KINDS)}")
    if augment_on not in AUGMENT_PLACES:
        raise ValueError(f"augment_on={augment_on!r}: expected one of {', '.join(AUGMENT_PLACES)}")
    large = image_size > 64
    cutout = (not large) if cutout is None else cutout
    draft = 256 if large else None
    on_device = augment_on == "device"
    shared = _shared(image_size, large, resize, on_tensors=on_device)
    to_tensor = [] if on_device else [v2.PILToTensor()]
    weak = _geometric(image_size, large) + to_tensor
    if on_device:  # the zero padding of the reference's crop; its RandAugment comes after it, on the device
        strong = _geometric(image_size, large, "constant" if randaugment == "reference" else "reflect")
    elif randaugment == "reference":
        strong = _reference_strong(image_size, large, randaugment_ops, randaugment_magnitude) + to_tensor
    else:
        strong = _geometric(image_size, large) + [
            v2.RandAugment(num_ops=randaugment_ops, magnitude=randaugment_magnitude, num_magnitude_bins=31)] + to_tensor
    if cutout and not on_device:
        strong.append(Cutout(image_size // 2, mean_fill(mean)))
    test = [v2.Resize(256, antialias=True), v2.CenterCrop(224)] if large else _shared(image_size, large, resize)
    return {"weak": View(shared + weak, draft), "strong": View(shared + strong, draft),
            "test": View(test + [v2.PILToTensor()], draft),
            "unlabeled": MultiView(v2.Compose(weak), v2.Compose(strong), v2.Compose(strong),
                                   shared=v2.Compose(shared) if shared else None, decode_shorter_side=draft)}


def device_strong_augment(image_size: int, mean, randaugment: str = "torchvision", randaugment_ops: int = 3,
                          randaugment_magnitude: int = 4, cutout: bool | None = None) -> StrongAugment:
    """What `build_views(augment_on="device")` leaves out of the strong views: RandAugment and Cutout, per
    image, on batches on the training device."""
    large = image_size > 64
    cutout = (not large) if cutout is None else cutout
    return StrongAugment(randaugment, randaugment_ops, randaugment_magnitude,
                         cutout_size=image_size // 2 if cutout else None, cutout_fill=mean_fill(mean))


class MultiView:
    """Applies several transforms to one image (after `shared`, once) and returns the views as a tuple."""

    def __init__(self, *transforms, shared=None, decode_shorter_side: int | None = None):
        self.transforms = transforms
        self.shared = shared
        self.decode_shorter_side = decode_shorter_side  # as View's

    def __call__(self, img):
        if self.shared is not None:
            img = self.shared(img)
        return tuple(t(img) for t in self.transforms)
