"""dataset.augment_on=device: the strong views' RandAugment and Cutout on batches, per image, against the
CPU path they replace: each op against its PIL counterpart, the draws' distribution, the loss in
expectation, and an exact resume."""

import collections

import numpy as np
import pytest
import torch
from matplotlib import cbook
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from bmb_stream.algorithms import Batch
from bmb_stream.datasets import randaugment as reference
from bmb_stream.datasets.device_augment import REFERENCE_TENSOR_OPS, StrongAugment
from bmb_stream.datasets.transforms import build_views, device_strong_augment
from bmb_stream.engine import checkpoint
from bmb_stream.engine.learner import Learner
from tests.test_learner import LABELED, tiny_cfg

MEAN = [0.49, 0.48, 0.45]


def photos(n: int, size: tuple[int, int], seed: int = 0) -> list[Image.Image]:
    """Crops of a real photograph (matplotlib's sample), resized to size (w, h)."""
    photo = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        side = int(rng.integers(120, 400))
        x, y = int(rng.integers(photo.width - side)), int(rng.integers(photo.height - side))
        out.append(photo.crop((x, y, x + side, y + side)).resize(size, Image.Resampling.BILINEAR))
    return out


def as_batch(images: list[Image.Image]) -> torch.Tensor:
    return torch.stack([F.pil_to_tensor(img) for img in images])


GEOMETRIC = {"Rotate", "ShearX", "ShearY", "TranslateXabs", "TranslateYabs", "TranslateX", "TranslateY"}


def differs(ours: torch.Tensor, pil: torch.Tensor, name: str) -> float:
    """Geometric ops: the fraction of pixels that differ (nearest sampling at a rounding tie may take the
    neighbour); the others: the largest difference in levels."""
    if name in GEOMETRIC:
        return float((ours != pil).any(dim=-3).float().mean())
    return float((ours.int() - pil.int()).abs().max())


@pytest.mark.parametrize("op", reference.REFERENCE_OPS, ids=lambda op: op.name)
def test_each_reference_op_matches_its_pil_counterpart(op):
    """On 8 photo crops of 32x32 and of 48x40, both signs: geometric ops differ on at most 0.5% of
    pixels, the others by at most 1 level."""
    v = op.value(4)
    for size in ((32, 32), (48, 40)):
        images = photos(8, size)
        for value in ((v, -v) if op.signed else (v,)):
            if op.name == "CutoutAbs":
                centres = torch.tensor([[5.0, 9.5], [30.2, 2.0]] * 4, dtype=torch.float64)
                pil = as_batch([reference.cutout_at(img, value, *c.tolist()) for img, c in zip(images, centres)])
                ours = REFERENCE_TENSOR_OPS["CutoutAbs"](as_batch(images), value, centres)
            else:
                pil = as_batch([op.fn(img, value) for img in images])
                ours = REFERENCE_TENSOR_OPS[op.name](as_batch(images), value)
            assert differs(ours, pil, op.name) <= (0.005 if op.name in GEOMETRIC else 1), (op.name, value, size)


TORCHVISION_OPS = list(v2.RandAugment._AUGMENTATION_SPACE)


@pytest.mark.parametrize("name", TORCHVISION_OPS)
def test_each_torchvision_op_on_a_batch_matches_it_on_pil_images(name):
    """torchvision's tensor kernel on a batch against its PIL kernel on each image (the CPU path): at most
    2% of the values differ by more than 2 levels. Both kernels are torchvision's own; they part on
    ties: a shear's nearest pixel (1.5% of pixels), Solarize's threshold (221.0: one level of 256)."""
    augment = StrongAugment("torchvision")
    images = photos(8, (32, 32))
    v, signed = augment.value(name, 32, 32)
    for value in ((v, -v) if signed else (v,)):
        ours = augment.apply(as_batch(images), name, value, centres=None)
        ra = augment.torchvision
        pil = as_batch([ra._apply_image_or_video_transform(img, name, value, ra.interpolation, ra._fill)
                        for img in images])
        assert float(((ours.int() - pil.int()).abs() > 2).float().mean()) <= 0.02, (name, value)


