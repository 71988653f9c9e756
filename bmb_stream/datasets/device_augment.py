"""The strong views' RandAugment and Cutout on batches, on the training device (`dataset.augment_on=device`).

With `augment_on=device` the loader workers only decode, resize, crop and flip (uint8 tensors out), and
`StrongAugment` finishes both strong views of a collated batch where the model runs. Each image draws its
own ops and signs, as on the CPU path; the batch is then grouped by what its images drew, and each op
runs once per group (at most 2 calls per op and position: its two signs).

The draws come from torch's global CPU generator, in the training process: a checkpoint already holds
its state (the learner's `rng`), so a resumed run draws the same ops; the indices of each group are made on
the host and copied to the device from pinned memory.

The two op tables (`dataset.randaugment`):
- `torchvision`: torchvision's v2.RandAugment, its op table and its own tensor kernels
  (`_AUGMENTATION_SPACE`, `_apply_image_or_video_transform`, torchvision 0.29), nearest, fill 0;
- `reference`: the BMB reference's 16 ops (bmb_stream/datasets/randaugment.py), rewritten for uint8
  tensor batches with PIL's arithmetic: the geometric ops sample as PIL's NEAREST affine transform does
  (pixel centres, floor), the enhancements blend as ImageEnhance does.

Against the CPU path: on the CPU the reference's RandAugment comes before the crop (zero padding on small
images); here, for both tables, it comes after the crop and the flip, because the loaders deliver
cropped views. Per-op agreement with PIL: tests/test_device_augment.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from bmb_stream.datasets.randaugment import CUTOUT_FILL, REFERENCE_OPS


def _on(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """A host tensor on x's device; to a GPU from pinned memory, so that the copy need not wait for the
    work queued before it."""
    if x.device.type == "cuda":
        index = index.pin_memory()
    return index.to(x.device, non_blocking=True)


def affine_nearest(x: torch.Tensor, coeffs: tuple[float, ...]) -> torch.Tensor:
    """PIL's AFFINE transform with NEAREST resampling and fill 0, on a uint8 batch (N, C, H, W): the output
    at pixel (x, y) reads the input at floor(a (x + .5) + b (y + .5) + c), floor(d (x + .5) + e (y + .5) + f).
    As PIL does, a shear or rotation (b or d not 0) is computed in 16.16 fixed point, whose rounding of the
    coefficients decides the exact ties (a shear of 0.04 meets one every 25 rows)."""
    a, b, c, d, e, f = coeffs
    h, w = x.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.int64), torch.arange(w, dtype=torch.int64), indexing="ij")
    if b == 0 and d == 0:  # PIL's scaling path, in floating point
        src_x = torch.floor(a * (xs + 0.5) + c).long()
        src_y = torch.floor(e * (ys + 0.5) + f).long()
    else:
        def fix(v: float) -> int:
            return math.floor(v * 65536.0 + 0.5)
        src_x = (fix(c + 0.5 * a + 0.5 * b) + xs * fix(a) + ys * fix(b)) >> 16
        src_y = (fix(f + 0.5 * d + 0.5 * e) + xs * fix(d) + ys * fix(e)) >> 16
    inside = (src_x >= 0) & (src_x < w) & (src_y >= 0) & (src_y < h)
    flat = (src_y.clamp(0, h - 1) * w + src_x.clamp(0, w - 1)).flatten()
    out = x.flatten(-2)[..., _on(x, flat)].view_as(x)
    return out * _on(x, inside).to(x.dtype)


def rotation_coeffs(angle: float, w: int, h: int) -> tuple[float, ...]:
    """PIL's Image.rotate(angle) (counter-clockwise, about the centre, same size) as affine coefficients."""
    t = -math.radians(angle)
    cx, cy = w / 2, h / 2
    a, b, d, e = math.cos(t), math.sin(t), -math.sin(t), math.cos(t)
    return a, b, cx - a * cx - b * cy, d, e, cy - d * cx - e * cy


