"""The BMB reference's RandAugment, rewritten on PIL with torch's random numbers (`dataset.randaugment=reference`).

Where the facts come from (read for the op table and the order only; nothing is copied):

- github.com/wujianP/ImbalancedSSL, `BMB/dataset/utils.py` (`get_transforms`, used by
  `BMB/dataset/fix_cifar10.py` and `fix_cifar100.py`; `imagenet127_get_transforms`;
  `imagenet_get_transforms`) and `BMB/dataset/small_imagenet127.py`: every strong view is
  `RandAugment(3, 4)` imported from the pip package `RandAugment`. The BMB folder has no
  RandAugment of its own; `ABC/readme.txt` of the same repository installs the package from
  github.com/ildoonet/pytorch-randaugment.
- github.com/ildoonet/pytorch-randaugment, `RandAugment/augmentations.py` (commit 48b8f50, 2020-01-29,
  the last change to that file): the 16 ops, their ranges and the draw.

The draw: n = 3 ops per image, drawn uniformly from the 16 WITH replacement (the same op may come twice);
each is applied always (no per-op probability), in the drawn order. The magnitude m = 4 is fixed (not
drawn per image or per op); an op of range [lo, hi] gets the value v = lo + (hi - lo) * m / 30. Rotate,
shear and translate negate v with probability 1/2. There is no identity op.

Op table at m = 4 (PIL semantics; NEAREST resampling and fill 0 for the geometric ops):

| op            | range       | value at m=4 | what it does at m=4                                                |
|---------------|-------------|--------------|--------------------------------------------------------------------|
| AutoContrast  | -           | -            | ImageOps.autocontrast (cutoff 0): each band stretched to 0..255     |
| Equalize      | -           | -            | ImageOps.equalize                                                  |
| Invert        | -           | -            | p -> 255 - p                                                       |
| Rotate        | 0..30 deg   | 4 deg, +/-   | about the centre, black corners                                     |
| Posterize     | 0..4 bits   | 0.53 -> 1    | int(v), at least 1: keeps 1 bit, p -> p & 128 (0 or 128)            |
| Solarize      | 0..256      | 34.13        | p >= 34.13 inverted: 0..34 kept, 35..255 -> 255 - p                 |
| SolarizeAdd   | 0..110      | 14.67        | p -> min(255, floor(p + 14.67)) = min(255, p + 14); >= 128 inverted |
| Color         | 0.1..1.9    | 0.34         | ImageEnhance.Color factor 0.34 (always below 1: 0.1 + 1.8 m/30)    |
| Contrast      | 0.1..1.9    | 0.34         | ImageEnhance.Contrast factor 0.34                                  |
| Brightness    | 0.1..1.9    | 0.34         | ImageEnhance.Brightness factor 0.34                                |
| Sharpness     | 0.1..1.9    | 0.34         | ImageEnhance.Sharpness factor 0.34 (a blur)                        |
| ShearX        | 0..0.3      | 0.04, +/-    | affine (1, v, 0, 0, 1, 0): out(x, y) = in(x + v y, y), origin top-left |
| ShearY        | 0..0.3      | 0.04, +/-    | affine (1, 0, 0, v, 1, 0): out(x, y) = in(x, y + v x)               |
| CutoutAbs     | 0..40 px    | 5.33 px      | a 6x6 square (clipped) of RGB (125, 123, 114), see below            |
| TranslateXabs | 0..100 px   | 13.33, +/-   | 13 px shift (either sign, NEAREST), zero fill; absolute px, any size |
| TranslateYabs | 0..100 px   | 13.33, +/-   | same, vertically                                                   |

CutoutAbs: centre c uniform in (1, w] (the reference calls numpy's uniform with w as the LOW bound and the
default high 1.0), corner x0 = int(max(0, c - v/2)), x1 = min(w, x0 + v), likewise in y, and PIL fills the
rectangle x0..int(x1) inclusive: 6x6 px at v = 5.33 away from the borders. Images of other modes than RGB
are filled with 125 in every band.

Every random number comes from torch's global generator (like torchvision's transforms), so
`torch.manual_seed` and DataLoader worker seeding fix the output; the reference used Python's `random` and
numpy's global generators, so no seed reproduces its exact images, only their distribution.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps
from torch import nn

CUTOUT_FILL = (125, 123, 114)


def _affine(img: Image.Image, coeffs: tuple) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, coeffs, resample=Image.Resampling.NEAREST)


def rotate(img: Image.Image, v: float) -> Image.Image:
    return img.rotate(v, resample=Image.Resampling.NEAREST)


def shear_x(img: Image.Image, v: float) -> Image.Image:
    return _affine(img, (1, v, 0, 0, 1, 0))


def shear_y(img: Image.Image, v: float) -> Image.Image:
    return _affine(img, (1, 0, 0, v, 1, 0))


def translate_x(img: Image.Image, v: float) -> Image.Image:
    """Positive v moves the content left (the output at x reads the input at x + v)."""
    return _affine(img, (1, 0, v, 0, 1, 0))


def translate_y(img: Image.Image, v: float) -> Image.Image:
    return _affine(img, (1, 0, 0, 0, 1, v))


def posterize(img: Image.Image, v: float) -> Image.Image:
    return ImageOps.posterize(img, max(1, int(v)))


def _lut(img: Image.Image, table: list[int]) -> Image.Image:
    return img.point(table * len(img.getbands()))


def solarize(img: Image.Image, v: float) -> Image.Image:
    return _lut(img, [p if p < v else 255 - p for p in range(256)])


def solarize_add(img: Image.Image, v: float, threshold: int = 128) -> Image.Image:
    added = [min(255, math.floor(p + v)) for p in range(256)]
    return _lut(img, [a if a < threshold else 255 - a for a in added])


def _enhance(kind) -> Callable[[Image.Image, float], Image.Image]:
    return lambda img, v: kind(img).enhance(v)


def cutout_at(img: Image.Image, v: float, cx: float, cy: float) -> Image.Image:
    """The reference's cutout of side v with its centre at (cx, cy) (see the module docstring)."""
    w, h = img.size
    x0, y0 = int(max(0.0, cx - v / 2)), int(max(0.0, cy - v / 2))
    x1, y1 = min(w, x0 + v), min(h, y0 + v)
    bands = len(img.getbands())
    fill = CUTOUT_FILL if img.mode == "RGB" else CUTOUT_FILL[0] if bands == 1 else (CUTOUT_FILL[0],) * bands
    img = img.copy()
    ImageDraw.Draw(img).rectangle((x0, y0, x1, y1), fill)
    return img


