"""Readers for the user's own dataset copies. Each returns images (a uint8 N x 3 x H x W tensor or
a list of file paths), integer targets, and the same for the test set. Nothing is downloaded."""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


class DataNotFound(FileNotFoundError):
    """A dataset's files are missing; the message says where they were looked for and how to get them."""


@dataclass
class ImagePool:
    """Images of one set: `images` is a uint8 tensor (N, 3, H, W) or a list of file paths."""

    images: torch.Tensor | list[str]
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)


def _require(path: Path, hint: str) -> Path:
    if not path.exists():
        raise DataNotFound(f"{path} not found: {hint}")
    return path


# --- Fashion-MNIST (IDX files, Debian's dataset-fashion-mnist) -------------------------------------

def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): the MNIST family's format."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4: 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: truncated IDX file ({body.size} bytes for shape {shape})")
    return body.reshape(shape)


def _fmnist_images(raw: np.ndarray) -> torch.Tensor:
    """28x28 gray -> 3x32x32 (zero-padded by 2, gray repeated): the CIFAR pipeline runs unchanged."""
    x = torch.from_numpy(np.pad(raw, ((0, 0), (2, 2), (2, 2))))
    return x.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def load_fashion_mnist(root: str) -> tuple[ImagePool, ImagePool]:
    base = Path(root)
    hint = ("install Debian's package dataset-fashion-mnist (apt-get install dataset-fashion-mnist) "
            "or set dataset.root to a folder with the four IDX files")
    pools = []
    for prefix in ("train", "t10k"):
        x = read_idx(_require(base / f"{prefix}-images-idx3-ubyte.gz", hint))
        y = read_idx(_require(base / f"{prefix}-labels-idx1-ubyte.gz", hint)).astype(np.int64)
        pools.append(ImagePool(_fmnist_images(x), y))
    return pools[0], pools[1]


# --- CIFAR-10/100 (torchvision's folder layout) ----------------------------------------------------

CIFAR_FILES = {10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
               100: ("cifar-100-python", ["train"], ["test"], "fine_labels")}


def _read_cifar_batches(folder: Path, names: list[str], label_key: str) -> ImagePool:
    images, targets = [], []
    for name in names:
        with open(_require(folder / name, "expected the CIFAR python version (torchvision's layout)"), "rb") as f:
            # the CIFAR python release is pickled; this is the user's own copy on local disk
            batch = pickle.load(f, encoding="latin1")
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        targets.append(np.asarray(batch[label_key], dtype=np.int64))
    return ImagePool(torch.from_numpy(np.concatenate(images)), np.concatenate(targets))


def load_cifar(root: str, num_classes: int, download: bool = False) -> tuple[ImagePool, ImagePool]:
    """CIFAR-10/100 in torchvision's folder layout (<root>/cifar-10-batches-py or cifar-100-python)."""
    base_folder, train_names, test_names, label_key = CIFAR_FILES[num_classes]
    folder = Path(root) / base_folder
    if not folder.exists():
        if not download:
            raise DataNotFound(f"{folder} not found: point dataset.root at the folder holding {base_folder}/ "
                               f"(torchvision's layout), or set dataset.download=true where the network allows")
        from torchvision.datasets import CIFAR10, CIFAR100

        (CIFAR10 if num_classes == 10 else CIFAR100)(root, train=True, download=True)
    return (_read_cifar_batches(folder, train_names, label_key), _read_cifar_batches(folder, test_names, label_key))


# --- image folders: root/train/<class>/*, root/test/<class>/* --------------------------------------

def list_image_folder(folder: Path, classes: list[str] | None = None) -> tuple[list[str], np.ndarray, list[str]]:
    _require(folder, "expected <root>/train/<class>/<image> and <root>/test/<class>/<image>")
    if classes is None:
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    paths, targets = [], []
    for c, name in enumerate(classes):
        files = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) \
            if (folder / name).is_dir() else []
        paths += [str(p) for p in files]
        targets += [c] * len(files)
    if not paths:
        raise DataNotFound(f"{folder} holds no images in class sub-folders")
    return paths, np.asarray(targets, dtype=np.int64), classes


def load_image_folder(root: str) -> tuple[ImagePool, ImagePool, list[str]]:
    base = Path(root)
    train_paths, train_y, classes = list_image_folder(base / "train")
    test_paths, test_y, _ = list_image_folder(base / "test", classes)
    return ImagePool(train_paths, train_y), ImagePool(test_paths, test_y), classes


# --- ImageNet-LT: image root + list files of "relative/path label" lines ---------------------------

def read_image_list(list_file: Path, image_root: Path) -> ImagePool:
    paths, targets = [], []
    with open(_require(list_file, "ImageNet-LT list files (ImageNet_LT_train.txt, ImageNet_LT_test.txt) "
                                  "go in dataset.list_dir"), encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise ValueError(f"{list_file}:{n}: expected 'relative/path label', got {line.strip()!r}")
            paths.append(str(image_root / parts[0]))
            targets.append(int(parts[1]))
    return ImagePool(paths, np.asarray(targets, dtype=np.int64))


def load_imagenet_lt(root: str, list_dir: str | None, train_list: str, test_list: str) -> tuple[ImagePool, ImagePool]:
    lists = Path(list_dir or root)
    return read_image_list(lists / train_list, Path(root)), read_image_list(lists / test_list, Path(root))


# --- Small-ImageNet-127 (CoSSL's format: pickled batches of flattened CHW uint8 rows) --------------

def _load_batch(path: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        # CoSSL distributes this dataset as pickles; it is the user's own copy on local disk,
        # never a stream shard (shards are never unpickled)
        batch = pickle.load(f, encoding="latin1")
    x = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, size, size)
    y = np.asarray(batch["labels"], dtype=np.int64) - 1  # stored 1-based
    return x, y


def load_small_imagenet127(root: str, image_size: int) -> tuple[ImagePool, ImagePool]:
    base = Path(root)
    hint = f"expected CoSSL's Small-ImageNet-127 ({image_size} px): train_data_batch_1..10 and val_data"
    train_files = sorted(base.glob("train_data_batch_*"), key=lambda p: int(p.name.rsplit("_", 1)[1]))
    if not train_files:
        raise DataNotFound(f"{base}/train_data_batch_* not found: {hint}")
    parts = [_load_batch(p, image_size) for p in train_files]
    test_x, test_y = _load_batch(_require(base / "val_data", hint), image_size)
    train = ImagePool(torch.from_numpy(np.concatenate([p[0] for p in parts])), np.concatenate([p[1] for p in parts]))
    return train, ImagePool(torch.from_numpy(test_x), test_y)