def _blend(x: torch.Tensor, degenerate: torch.Tensor, factor: float) -> torch.Tensor:
    """ImageEnhance's blend (PIL's Image.blend): degenerate + factor (x - degenerate), truncated toward zero
    as C's cast does, and clipped to uint8."""
    out = degenerate + factor * (x.float() - degenerate)
    return out.trunc_().clamp_(0, 255).to(torch.uint8)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """PIL's convert("L"): (19595 R + 38470 G + 7471 B + 2^15) >> 16, in integers."""
    r, g, b = x.int().unbind(-3)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).unsqueeze(-3).float()


def color(x, v):
    return _blend(x, _gray(x), v)


def contrast(x, v):
    mean = _gray(x).mean(dim=(-3, -2, -1), keepdim=True).add(0.5).floor()  # PIL: int(mean + 0.5)
    return _blend(x, mean, v)


def brightness(x, v):
    return _blend(x, torch.zeros((), device=x.device), v)


def sharpness(x, v):
    return F.adjust_sharpness(x, v)  # torchvision's degenerate is PIL's SMOOTH filter, borders kept


def autocontrast(x, _):
    """ImageOps.autocontrast: each band stretched from its (min, max) to (0, 255), int() of the result."""
    lo, hi = x.amin(dim=(-2, -1), keepdim=True).float(), x.amax(dim=(-2, -1), keepdim=True).float()
    scale = torch.where(hi > lo, 255.0 / (hi - lo).clamp(min=1), torch.ones_like(hi))
    offset = torch.where(hi > lo, -lo * scale, torch.zeros_like(lo))
    return (x.float() * scale + offset).clamp_(0, 255).floor_().to(torch.uint8)


def solarize_add(x, v, threshold: int = 128):
    added = (x.float() + v).floor().clamp_(max=255)
    return torch.where(added < threshold, added, 255 - added).to(torch.uint8)


def cutout_abs(x, v, centres):
    """The reference's CutoutAbs at per-image centres (N, 2) in (1, w] x (1, h] (randaugment.cutout_at)."""
    h, w = x.shape[-2:]
    x0, y0 = (centres[:, 0] - v / 2).clamp(min=0).floor(), (centres[:, 1] - v / 2).clamp(min=0).floor()
    x1, y1 = (x0 + v).clamp(max=w), (y0 + v).clamp(max=h)  # PIL fills x0..int(x1) inclusive
    cols, rows = torch.arange(w, dtype=torch.float64), torch.arange(h, dtype=torch.float64)
    inside_x = (cols >= x0[:, None]) & (cols <= x1.floor()[:, None])
    inside_y = (rows >= y0[:, None]) & (rows <= y1.floor()[:, None])
    mask = _on(x, inside_y[:, :, None] & inside_x[:, None, :])[:, None]
    fill = torch.tensor(CUTOUT_FILL, dtype=x.dtype, device=x.device)[:, None, None]
    return torch.where(mask, fill, x)


REFERENCE_TENSOR_OPS: dict[str, Callable] = {
    "AutoContrast": autocontrast,
    "Equalize": lambda x, _: F.equalize(x),
    "Invert": lambda x, _: F.invert(x),
    "Rotate": lambda x, v: affine_nearest(x, rotation_coeffs(v, x.shape[-1], x.shape[-2])),
    "Posterize": lambda x, v: F.posterize(x, max(1, int(v))),
    "Solarize": lambda x, v: torch.where(x < v, x, 255 - x),
    "SolarizeAdd": solarize_add,
    "Color": color,
    "Contrast": contrast,
    "Brightness": brightness,
    "Sharpness": sharpness,
    "ShearX": lambda x, v: affine_nearest(x, (1, v, 0, 0, 1, 0)),
    "ShearY": lambda x, v: affine_nearest(x, (1, 0, 0, v, 1, 0)),
    "CutoutAbs": cutout_abs,
    "TranslateXabs": lambda x, v: affine_nearest(x, (1, 0, v, 0, 1, 0)),
    "TranslateYabs": lambda x, v: affine_nearest(x, (1, 0, 0, 0, 1, v)),
}