def cpu_path_draws(kind: str, n: int, monkeypatch) -> collections.Counter:
    """(op, value) of every op the CPU path's strong view applies to n images."""
    seen = collections.Counter()
    if kind == "torchvision":
        apply = v2.RandAugment._apply_image_or_video_transform

        def record(self, image, name, magnitude, *a, **k):
            seen[(name, round(float(magnitude), 4))] += 1
            return apply(self, image, name, magnitude, *a, **k)
        monkeypatch.setattr(v2.RandAugment, "_apply_image_or_video_transform", record)
    else:
        def recording(op):
            def fn(img, value):
                seen[(op.name, round(float(value), 4))] += 1
                return op.fn(img, value)
            return reference.Op(op.name, fn, op.low, op.high, op.signed)
        monkeypatch.setattr(reference, "REFERENCE_OPS", tuple(recording(op) for op in reference.REFERENCE_OPS))
    strong = build_views(32, MEAN, randaugment=kind)["strong"]
    img = photos(1, (32, 32))[0]
    for _ in range(n):
        strong(img)
    return seen


def device_path_draws(kind: str, n: int) -> collections.Counter:
    augment = device_strong_augment(32, MEAN, kind)
    seen = collections.Counter()
    apply = augment.apply

    def record(x, name, value, centres):
        seen[(name, round(float(value), 4))] += len(x)
        return apply(x, name, value, centres)
    augment.apply = record
    augment(as_batch(photos(1, (32, 32))).expand(n, -1, -1, -1).contiguous())
    return seen


@pytest.mark.parametrize("kind", ["torchvision", "reference"])
def test_per_image_draws_follow_the_cpu_paths_distribution(kind, monkeypatch):
    """Over 3 x 2,000 ops: the same (op, value) pairs, with frequencies within 1.5 points of the CPU
    path's (each frequency's standard error is about 0.4 points)."""
    torch.manual_seed(0)
    device = device_path_draws(kind, 2000)  # first: the CPU path's recorder patches the class both use
    cpu = cpu_path_draws(kind, 2000, monkeypatch)
    assert set(cpu) == set(device)
    total_cpu, total_device = sum(cpu.values()), sum(device.values())
    assert total_cpu == total_device == 6000
    for key in cpu:
        assert abs(cpu[key] / total_cpu - device[key] / total_device) < 0.015, key


def test_each_image_of_a_batch_draws_its_own_ops():
    torch.manual_seed(0)
    x = as_batch(photos(1, (32, 32))).expand(64, -1, -1, -1).contiguous()
    out = device_strong_augment(32, MEAN, "torchvision")(x)
    assert len({bytes(img.numpy()) for img in out}) >= 60


def test_the_cutout_covers_the_square_it_drew_with_the_mean():
    augment = device_strong_augment(32, MEAN, "torchvision", randaugment_ops=0)
    x = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    out = augment.cutout(x, torch.tensor([[0.5, 0.5], [0.0, 31 / 32]], dtype=torch.float64))
    fill = torch.tensor([round(255 * m) for m in MEAN], dtype=torch.uint8)
    assert (out[0, :, 8:24, 8:24] == fill[:, None, None]).all() and int((out[0, 0] > 0).sum()) == 16 * 16
    assert int((out[1, 0] > 0).sum()) == 8 * 9  # centre (0, 31): clipped to rows 0..7, columns 23..31


def test_device_views_are_cropped_uint8_tensors_and_the_strong_ones_stop_there():
    views = build_views(224, MEAN, augment_on="device")
    img = photos(1, (500, 375))[0]
    weak, strong1, strong2 = views["unlabeled"](img)
    assert weak.dtype == strong1.dtype == torch.uint8 and weak.shape == strong2.shape == (3, 224, 224)
    assert views["unlabeled"].decode_shorter_side == views["weak"].decode_shorter_side == 256
    assert all(not isinstance(t, (v2.RandAugment, reference.ReferenceRandAugment))
               for t in views["strong"].transforms)


def strong_loss(model, weak: torch.Tensor, strong: torch.Tensor, normalise) -> torch.Tensor:
    """FixMatch's unlabeled loss without its threshold: cross-entropy of the strong view's logits against
    the weak view's prediction, per image."""
    with torch.no_grad():
        target = model(normalise(weak)).argmax(1)
        return torch.nn.functional.cross_entropy(model(normalise(strong)), target, reduction="none")


