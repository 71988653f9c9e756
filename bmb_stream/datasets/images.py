"""Decoding one image, from a file or from a shard's bytes, and saying in words why it cannot be used.

An image over MAX_IMAGE_PIXELS is refused from its header, before any pixel is decoded (a
decompression bomb in an untrusted shard); PIL's own errors become one short reason, never the repr
of a BytesIO object. Only the decoders of common formats are used (IMAGE_FORMATS): untrusted bytes
never reach PIL's rarely used ones."""

from __future__ import annotations

import io
import math
import re
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from bmb_stream.errors import UnusableImage, one_line

MAX_IMAGE_PIXELS = 64 << 20  # 64 megapixels (8192 x 8192), decoded: about 200 MB of RGB bytes
# the extensions (in any case) of the shard members read as images, and the formats PIL may decode
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "jpe", "jfif", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm", "pbm",
                    "pnm")
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF", "PPM")


def why(e: BaseException) -> str:
    """Why PIL could not use an image, in words."""
    if isinstance(e, UnusableImage):
        return e.reason
    if isinstance(e, FileNotFoundError):
        return "not found"
    if isinstance(e, UnidentifiedImageError):  # its own message repeats the path, or a BytesIO's address
        return "not an image (PIL cannot identify its format)"
    if isinstance(e, Image.DecompressionBombError):  # PIL's own check, at twice its limit, fires in Image.open
        return too_big(re.sub(r"^Image size \((\d+) pixels\).*", r"\1 pixels", str(e))).reason
    return f"not a readable image ({one_line(e)})"


def too_big(size: str) -> UnusableImage:
    return UnusableImage(f"{size}, over the limit of {MAX_IMAGE_PIXELS >> 20} megapixels (MAX_IMAGE_PIXELS): "
                         "a decompression bomb?", too_big=True)


def decode_rgb(source: bytes | str | Path, shorter_side: int | None = None) -> Image.Image:
    """Encoded bytes or an image file -> an RGB image; raises UnusableImage with the reason.

    `shorter_side`: what the image's first transform resizes its shorter side to. A JPEG at least twice
    that is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling: PIL's draft mode), the largest
    reduction that keeps its shorter side at `shorter_side` or more; the resize then starts from fewer pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own, lower limit follows
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=IMAGE_FORMATS) as img:
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise too_big(f"{img.width}x{img.height} pixels")
                if shorter_side and img.format == "JPEG" and min(img.size) >= 2 * shorter_side:
                    scale = shorter_side / min(img.size)
                    img.draft("RGB", (math.ceil(img.width * scale), math.ceil(img.height * scale)))
                return img.convert("RGB")
    except UnusableImage:
        raise
    except Exception as e:  # noqa: BLE001 - hostile bytes make PIL raise OSError, SyntaxError, ValueError...
        raise UnusableImage(why(e), too_big=isinstance(e, Image.DecompressionBombError)) from None