class StrongAugment:
    """RandAugment (`num_ops` ops of `magnitude`, per image) and, where `cutout_size`, Cutout of that side
    filled with `cutout_fill`, on uint8 batches (N, C, H, W) on any device."""

    def __init__(self, kind: str, num_ops: int = 3, magnitude: int = 4, cutout_size: int | None = None,
                 cutout_fill: tuple[int, ...] = (0,)):
        self.kind, self.num_ops, self.magnitude = kind, num_ops, magnitude
        self.cutout_size, self.cutout_fill = cutout_size, cutout_fill
        if kind == "torchvision":
            self.torchvision = v2.RandAugment(num_ops=num_ops, magnitude=magnitude, num_magnitude_bins=31)
            self.op_names = list(self.torchvision._AUGMENTATION_SPACE)
        elif kind == "reference":
            self.op_names = [op.name for op in REFERENCE_OPS]
        else:
            raise ValueError(f"randaugment={kind!r}: expected torchvision or reference")

    def draws(self, n: int) -> dict[str, torch.Tensor]:
        """Each image's ops (n, num_ops), their signs (True: negated), the reference cutout's centres and
        the Cutout's centre: all drawn for every image, so that the number of draws is fixed per batch."""
        return {"ops": torch.randint(len(self.op_names), (n, self.num_ops)),
                "negate": torch.rand(n, self.num_ops) < 0.5,
                "centres": torch.rand(n, self.num_ops, 2, dtype=torch.float64),
                "cutout": torch.rand(n, 2, dtype=torch.float64)}

    def value(self, name: str, h: int, w: int) -> tuple[float, bool]:
        """(the op's value at this magnitude, whether it is signed)."""
        if self.kind == "torchvision":
            magnitudes_fn, signed = self.torchvision._AUGMENTATION_SPACE[name]
            magnitudes = magnitudes_fn(31, h, w)
            return (float(magnitudes[self.magnitude]) if magnitudes is not None and magnitudes.ndim > 0 else 0.0), signed
        op = REFERENCE_OPS[self.op_names.index(name)]
        return op.value(self.magnitude), op.signed

    def apply(self, x: torch.Tensor, name: str, v: float, centres: torch.Tensor) -> torch.Tensor:
        if self.kind == "torchvision":
            return self.torchvision._apply_image_or_video_transform(x, name, v, self.torchvision.interpolation,
                                                                    self.torchvision._fill)
        if name == "CutoutAbs":
            w, h = x.shape[-1], x.shape[-2]
            return cutout_abs(x, v, torch.stack([w - (w - 1) * centres[:, 0], h - (h - 1) * centres[:, 1]], 1))
        return REFERENCE_TENSOR_OPS[name](x, v)

    def __call__(self, x: torch.Tensor, draws: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise ValueError(f"device augmentation takes uint8 batches (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
        n, (h, w) = len(x), x.shape[-2:]
        draws = draws or self.draws(n)
        x = x.clone()
        for k in range(self.num_ops):
            ops, negate = draws["ops"][:, k], draws["negate"][:, k]
            for i, name in enumerate(self.op_names):
                v, signed = self.value(name, h, w)
                for sign in ((False, True) if signed else (None,)):
                    picked = (ops == i) if sign is None else (ops == i) & (negate == sign)
                    index = picked.nonzero().flatten()  # on the host: no device synchronisation
                    if len(index):
                        rows = _on(x, index)
                        x[rows] = self.apply(x[rows], name, -v if sign else v, draws["centres"][index, k])
        if self.cutout_size:
            x = self.cutout(x, draws["cutout"])
        return x

    def cutout(self, x: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """transforms.Cutout per image: centre (randint(h), randint(w)), the square clipped at the border."""
        h, w = x.shape[-2:]
        cy, cx = (where[:, 0] * h).floor(), (where[:, 1] * w).floor()
        half = self.cutout_size // 2
        rows, cols = torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64)
        in_rows = (rows >= cy[:, None] - half) & (rows < cy[:, None] + half)
        in_cols = (cols >= cx[:, None] - half) & (cols < cx[:, None] + half)
        mask = _on(x, in_rows[:, :, None] & in_cols[:, None, :])[:, None]
        fill = torch.tensor(self.cutout_fill, dtype=x.dtype, device=x.device)[:, None, None]
        return torch.where(mask, fill, x)
