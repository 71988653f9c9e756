"""From a dataset config to the three sets training uses: labeled, unlabeled (with the labeled
images, as every reference protocol has it) and test, plus the per-class counts of each."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from bmb_stream.config_schema import Dataset as DatasetConfig
from bmb_stream.datasets import sources
from bmb_stream.datasets.sources import ImagePool
from bmb_stream.datasets.splits import class_histogram, split_by_counts, split_by_ratio
from bmb_stream.datasets.transforms import build_views
from bmb_stream.errors import BadData

FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot"]


class ImageSubset(Dataset):
    """Items `(transform(image), target)` for the chosen indices of an image pool."""

    def __init__(self, pool: ImagePool, indices: np.ndarray, transform: Callable):
        self.pool = pool
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform
        self.targets = pool.targets[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def image(self, i: int) -> Image.Image:
        j = int(self.indices[i])
        if isinstance(self.pool.images, torch.Tensor):
            return Image.fromarray(self.pool.images[j].permute(1, 2, 0).numpy())
        return sources.open_image(self.pool.images[j], getattr(self.transform, "decode_shorter_side", None))

    def __getitem__(self, i: int):
        return self.transform(self.image(i)), int(self.targets[i])


@dataclass
class SplitData:
    labeled: ImageSubset
    unlabeled: ImageSubset
    test: ImageSubset
    num_classes: int
    class_names: list[str] = field(default_factory=list)

    @property
    def labeled_per_class(self) -> list[int]:
        return class_histogram(self.labeled.targets, self.num_classes)

    @property
    def unlabeled_per_class(self) -> list[int]:
        return class_histogram(self.unlabeled.targets, self.num_classes)

    @property
    def test_per_class(self) -> list[int]:
        return class_histogram(self.test.targets, self.num_classes)


@dataclass
class SplitIndices:
    """The pools of a dataset and where its split lies in the train pool (shards, streams and training
    all start here)."""

    train: ImagePool
    test: ImagePool
    class_names: list[str]
    labeled: np.ndarray
    unlabeled: np.ndarray

    def check_images(self, progress: bool | None = None) -> None:
        """Every image file the split uses opens, or this stops naming the first bad one."""
        sources.check_image_files(self.train, np.union1d(self.labeled, self.unlabeled), progress)
        sources.check_image_files(self.test, progress=progress)


SOURCES = ("fashion_mnist", "cifar10", "cifar100", "imagefolder", "imagenet_lt", "small_imagenet127")


def load_pools(cfg: DatasetConfig) -> tuple[ImagePool, ImagePool, list[str]]:
    """The train and test pools of the dataset named by `cfg`, and its class names (may be empty)."""
    kind = cfg.source
    names = []
    if kind == "fashion_mnist":
        train, test = sources.load_fashion_mnist(cfg.root)
        names = FMNIST_CLASSES
    elif kind in ("cifar10", "cifar100"):
        train, test = sources.load_cifar(cfg.root, 10 if kind == "cifar10" else 100,  # the source, not the key
                                         download=cfg.download)
    elif kind == "imagefolder":
        train, test, names = sources.load_image_folder(cfg.root)
        if len(names) != cfg.num_classes:
            raise BadData(f"dataset.num_classes={cfg.num_classes} but {train.source} has {len(names)} class folders "
                          f"({', '.join(names[:10])}{', ...' if len(names) > 10 else ''}): "
                          f"set dataset.num_classes={len(names)}")
    elif kind == "imagenet_lt":
        train, test = sources.load_imagenet_lt(cfg.root, cfg.list_dir, cfg.train_list, cfg.test_list)
    elif kind == "small_imagenet127":
        train, test = sources.load_small_imagenet127(cfg.root, cfg.image_size)
    else:
        raise BadData(f"dataset.source={kind!r} is unknown: accepted {', '.join(SOURCES)}")
    return train, test, names


def split_indices(cfg: DatasetConfig, train_targets: np.ndarray, seed: int = 0,
                  class_names: list[str] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the labeled and unlabeled sets in the train pool, by the config's protocol."""
    num_classes = cfg.num_classes
    shuffle_seed = seed if cfg.split_shuffle else None
    if cfg.labeled_ratio is not None:
        return split_by_ratio(train_targets, num_classes, cfg.labeled_ratio, cfg.ratio_rounding, shuffle_seed)
    return split_by_counts(train_targets, num_classes, cfg.n1, cfg.m1, cfg.gamma_l, cfg.gamma_u, shuffle_seed,
                           class_names)


