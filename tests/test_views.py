"""Cutout and the weak/strong/test views that build_views returns (uint8 tensors; MultiView as the loops
use it), and DeviceNormalize, which makes them a model's inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bmb_stream.datasets.transforms import Cutout, DeviceNormalize, MultiView, build_views, mean_fill

MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616]
COLOUR = (200, 30, 90)
normalize = DeviceNormalize(MEAN, STD)
FILL = torch.tensor(mean_fill(MEAN), dtype=torch.uint8)[:, None, None]


def normalised(colour) -> torch.Tensor:
    """The normalised value of one RGB colour, per channel, as a (3, 1, 1) tensor."""
    return ((torch.tensor(colour, dtype=torch.float32) / 255 - torch.tensor(MEAN)) / torch.tensor(STD))[:, None, None]


def random_image(size: int = 32, seed: int = 0) -> Image.Image:
    g = np.random.default_rng(seed)
    return Image.fromarray(g.integers(0, 256, (size, size, 3), dtype=np.uint8))


def zero_box(out: torch.Tensor) -> tuple[slice, slice] | None:
    """The rows and columns of the exact zeros of a (C, H, W) tensor, checked to be one solid
    rectangle present in every channel; None when there are none."""
    zero = out == 0
    assert (zero == zero[0]).all(), "the zeros differ between channels"
    rows = np.flatnonzero(zero[0].any(1).numpy())
    cols = np.flatnonzero(zero[0].any(0).numpy())
    if len(rows) == 0:
        return None
    box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
    assert zero[0][box].all() and int(zero[0].sum()) == zero[0][box].numel(), "the zeros are not one rectangle"
    return box


def fill_box(view: torch.Tensor) -> tuple[slice, slice] | None:
    """The rows and columns where every channel of a uint8 view holds the mean's levels (Cutout's square)."""
    return zero_box((view != FILL).any(0, keepdim=True).to(torch.uint8))


class FixedDraws:
    """Stands in for torch.randint: returns the given values in order and records the bounds asked for."""

    def __init__(self, *values: int):
        self.values, self.bounds = list(values), []

    def __call__(self, high, size, *args, **kwargs):
        self.bounds.append(high)
        return torch.tensor(self.values.pop(0))


@pytest.mark.parametrize("centre, rows, cols", [
    ((10, 20), (6, 14), (16, 24)),   # inside: an 8 x 8 square, rows cy-4..cy+3
    ((1, 38), (0, 5), (34, 40)),     # clipped at the top and the right border
    ((0, 0), (0, 4), (0, 4)),        # the corner: a quarter of the square
    ((19, 3), (15, 20), (0, 7)),     # clipped at the bottom and the left border
])
def test_cutout_zeroes_the_square_around_the_drawn_centre(monkeypatch, centre, rows, cols):
    draws = FixedDraws(*centre)
    monkeypatch.setattr(torch, "randint", draws)
    img = torch.arange(1, 3 * 20 * 40 + 1, dtype=torch.float32).reshape(3, 20, 40)  # no zeros anywhere
    out = Cutout(8)(img)
    assert draws.bounds == [20, 40]  # the centre row is drawn in [0, H), the column in [0, W)
    expected = img.clone()
    expected[:, rows[0]:rows[1], cols[0]:cols[1]] = 0
    assert torch.equal(out, expected)
    assert zero_box(out) == (slice(*rows), slice(*cols))


def test_cutout_leaves_its_input_untouched():
    img = torch.ones(3, 16, 16)
    torch.manual_seed(0)
    out = Cutout(8)(img)
    assert torch.equal(img, torch.ones(3, 16, 16))
    assert (out == 0).any()


def test_cutout_at_random_centres_is_one_square_of_the_side_clipped_at_the_border():
    img = torch.arange(1, 3 * 24 * 30 + 1, dtype=torch.float32).reshape(3, 24, 30)
    side, clipped, whole = 10, 0, 0
    for seed in range(60):
        torch.manual_seed(seed)
        out = Cutout(side)(img)
        rows, cols = zero_box(out)
        for span, extent in ((rows, 24), (cols, 30)):
            length = span.stop - span.start
            if span.start > 0 and span.stop < extent:
                assert length == side  # away from the border: the full side
            else:
                assert side // 2 <= length <= side  # at the border: cut, never more than the side
        if (rows.stop - rows.start, cols.stop - cols.start) == (side, side):
            whole += 1
        else:
            clipped += 1
        keep = out != 0
        assert torch.equal(out[keep], img[keep])  # everything outside the square is unchanged
    assert whole > 0 and clipped > 0


def test_strong_view_cutout_square_is_the_mean():
    """A constant image: without RandAugment ops the strong view is the colour everywhere except a
    square of the dataset mean's levels, 16 px for 32 px images; normalised, the square is within
    0.5/255 of zero before the division by std (the reference's square is exactly zero)."""
    views = build_views(32, MEAN, randaugment_ops=0)
    img = Image.new("RGB", (32, 32), COLOUR)
    value = normalised(COLOUR).expand(3, 32, 32)
    sides = set()
    for seed in range(20):
        torch.manual_seed(seed)
        view = views["strong"](img)
        assert view.dtype == torch.uint8
        rows, cols = fill_box(view)
        out = normalize(view)
        assert (out[:, rows, cols].abs() <= 0.5 / 255 / torch.tensor(STD)[:, None, None] + 1e-6).all()
        h, w = rows.stop - rows.start, cols.stop - cols.start
        assert 8 <= h <= 16 and 8 <= w <= 16
        sides.add((h, w))
        keep = torch.ones(32, 32, dtype=torch.bool)
        keep[rows, cols] = False
        assert torch.allclose(out[:, keep], value[:, keep], atol=1e-6)
    assert (16, 16) in sides


def test_weak_view_of_a_constant_image_is_constant_without_a_square():
    views = build_views(32, MEAN)
    img = Image.new("RGB", (32, 32), COLOUR)
    for seed in range(5):
        torch.manual_seed(seed)
        out = normalize(views["weak"](img))
        assert torch.allclose(out, normalised(COLOUR).expand(3, 32, 32), atol=1e-6)


def test_test_view_is_plain_normalisation_and_deterministic():
    img = random_image(32, seed=1)
    expected = (torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
                - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    test = build_views(32, MEAN)["test"]
    torch.manual_seed(0)
    a = normalize(test(img))
    torch.manual_seed(1)
    b = normalize(test(img))
    assert torch.allclose(a, expected, atol=1e-6) and torch.equal(a, b)


def test_weak_view_is_a_reflect_padded_crop_of_the_image_maybe_flipped():
    img = random_image(32, seed=2)
    pixels = np.asarray(img).astype(np.float32)
    padded = np.pad(pixels, ((4, 4), (4, 4), (0, 0)), mode="reflect")
    weak = build_views(32, MEAN)["weak"]
    found = set()
    for seed in range(30):
        torch.manual_seed(seed)
        back = weak(img).permute(1, 2, 0).numpy().astype(np.float32)
        matches = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)
                   if np.allclose((lambda c: c[:, ::-1] if flip else c)(padded[dy:dy + 32, dx:dx + 32]), back, atol=1e-3)]
        assert len(matches) == 1, seed
        found.add(matches[0])
    flips = {f for _, _, f in found}
    assert flips == {False, True} and len({(dy, dx) for dy, dx, _ in found}) > 5


