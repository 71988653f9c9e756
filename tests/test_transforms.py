"""The reference RandAugment's op table at magnitude 4, and the weak/strong/test views of build_views."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from bmb_stream.datasets import randaugment as ra
from bmb_stream.datasets.randaugment import OPS_BY_NAME, REFERENCE_OPS, ReferenceRandAugment, cutout_at
from bmb_stream.datasets.transforms import Cutout, DeviceNormalize, build_views

M = 4
MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616]


def rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.stack([gray.astype(np.uint8)] * 3, -1))


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(np.int64)


def ramp() -> np.ndarray:
    """A 16x16 gray image holding every value 0..255 once."""
    return np.arange(256).reshape(16, 16)


def apply(name: str, img: Image.Image, sign: int = 1) -> Image.Image:
    op = OPS_BY_NAME[name]
    return op.fn(img, sign * op.value(M))


def random_images(n: int, size: int = 32, seed: int = 0) -> list[Image.Image]:
    g = np.random.default_rng(seed)
    return [Image.fromarray(g.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


# --- the op table -----------------------------------------------------------------------------------

def test_table_has_the_16_reference_ops_with_their_values_at_magnitude_4():
    assert [op.name for op in REFERENCE_OPS] == [
        "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
        "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "CutoutAbs", "TranslateXabs", "TranslateYabs"]
    expected = {"Rotate": 4.0, "Posterize": 0.5333, "Solarize": 34.1333, "SolarizeAdd": 14.6667, "Color": 0.34,
                "Contrast": 0.34, "Brightness": 0.34, "Sharpness": 0.34, "ShearX": 0.04, "ShearY": 0.04,
                "CutoutAbs": 5.3333, "TranslateXabs": 13.3333, "TranslateYabs": 13.3333}
    for name, value in expected.items():
        assert OPS_BY_NAME[name].value(M) == pytest.approx(value, abs=1e-4), name
    assert {op.name for op in REFERENCE_OPS if op.signed} == {"Rotate", "ShearX", "ShearY", "TranslateXabs",
                                                              "TranslateYabs"}


def test_invert_flips_pixel_values():
    assert (pixels(apply("Invert", rgb(ramp())))[..., 0] == 255 - ramp()).all()


def test_posterize_keeps_one_bit():
    out = pixels(apply("Posterize", rgb(ramp())))[..., 0]
    assert (out == (ramp() & 128)).all()
    assert set(np.unique(out)) == {0, 128}


def test_solarize_inverts_from_34_13_up():
    out = pixels(apply("Solarize", rgb(ramp())))[..., 0].ravel()
    assert (out[:35] == np.arange(35)).all()                 # 0..34 kept
    assert (out[35:] == 255 - np.arange(35, 256)).all()      # 35..255 inverted


def test_solarize_add_adds_14_then_inverts_from_128():
    out = pixels(apply("SolarizeAdd", rgb(ramp())))[..., 0].ravel()
    added = np.minimum(255, np.arange(256) + 14)
    assert (out == np.where(added >= 128, 255 - added, added)).all()


def test_autocontrast_stretches_to_full_range_and_equalize_spreads_the_histogram():
    img = rgb(50 + ramp() // 5)                               # values 50..101
    out = pixels(apply("AutoContrast", img))[..., 0]
    assert out.min() == 0 and out.max() == 255
    eq = pixels(apply("Equalize", rgb(np.arange(4096).reshape(64, 64) // 64)))[..., 0]  # 0..63, 64 pixels each
    assert eq.min() == 0 and eq.max() == 255 and len(np.unique(eq)) > 55   # spread over 0..255


def test_enhance_factors_are_0_34():
    gray = np.full((16, 16), 200)
    assert np.abs(pixels(apply("Brightness", rgb(gray))) - 68).max() <= 1            # 200 * 0.34
    half = np.zeros((16, 16)); half[:, 8:] = 200                                       # grey mean 100
    out = pixels(apply("Contrast", rgb(half)))[..., 0]
    assert abs(out[0, 0] - 66) <= 1 and abs(out[0, 15] - 134) <= 1                    # 100 -/+ 0.34 * 100
    red = Image.new("RGB", (16, 16), (200, 0, 0))
    grey = 0.299 * 200                                                                   # ITU-R 601 luma
    r, g, _ = pixels(apply("Color", red))[0, 0]
    assert abs(r - (grey + 0.34 * (200 - grey))) <= 1 and abs(g - 0.66 * grey) <= 1
    dot = np.zeros((16, 16)); dot[8, 8] = 255                                          # smooth: 5/13 at the centre
    out = pixels(apply("Sharpness", rgb(dot)))[..., 0]
    assert abs(out[8, 8] - (255 * 5 / 13 + 0.34 * (255 - 255 * 5 / 13))) <= 2


@pytest.mark.parametrize("name, axis", [("TranslateXabs", 1), ("TranslateYabs", 0)])
def test_translate_shifts_13_pixels_with_zero_fill(name, axis):
    img = 1 + np.arange(32)[None, :].repeat(32, 0) * 5          # columns 1..156, no zero inside
    if axis == 0:
        img = img.T
    for sign in (1, -1):
        out = pixels(apply(name, rgb(img), sign))[..., 0]
        expected = np.zeros_like(img)
        if sign > 0:   # content moves left (up): output at x reads the input at x + 13
            idx = [slice(None)] * 2; idx[axis] = slice(0, 19); src = [slice(None)] * 2; src[axis] = slice(13, 32)
        else:
            idx = [slice(None)] * 2; idx[axis] = slice(13, 32); src = [slice(None)] * 2; src[axis] = slice(0, 19)
        expected[tuple(idx)] = img[tuple(src)]
        assert (out == expected).all(), (name, sign)


def test_rotate_turns_4_degrees_about_the_centre_with_black_corners():
    line = np.zeros((64, 64)); line[32, :] = 255
    for sign, right_row, left_row in ((1, 30, 34), (-1, 34, 30)):  # positive: counter-clockwise
        out = pixels(apply("Rotate", rgb(line), sign))[..., 0]
        assert np.flatnonzero(out[:, 32] == 255).tolist() == [32]
        assert np.flatnonzero(out[:, 60] == 255).tolist() == [right_row]   # 28 px * tan 4 deg = 1.96 px
        assert np.flatnonzero(out[:, 4] == 255).tolist() == [left_row]
    corners = pixels(apply("Rotate", rgb(np.full((64, 64), 255))))[..., 0]
    assert corners[0, 0] == corners[63, 63] == 0 and corners[32, 32] == 255


@pytest.mark.parametrize("name", ["ShearX", "ShearY"])
def test_shear_by_0_04_about_the_top_left_corner(name):
    line = np.zeros((32, 32)); line[:, 10] = 255                  # a vertical line at x = 10
    for sign, far in ((1, 9), (-1, 11)):                          # rows >= 13: one pixel over
        img = rgb(line if name == "ShearX" else line.T)
        out = pixels(apply(name, img, sign))[..., 0]
        if name == "ShearY":
            out = out.T
        assert [np.flatnonzero(out[r] == 255).tolist() for r in (0, 5, 20, 31)] == [[10], [10], [far], [far]]


def test_cutout_is_a_6x6_square_of_the_reference_grey():
    img = rgb(np.zeros((32, 32)))
    out = pixels(cutout_at(img, OPS_BY_NAME["CutoutAbs"].value(M), 16.0, 16.0))
    filled = (out != 0).any(-1)
    assert filled[13:19, 13:19].all() and filled.sum() == 36     # x0 = int(16 - 2.67) = 13 .. int(13 + 5.33)
    assert (out[13:19, 13:19] == (125, 123, 114)).all()
    corner = pixels(cutout_at(img, 5.3333, 32.0, 32.0))            # clipped at the border
    assert (corner != 0).any(-1).sum() == 9 and (corner[29:, 29:] == (125, 123, 114)).all()


def test_cutout_op_draws_its_place_from_torch():
    img = rgb(np.zeros((32, 32)))
    corners = set()
    for seed in range(200):
        torch.manual_seed(seed)
        filled = (pixels(apply("CutoutAbs", img)) != 0).any(-1)
        ys, xs = np.nonzero(filled)
        assert 1 <= len(ys) <= 36 and xs.max() - xs.min() <= 5 and ys.max() - ys.min() <= 5
        corners.add((ys.min(), xs.min()))
    assert len(corners) > 100 and min(x for _, x in corners) == 0 and max(x for _, x in corners) == 29


# --- the module: n ops with replacement, fixed magnitude, torch's RNG -----------------------------------

def test_three_ops_drawn_with_replacement_at_the_fixed_magnitude(monkeypatch):
    calls: list[tuple[str, float]] = []

    def recorder(name):
        return lambda img, v: calls.append((name, v)) or img

    recorded = tuple(type(op)(op.name, recorder(op.name), op.low, op.high, op.signed) for op in REFERENCE_OPS)
    monkeypatch.setattr(ra, "REFERENCE_OPS", recorded)
    aug = ReferenceRandAugment(3, M)
    img = rgb(ramp())
    torch.manual_seed(0)
    per_image = []
    for _ in range(300):
        calls.clear()
        aug(img)
        per_image.append(list(calls))
    assert all(len(c) == 3 for c in per_image)
    assert any(len({n for n, _ in c}) < 3 for c in per_image)                 # the same op twice in one image
    assert {n for c in per_image for n, _ in c} == {op.name for op in REFERENCE_OPS}
    signs = {n: set() for n in OPS_BY_NAME}
    for c in per_image:
        for n, v in c:
            assert abs(v) == pytest.approx(OPS_BY_NAME[n].value(M))
            signs[n].add(np.sign(v))
    assert all(signs[op.name] == ({1.0, -1.0} if op.signed else {1.0}) for op in REFERENCE_OPS)


def test_reference_randaugment_follows_torch_manual_seed_only():
    aug = ReferenceRandAugment(3, M)
    img = random_images(1)[0]
    torch.manual_seed(5); random.seed(1); np.random.seed(1)
    a = [pixels(aug(img)) for _ in range(20)]
    torch.manual_seed(5); random.seed(2); np.random.seed(2)
    b = [pixels(aug(img)) for _ in range(20)]
    assert all((x == y).all() for x, y in zip(a, b))
    assert len({x.tobytes() for x in a}) > 10


def test_reference_randaugment_rejects_tensors_and_bad_arguments():
    with pytest.raises(TypeError):
        ReferenceRandAugment()(torch.zeros(3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError):
        ReferenceRandAugment(3, 31)


# --- build_views ----------------------------------------------------------------------------------------

def old_build_views(image_size, mean, std, randaugment_ops=3, randaugment_magnitude=4, cutout=None, resize=False):
    """build_views as it was before `randaugment` existed, kept here to pin the torchvision pipeline."""
    def normalize():
        return v2.Compose([v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
                           v2.Normalize(list(mean), list(std))])

    def geometric():
        if large:
            return [v2.Resize(256, antialias=True), v2.RandomCrop(224), v2.RandomHorizontalFlip()]
        fit = [v2.Resize((image_size, image_size), antialias=True)] if resize else []
        return fit + [v2.RandomCrop(image_size, padding=image_size // 8, padding_mode="reflect"),
                      v2.RandomHorizontalFlip()]

    large = image_size > 64
    cutout = (not large) if cutout is None else cutout
    weak = v2.Compose(geometric() + [normalize()])
    strong = geometric() + [v2.RandAugment(num_ops=randaugment_ops, magnitude=randaugment_magnitude,
                                           num_magnitude_bins=31), normalize()]
    if cutout:
        strong.append(Cutout(image_size // 2))
    fit = [v2.Resize((image_size, image_size), antialias=True)] if resize else []
    test = v2.Compose(([v2.Resize(256, antialias=True), v2.CenterCrop(224)] if large else fit) + [normalize()])
    return {"weak": weak, "strong": v2.Compose(strong), "test": test}


@pytest.mark.parametrize("image_size, input_size, resize", [(32, 32, False), (32, 40, True), (64, 64, False),
                                                            (224, 300, False)])
def test_torchvision_views_are_unchanged(image_size, input_size, resize):
    images = random_images(6 if image_size < 224 else 2, input_size, seed=image_size)
    """The views, normalised, equal those of the float pipeline they replaced, bit for bit, except in
    Cutout's square: the mean's uint8 levels there, normalised, are within 0.5/255/std of its zeros."""
    new = build_views(image_size, MEAN, resize=resize)
    explicit = build_views(image_size, MEAN, resize=resize, randaugment="torchvision")
    old = old_build_views(image_size, MEAN, STD, resize=resize)
    normalize = DeviceNormalize(MEAN, STD)
    for name in ("weak", "strong", "test"):
        outs = []
        for views in (new, explicit, old):
            torch.manual_seed(11)
            outs.append([views[name](img) for img in images for _ in range(3)])
        for a, b, c in zip(*outs):
            assert a.dtype == torch.uint8 and torch.equal(a, b), name
            square = (c == 0).all(0)  # the old pipeline's Cutout: exact zeros in every channel
            assert torch.equal(normalize(a)[:, ~square], c[:, ~square]), name
            assert (normalize(a)[:, square].abs() <= 0.5 / 255 / min(STD) + 1e-6).all(), name


@pytest.mark.parametrize("kind", ["reference", "torchvision"])
@pytest.mark.parametrize("image_size, input_size, resize", [(32, 32, False), (32, 40, True), (64, 64, False),
                                                            (224, 300, False)])
def test_view_shapes_and_dtypes(kind, image_size, input_size, resize):
    views = build_views(image_size, MEAN, resize=resize, randaugment=kind)
    img = random_images(1, input_size)[0]
    for name in ("weak", "strong", "test"):
        out = views[name](img)
        assert out.shape == (3, image_size, image_size) and out.dtype == torch.uint8, name


def test_reference_strong_view_is_seeded_by_torch():
    views = build_views(32, MEAN, randaugment="reference")
    images = random_images(8)
    torch.manual_seed(3)
    a = [views["strong"](img) for img in images]
    torch.manual_seed(3)
    b = [views["strong"](img) for img in images]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(views["strong"](images[0]), views["strong"](images[0]))


def test_reference_strong_view_order_and_padding():
    small = build_views(32, MEAN, randaugment="reference")["strong"].transforms
    assert [type(t) for t in small[:3]] == [ReferenceRandAugment, v2.RandomCrop, v2.RandomHorizontalFlip]
    assert isinstance(small[-1], Cutout) and small[-1].size == 16
    crop = small[1]
    assert crop.padding == [4, 4, 4, 4] and crop.padding_mode == "constant" and crop.fill == 0
    large = build_views(224, MEAN, randaugment="reference")["strong"].transforms
    assert [type(t) for t in large[:4]] == [v2.Resize, ReferenceRandAugment, v2.RandomCrop, v2.RandomHorizontalFlip]
    assert not any(isinstance(t, Cutout) for t in large)
    fitted = build_views(32, MEAN, resize=True, randaugment="reference")["strong"].transforms
    assert [type(t) for t in fitted[:2]] == [v2.Resize, ReferenceRandAugment]
    assert build_views(64, MEAN, randaugment="reference")["strong"].transforms[1].padding == [8, 8, 8, 8]


def test_reference_crop_pads_with_zeros():
    white = Image.new("RGB", (32, 32), (255, 255, 255))
    views = build_views(32, MEAN, randaugment="reference", randaugment_ops=0, cutout=False)
    seen_zero_border = False
    for seed in range(20):
        torch.manual_seed(seed)
        out = views["strong"](white)
        is_zero, is_white = (out == 0).all(0), (out == 255).all(0)
        assert (is_zero | is_white).all()
        seen_zero_border |= bool(is_zero.any())
    assert seen_zero_border


def test_unknown_randaugment_kind_names_the_accepted_ones():
    with pytest.raises(ValueError, match="reference, torchvision"):
        build_views(32, MEAN, randaugment="timm")