def check_labels(train: ImagePool, test: ImagePool, num_classes: int) -> None:
    """Every label in 0..num_classes-1; the first one outside is named with its file."""
    for pool in (train, test):
        outside = np.flatnonzero((pool.targets < 0) | (pool.targets >= num_classes))
        if len(outside):
            i = int(outside[0])
            image = f" (image {pool.images[i]})" if isinstance(pool.images, list) else f" (sample {i})"
            more = f" (and {len(outside) - 1} more)" if len(outside) > 1 else ""
            raise BadData(f"{pool.source}: label {int(pool.targets[i])}{image} is outside 0..{num_classes - 1}"
                          f"{more}: fix the labels, or set dataset.num_classes")


def _classes(classes, names: list[str], limit: int = 10) -> str:
    shown = [f"{c} ({names[c]})" if c < len(names) else str(c) for c in classes[:limit]]
    return ", ".join(shown) + (f", ... ({len(classes)} classes)" if len(classes) > limit else "")


def warn_missing_classes(split: SplitIndices, num_classes: int) -> None:
    """A class absent from the labeled or the test set is legal but rarely meant: say so on stderr."""
    advice = {"labeled set": "training sees no label of it (raise dataset.n1 or lower dataset.gamma_l)",
              "test set": "balanced accuracy averages over the other classes (add test images)"}
    for what, targets in (("labeled set", split.train.targets[split.labeled]), ("test set", split.test.targets)):
        missing = [c for c, n in enumerate(class_histogram(targets, num_classes)) if n == 0]
        if missing:
            print(f"bmb-stream: warning: the {what} has no image of class{'es' * (len(missing) > 1)} "
                  f"{_classes(missing, split.class_names)}: {advice[what]}", file=sys.stderr)


def load_split(cfg: DatasetConfig, seed: int = 0) -> SplitIndices:
    """The dataset named by `cfg` with its split: labels checked, missing classes warned about."""
    train, test, names = load_pools(cfg)
    num_classes = cfg.num_classes
    check_labels(train, test, num_classes)
    labeled, unlabeled = split_indices(cfg, train.targets, seed, names)
    split = SplitIndices(train, test, list(names), labeled, unlabeled)
    warn_missing_classes(split, num_classes)
    return split


def build_split(cfg: DatasetConfig, seed: int = 0, check_images: bool = True,
                progress: bool | None = None) -> SplitData:
    """Load the dataset named by `cfg` (the `dataset` config group) and cut its long-tailed split; every
    image file the split uses is checked first (`check_images`), so a bad one stops the run before training."""
    s = load_split(cfg, seed)
    if check_images:
        s.check_images(progress)
    num_classes = cfg.num_classes
    views = build_views(cfg.image_size, cfg.mean, resize=isinstance(s.train.images, list),
                        randaugment=cfg.randaugment, augment_on=cfg.augment_on)
    return SplitData(
        labeled=ImageSubset(s.train, s.labeled, views["weak"]),
        unlabeled=ImageSubset(s.train, s.unlabeled, views["unlabeled"]),
        test=ImageSubset(s.test, np.arange(len(s.test)), views["test"]),
        num_classes=num_classes,
        class_names=s.class_names or [str(c) for c in range(num_classes)],
    )
