"""From a dataset config to the three sets training uses: labeled, unlabeled (with the labeled
images, as every reference protocol has it) and test, plus the per-class counts of each."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset
from PIL import Image

from bmb_stream.data import sources
from bmb_stream.data.splits import class_histogram, split_by_counts, split_by_ratio
from bmb_stream.data.transforms import MultiView, build_views


class ImageSubset(Dataset):
    """Items `(transform(image), target)` for the chosen indices of an image pool."""

    def __init__(self, pool: sources.ImagePool, indices: np.ndarray, transform: Callable):
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
        path = self.pool.images[j]
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except OSError as e:  # PIL's UnidentifiedImageError and truncated files are OSErrors
            raise ValueError(f"cannot decode image {path}: {e}") from e

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


def load_pools(cfg) -> tuple[sources.ImagePool, sources.ImagePool, list[str]]:
    """The train and test pools of the dataset named by `cfg`, and its class names (may be empty)."""
    kind = cfg.source
    if kind == "fashion_mnist":
        train, test = sources.load_fashion_mnist(cfg.root)
        names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    elif kind in ("cifar10", "cifar100"):
        train, test = sources.load_cifar(cfg.root, cfg.num_classes, download=bool(cfg.get("download", False)))
        names = []
    elif kind == "imagefolder":
        train, test, names = sources.load_image_folder(cfg.root)
    elif kind == "imagenet_lt":
        train, test = sources.load_imagenet_lt(cfg.root, cfg.get("list_dir"), cfg.train_list, cfg.test_list)
        names = []
    elif kind == "small_imagenet127":
        train, test = sources.load_small_imagenet127(cfg.root, cfg.image_size)
        names = []
    else:
        raise ValueError(f"unknown dataset source {kind!r}")
    return train, test, names


def split_indices(cfg, train_targets: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the labeled and unlabeled sets in the train pool, by the config's protocol."""
    num_classes = int(cfg.num_classes)
    shuffle_seed = seed if cfg.get("split_shuffle", True) else None
    if cfg.get("labeled_ratio") is not None:
        return split_by_ratio(train_targets, num_classes, float(cfg.labeled_ratio),
                              cfg.get("ratio_rounding", "ceil"), shuffle_seed)
    return split_by_counts(train_targets, num_classes, int(cfg.n1), int(cfg.m1),
                           float(cfg.gamma_l), float(cfg.gamma_u), shuffle_seed)


def check_labels(train: sources.ImagePool, test: sources.ImagePool, num_classes: int) -> None:
    top = max(int(train.targets.max()) if len(train) else -1, int(test.targets.max()) if len(test) else -1)
    if top >= num_classes or min(train.targets.min(initial=0), test.targets.min(initial=0)) < 0:
        raise ValueError(f"dataset.num_classes={num_classes} but the data has labels up to {top}")


def build_split(cfg, seed: int = 0) -> SplitData:
    """Load the dataset named by `cfg` (the `dataset` config group) and cut its long-tailed split."""
    train, test, names = load_pools(cfg)
    num_classes = int(cfg.num_classes)
    check_labels(train, test, num_classes)
    labeled_idx, unlabeled_idx = split_indices(cfg, train.targets, seed)
    views = build_views(int(cfg.image_size), cfg.mean, cfg.std, resize=isinstance(train.images, list))
    unlabeled_views = MultiView(views["weak"], views["strong"], views["strong"])
    return SplitData(
        labeled=ImageSubset(train, labeled_idx, views["weak"]),
        unlabeled=ImageSubset(train, unlabeled_idx, unlabeled_views),
        test=ImageSubset(test, np.arange(len(test)), views["test"]),
        num_classes=num_classes,
        class_names=list(names) or [str(c) for c in range(num_classes)],
    )