def cutout(img: Image.Image, v: float) -> Image.Image:
    w, h = img.size
    u = torch.rand(2).tolist()
    return cutout_at(img, v, w - (w - 1) * u[0], h - (h - 1) * u[1])  # uniform in (1, w], (1, h]


@dataclass(frozen=True)
class Op:
    name: str
    fn: Callable[[Image.Image, float], Image.Image]
    low: float = 0.0
    high: float = 1.0
    signed: bool = False  # negate the value with probability 1/2

    def value(self, magnitude: float) -> float:
        return self.low + (self.high - self.low) * float(magnitude) / 30.0


REFERENCE_OPS: tuple[Op, ...] = (
    Op("AutoContrast", lambda img, _: ImageOps.autocontrast(img)),
    Op("Equalize", lambda img, _: ImageOps.equalize(img)),
    Op("Invert", lambda img, _: ImageOps.invert(img)),
    Op("Rotate", rotate, 0, 30, signed=True),
    Op("Posterize", posterize, 0, 4),
    Op("Solarize", solarize, 0, 256),
    Op("SolarizeAdd", solarize_add, 0, 110),
    Op("Color", _enhance(ImageEnhance.Color), 0.1, 1.9),
    Op("Contrast", _enhance(ImageEnhance.Contrast), 0.1, 1.9),
    Op("Brightness", _enhance(ImageEnhance.Brightness), 0.1, 1.9),
    Op("Sharpness", _enhance(ImageEnhance.Sharpness), 0.1, 1.9),
    Op("ShearX", shear_x, 0, 0.3, signed=True),
    Op("ShearY", shear_y, 0, 0.3, signed=True),
    Op("CutoutAbs", cutout, 0, 40),
    Op("TranslateXabs", translate_x, 0, 100, signed=True),
    Op("TranslateYabs", translate_y, 0, 100, signed=True),
)
OPS_BY_NAME = {op.name: op for op in REFERENCE_OPS}


class ReferenceRandAugment(nn.Module):
    """`num_ops` ops drawn with replacement from REFERENCE_OPS, each at magnitude `magnitude` of 30.

    Takes and returns a PIL image; usable inside torchvision's (v2) Compose. Draw order per image: the
    op indices, then, op by op, its sign (signed ops) and cutout's centre.
    """

    def __init__(self, num_ops: int = 3, magnitude: float = 4):
        super().__init__()
        if num_ops < 0 or not 0 <= magnitude <= 30:
            raise ValueError(f"num_ops must be >= 0 and magnitude in [0, 30], got {num_ops} and {magnitude}")
        self.num_ops, self.magnitude = int(num_ops), magnitude

    def forward(self, img: Image.Image) -> Image.Image:
        if not isinstance(img, Image.Image):
            raise TypeError(f"ReferenceRandAugment takes a PIL image, got {type(img).__name__}")
        for i in torch.randint(len(REFERENCE_OPS), (self.num_ops,)).tolist():
            op = REFERENCE_OPS[i]
            v = op.value(self.magnitude)
            if op.signed and float(torch.rand(())) < 0.5:
                v = -v
            img = op.fn(img, v)
        return img

    def extra_repr(self) -> str:
        return f"num_ops={self.num_ops}, magnitude={self.magnitude}"
