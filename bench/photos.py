"""Photo-like JPEGs at ImageNet's sizes, for the input-pipeline benchmarks.

JPEG decoding and re-encoding cost depends on what the image holds: uniform noise compresses to about
three times the bytes of a photograph and decodes slower. These images are cut from real photographs
that installed packages ship (matplotlib's `grace_hopper.jpg`; scikit-learn's `china.jpg` and
`flower.jpg` where scikit-learn is installed): a random crop of a random photo (a third to all of its
area, aspect 3:4 to 4:3), resized to a size drawn from an approximation of ImageNet's training images
(most are 500 px on the longer side; about half are 500x375 or 375x500), and saved at JPEG quality 90.
"""

from __future__ import annotations

import io
from functools import cache

import numpy as np
from PIL import Image

# (width, height): share; ImageNet's training images are mostly 500 px on the longer side, a few larger
SIZES = {(500, 375): 0.35, (375, 500): 0.15, (500, 333): 0.2, (333, 500): 0.05, (500, 500): 0.1,
         (640, 480): 0.05, (800, 600): 0.05, (1024, 768): 0.05}


@cache
def source_photos() -> tuple[Image.Image, ...]:
    from matplotlib import cbook

    photos = [Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")]
    try:
        from sklearn.datasets import load_sample_images
        photos += [Image.fromarray(a) for a in load_sample_images().images]
    except ImportError:
        pass
    return tuple(photos)


def photo_like(n: int, seed: int = 0, sizes: dict | None = None) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = sizes or SIZES
    shapes = list(sizes)
    picks = rng.choice(len(shapes), size=n, p=np.array(list(sizes.values())) / sum(sizes.values()))
    photos = source_photos()
    out = []
    for i in picks:
        photo = photos[rng.integers(len(photos))]
        w, h = photo.size
        area = rng.uniform(1 / 3, 1) * w * h
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = min(w, int(np.sqrt(area * aspect))), min(h, int(np.sqrt(area / aspect)))
        x, y = rng.integers(w - cw + 1), rng.integers(h - ch + 1)
        img = photo.crop((x, y, x + cw, y + ch)).resize(shapes[i], Image.Resampling.BICUBIC)
        out.append(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else img)
    return out


def jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def photo_like_jpegs(n: int, seed: int = 0) -> list[bytes]:
    return [jpeg_bytes(img) for img in photo_like(n, seed)]
