"""A JPEG whose view first resizes to 256 is decoded at a reduced scale (PIL's draft mode): the view it
gives differs from the full decode's by what another resampling filter would change, no more."""

import io

import pytest
import torch
from matplotlib import cbook
from PIL import Image
from torchvision.transforms import v2

from bmb_stream.datasets.images import decode_rgb
from bmb_stream.datasets.transforms import build_views
from bmb_stream.shards.reading import EncodedImages

PHOTO = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)  # 512 x 600, a real photograph


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_a_large_jpeg_is_decoded_at_the_largest_reduction_that_keeps_256():
    data = open(PHOTO, "rb").read()
    assert decode_rgb(data).size == (512, 600)
    assert decode_rgb(data, 256).size == (256, 300)  # 1/2
    big = jpeg(Image.open(PHOTO).convert("RGB").resize((1100, 1300)))
    assert decode_rgb(big, 256).size == (275, 325)  # 1/4; 1/8 would give 138 < 256
    assert decode_rgb(jpeg(Image.open(PHOTO).convert("RGB").resize((500, 375))), 256).size == (500, 375)  # < 512
    png = io.BytesIO()
    Image.open(PHOTO).save(png, format="PNG")
    assert decode_rgb(png.getvalue(), 256).size == (512, 600)  # not a JPEG: decoded whole


def mean_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.int() - b.int()).abs().float().mean())


@pytest.mark.parametrize("view", ["test", "weak"])
def test_the_view_of_a_draft_decode_is_within_resampling_error_of_the_full_decode(view):
    """The draft is libjpeg's DCT scaling, close to a box filter: its view is as far from the full decode's
    as the box filter's is (2.5 levels on average; 2.3 for the box), and within 3 levels."""
    data = open(PHOTO, "rb").read()
    views = build_views(224, [0.5] * 3)
    transform = views[view]
    assert transform.decode_shorter_side == 256
    torch.manual_seed(0)
    full = transform(decode_rgb(data))
    torch.manual_seed(0)
    draft = transform(decode_rgb(data, 256))
    box = v2.Compose([v2.Resize(256, interpolation=v2.InterpolationMode.BOX, antialias=True),
                      *transform.transforms[1:]])
    torch.manual_seed(0)
    boxed = box(decode_rgb(data))
    assert mean_abs(draft, full) <= min(3.0, 1.2 * mean_abs(boxed, full))
    assert mean_abs(draft, boxed) < 1.0


def test_a_dataset_of_encoded_images_decodes_as_its_view_allows():
    data = open(PHOTO, "rb").read()
    seen = []
    test = build_views(224, [0.5] * 3)["test"]

    class Spy(v2.Compose):
        decode_shorter_side = test.decode_shorter_side

        def __call__(self, img):
            seen.append(img.size)
            return test(img)
    x, _ = EncodedImages([data], [0], Spy(test.transforms))[0]
    assert seen == [(256, 300)] and x.shape == (3, 224, 224)
    assert build_views(32, [0.5] * 3)["test"].decode_shorter_side is None  # small images: no resize, no draft