def test_multiview_gives_the_weak_and_two_different_strong_views_reproducibly():
    views = build_views(32, MEAN)
    three = MultiView(views["weak"], views["strong"], views["strong"])
    img = random_image(32, seed=3)
    torch.manual_seed(7)
    first = three(img)
    torch.manual_seed(7)
    again = three(img)
    assert isinstance(first, tuple) and len(first) == 3
    for view, same in zip(first, again):
        assert view.shape == (3, 32, 32) and view.dtype == torch.uint8
        assert torch.equal(view, same)
    weak, strong1, strong2 = first
    assert not torch.equal(weak, strong1) and not torch.equal(weak, strong2) and not torch.equal(strong1, strong2)
    assert fill_box(weak) is None  # the weak view has no Cutout square
    for strong in (strong1, strong2):
        rows, cols = fill_box(strong)
        assert (rows.stop - rows.start) * (cols.stop - cols.start) >= 8 * 8


def test_cutout_is_on_by_default_for_small_images_only_and_can_be_switched():
    def cutouts(**kwargs):
        return [t.size for t in build_views(**kwargs)["strong"].transforms if isinstance(t, Cutout)]

    assert cutouts(image_size=32, mean=MEAN) == [16]
    assert cutouts(image_size=64, mean=MEAN) == [32]
    assert cutouts(image_size=224, mean=MEAN) == []
    assert cutouts(image_size=224, mean=MEAN, cutout=True) == [112]
    assert cutouts(image_size=32, mean=MEAN, cutout=False) == []
    for name in ("weak", "test"):
        assert not any(isinstance(t, Cutout) for t in build_views(32, MEAN)[name].transforms)


@pytest.mark.parametrize("size, resize", [(32, True), (224, False)])
def test_unlabeled_views_resize_once_and_equal_the_separate_views(monkeypatch, size, resize):
    """views["unlabeled"] gives (weak, strong, strong) of one image, as the three transforms do one
    after another from the same seed, with the (deterministic) resize done once."""
    views = build_views(size, MEAN, resize=resize)
    img = random_image(300 if size == 224 else 40, seed=4)
    torch.manual_seed(5)
    separate = (views["weak"](img), views["strong"](img), views["strong"](img))
    resizes = []
    original = Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize", lambda self, *a, **k: resizes.append(1) or original(self, *a, **k))
    torch.manual_seed(5)
    shared = views["unlabeled"](img)
    assert len(resizes) == 1
    assert all(torch.equal(a, b) for a, b in zip(separate, shared))


def test_device_normalize_matches_torchvision_to_the_bit_and_passes_floats_through():
    from torchvision.transforms import v2
    batch = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    expected = v2.Normalize(MEAN, STD)(v2.ToDtype(torch.float32, scale=True)(batch))
    assert torch.equal(normalize(batch), expected)
    assert torch.equal(normalize(expected), expected)  # float input: already a model's input
    last = DeviceNormalize(MEAN, STD, channels_last=True)(batch)
    assert last.is_contiguous(memory_format=torch.channels_last) and torch.equal(last, expected)