@pytest.mark.parametrize("kind", ["torchvision", "reference"])
def test_the_unlabeled_loss_is_the_same_in_expectation_on_both_paths(kind):
    """A fixed random CNN and 64 fixed images; 12 draws of the views on each path. The mean loss of the
    device path is within 4 standard errors of the CPU path's (the reference's RandAugment comes after
    the crop on the device: that difference of order is inside this bound)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(4),
                                torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10)).eval()
    images = photos(64, (32, 32), seed=1)
    normalise = lambda x: (x.float() / 255 - 0.5) / 0.25  # noqa: E731
    cpu_views = build_views(32, MEAN, randaugment=kind)["unlabeled"]
    device_views = build_views(32, MEAN, randaugment=kind, augment_on="device")["unlabeled"]
    augment = device_strong_augment(32, MEAN, kind)
    losses = {"cpu": [], "device": []}
    for _ in range(12):
        w, s, _ = (torch.stack(v) for v in zip(*[cpu_views(img) for img in images]))
        losses["cpu"].append(strong_loss(model, w, s, normalise))
        w, s, _ = (torch.stack(v) for v in zip(*[device_views(img) for img in images]))
        losses["device"].append(strong_loss(model, w, augment(s), normalise))
    cpu, device = (torch.cat(v) for v in losses.values())
    se = (cpu.var() / len(cpu) + device.var() / len(device)).sqrt()
    assert abs(float(cpu.mean() - device.mean())) < 4 * float(se), (float(cpu.mean()), float(device.mean()), float(se))


def uint8_batch(seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    images = lambda: torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=g)  # noqa: E731
    return Batch(images(), torch.randint(0, 10, (4,), generator=g), images(), images(), images())


def test_a_resumed_learner_draws_the_same_device_augmentations(tmp_path):
    """The draws come from the global generator, which the checkpoint holds: a learner loaded from a
    checkpoint goes on with the same losses as the one that wrote it; one whose generator is then
    reseeded does not (the strong views, and so loss_u, change)."""
    def learner():
        return Learner(tiny_cfg("dataset.augment_on=device"), 10, LABELED, torch.device("cpu"))

    def go_on(learner):
        return [{k: float(v) for k, v in learner.train_step(uint8_batch(s)).items()} for s in range(4, 7)]

    torch.manual_seed(0)
    a = learner()
    for s in range(4):
        a.train_step(uint8_batch(s))
    checkpoint.save_atomic({"learner": a.state_dict()}, tmp_path / "last.pt")
    written = go_on(a)
    b, c = learner(), learner()
    b.load_state_dict(checkpoint.load_checkpoint(tmp_path / "last.pt")["learner"])
    assert go_on(b) == written
    c.load_state_dict(checkpoint.load_checkpoint(tmp_path / "last.pt")["learner"])
    torch.manual_seed(7)
    assert [t["loss_u"] for t in go_on(c)] != [t["loss_u"] for t in written]


def test_a_small_images_weak_view_is_the_same_on_both_paths():
    """32 px: the device path only moves the tensor conversion before the crop and flip; under one seed
    the weak view is the same, pixel for pixel."""
    img = photos(1, (32, 32))[0]
    cpu, device = (build_views(32, MEAN, augment_on=place)["unlabeled"] for place in ("loader", "device"))
    for seed in range(5):
        torch.manual_seed(seed)
        a = cpu(img)[0]
        torch.manual_seed(seed)
        b = device(img)[0]
        assert torch.equal(a, b)


def test_the_labeled_loss_of_large_images_is_the_same_in_expectation_on_both_paths():
    """224 px: the device path resizes with torch's uint8 kernel instead of PIL's. Over 8 draws of the weak
    view of 16 photo-like images, a fixed random CNN's cross-entropy on the true class has the same mean
    on both paths within 4 standard errors."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 7, stride=4), torch.nn.ReLU(), torch.nn.MaxPool2d(4),
                                torch.nn.Conv2d(8, 16, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(16, 10)).eval()
    images = photos(16, (500, 375), seed=2)
    labels = torch.arange(16) % 10
    losses = {}
    for place in ("loader", "device"):
        weak = build_views(224, MEAN, augment_on=place)["weak"]
        draws = []
        for _ in range(8):
            x = torch.stack([weak(img) for img in images]).float() / 255
            with torch.no_grad():
                draws.append(torch.nn.functional.cross_entropy(model(x), labels, reduction="none"))
        losses[place] = torch.cat(draws)
    cpu, device = losses["loader"], losses["device"]
    se = (cpu.var() / len(cpu) + device.var() / len(device)).sqrt()
    assert abs(float(cpu.mean() - device.mean())) < 4 * float(se)
