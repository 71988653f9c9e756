"""Readers for the user's own dataset copies. Each returns images (a uint8 N x 3 x H x W tensor or
a list of file paths), integer targets, and the same for the test set. Nothing is downloaded.

Every problem with the user's files ends in one line that names the file and what to do:
`DataNotFound` for a missing file, `BadData` for one that is there but unusable."""

from __future__ import annotations

import gzip
import os
import pickle
import re
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from bmb_stream.datasets.images import IMAGE_FORMATS, decode_rgb, why
from bmb_stream.errors import BadData, DataNotFound, UnusableImage, one_line

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
FOLDER_LAYOUT = "expected <root>/train/<class>/<image> and <root>/test/<class>/<image>"


@dataclass
class ImagePool:
    """Images of one set: `images` is a uint8 tensor (N, 3, H, W) or a list of file paths; `source`
    names where the labels come from (a file or folder), for messages."""

    images: torch.Tensor | list[str]
    targets: np.ndarray
    source: str = ""

    def __len__(self) -> int:
        return len(self.targets)


def _require(path: Path, hint: str) -> Path:
    if not path.exists():
        raise DataNotFound(f"{path} not found: {hint}")
    return path


# --- checking image files up front -----------------------------------------------------------------

def image_problem(path: str) -> str | None:
    """Why the image file cannot be used, or None. Cheap: a JPEG is decoded at 1/8 scale (every byte is
    still read, so a file cut short fails), a PNG's chunk checksums are verified, other formats open
    their header; no full decode."""
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as img:
            if img.format == "JPEG":
                img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
                img.load()
            else:
                img.verify()
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, struct.error ...
        return why(e)
    return None


def find_bad_images(paths: list[str], progress: bool | None = None, chunk: int = 256) -> list[tuple[str, str]]:
    """(path, problem) for each unusable file, in order; threads overlap the reads. A bar shows long
    checks (progress=None: on a terminal)."""
    chunks = [paths[i: i + chunk] for i in range(0, len(paths), chunk)]
    bad = []
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool, \
            tqdm(total=len(paths), desc="checking images", unit="img", leave=False,
                 disable=True if progress is False or len(paths) < 2000 else None) as bar:
        for part in pool.map(lambda ps: [(p, image_problem(p)) for p in ps], chunks):
            bad += [(p, why) for p, why in part if why is not None]
            bar.update(len(part))
    return bad


def check_image_files(pool: ImagePool, indices: np.ndarray | None = None, progress: bool | None = None) -> None:
    """Stop before training when an image file that the split uses is missing or unreadable."""
    if isinstance(pool.images, torch.Tensor):
        return
    chosen = range(len(pool)) if indices is None else np.unique(indices)
    bad = find_bad_images([pool.images[int(i)] for i in chosen], progress)
    if not bad:
        return
    path, why = bad[0]
    more = f"; {len(bad) - 1} more bad image files after it" if len(bad) > 1 else ""
    error = DataNotFound if why == "not found" else BadData
    raise error(f"image {path}: {why}{more}: replace it, or remove it from {pool.source or 'the dataset'}")


def open_image(path: str, shorter_side: int | None = None) -> Image.Image:
    """The decoded RGB image (`shorter_side`: decode_rgb's); a file that went bad after the split was
    checked is named too."""
    try:
        return decode_rgb(path, shorter_side)
    except UnusableImage as e:
        raise BadData(f"cannot decode image {path}: {e.reason}: replace it or remove it") from None


# --- Fashion-MNIST (IDX files, Debian's dataset-fashion-mnist) -------------------------------------

def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): the MNIST family's format."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # not gzip, or a gzip stream cut short
        raise BadData(f"{path}: cannot read it ({one_line(e)}): replace it with the original file") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise BadData(f"{path}: not an unsigned-byte IDX file: replace it with the original file")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise BadData(f"{path}: truncated IDX file (the header is cut short): replace it with the original file")
    shape = struct.unpack(f">{ndim}I", data[4: 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise BadData(f"{path}: truncated IDX file ({body.size} bytes for shape {shape}): "
                      f"replace it with the original file")
    return body.reshape(shape)


def _fmnist_images(raw: np.ndarray) -> torch.Tensor:
    """28x28 gray -> 3x32x32 (zero-padded by 2, gray repeated): the CIFAR pipeline runs unchanged."""
    x = torch.from_numpy(np.pad(raw, ((0, 0), (2, 2), (2, 2))))
    return x.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def _idx_file(root: Path, name: str, hint: str) -> Path:
    """`name` (gzipped or not) in `root`, as Debian's dataset-fashion-mnist lays it out, or in
    `root/FashionMNIST/raw`, where torchvision's FashionMNIST(root, download=True) writes it."""
    for folder in (root, root / "FashionMNIST" / "raw"):
        for candidate in (folder / f"{name}.gz", folder / name):
            if candidate.exists():
                return candidate
    return _require(root / f"{name}.gz", hint)


def load_fashion_mnist(root: str) -> tuple[ImagePool, ImagePool]:
    base = Path(root)
    hint = ("install Debian's package dataset-fashion-mnist (apt-get install dataset-fashion-mnist), or set "
            "dataset.root to a folder with the four IDX files (or to the root of torchvision's FashionMNIST)")
    pools = []
    for prefix in ("train", "t10k"):
        images, labels = (_idx_file(base, f"{prefix}-{kind}-idx{n}-ubyte", hint)
                          for kind, n in (("images", 3), ("labels", 1)))
        x, y = read_idx(images), read_idx(labels).astype(np.int64)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise BadData(f"{images} ({'x'.join(map(str, x.shape))}) and {labels.name} ({len(y)} labels) "
                          f"do not match: expected N images of HxW and N labels; replace them with the originals")
        pools.append(ImagePool(_fmnist_images(x), y, str(labels)))
    return pools[0], pools[1]


# --- pickled batches: CIFAR-10/100 and Small-ImageNet-127 ------------------------------------------

def read_pickled_batch(path: Path, label_key: str, size: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch {"data": N rows of 3*size*size uint8 (CHW), label_key: N labels}.

    CIFAR and CoSSL distribute their datasets as pickles; this reads the user's own copy on local
    disk, never a stream shard (shards are never unpickled)."""
    fix = f"replace it with the file from the original {what} archive"
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        data, labels = np.asarray(batch["data"]), np.asarray(batch[label_key]).reshape(-1)
    except Exception as e:  # noqa: BLE001 - unpickling a wrong file raises almost anything
        raise BadData(f"{path}: not a {what} batch ({one_line(e)}): {fix}") from None
    if data.ndim != 2 or data.shape[1] != 3 * size * size or len(data) != len(labels):
        raise BadData(f"{path}: data of shape {data.shape} with {len(labels)} labels, expected N rows of "
                      f"3x{size}x{size} = {3 * size * size} values and N labels (dataset.image_size?): {fix}")
    return data.astype(np.uint8).reshape(-1, 3, size, size), labels.astype(np.int64)


def _read_batches(paths: list[Path], label_key: str, size: int, what: str, offset: int = 0) -> ImagePool:
    parts = [read_pickled_batch(p, label_key, size, what) for p in paths]
    source = str(paths[0].parent) if len(paths) > 1 else str(paths[0])
    return ImagePool(torch.from_numpy(np.concatenate([x for x, _ in parts])),
                     np.concatenate([y for _, y in parts]) - offset, source)


CIFAR_FILES = {10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
               100: ("cifar-100-python", ["train"], ["test"], "fine_labels")}


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
    hint = "expected the CIFAR python version (torchvision's layout)"
    what = f"CIFAR-{num_classes} python"
    train, test = ([_require(folder / name, hint) for name in names] for names in (train_names, test_names))
    return _read_batches(train, label_key, 32, what), _read_batches(test, label_key, 32, what)


# --- image folders: root/train/<class>/*, root/test/<class>/* --------------------------------------

def class_folders(folder: Path) -> list[str]:
    """The class names of an image folder: its sub-folders, sorted (as torchvision's ImageFolder)."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_image_folder(folder: Path, classes: list[str] | None = None) -> tuple[list[str], np.ndarray, list[str]]:
    """The images of `folder`/<class>/ and their class indices; the class names are the sub-folders
    unless given (the test set uses the training set's). A class folder of the test set may be missing
    or empty (build_split warns); one of the training set may not."""
    if not folder.is_dir():
        raise DataNotFound(f"{folder} is not a folder: {FOLDER_LAYOUT}")
    found = class_folders(folder)
    training = classes is None
    classes = found if training else classes
    extra = sorted(set(found) - set(classes))
    if extra:
        raise BadData(f"{folder} has class folders that {folder.parent / 'train'} lacks ({', '.join(extra[:10])}): "
                      f"the train and test folders need the same class names")
    paths, targets = [], []
    for c, name in enumerate(classes):
        sub = folder / name
        files = sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if sub.is_dir() else []
        if not files and training:
            raise BadData(f"class folder {sub} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}): "
                          f"add images or remove the folder")
        paths += [str(p) for p in files]
        targets += [c] * len(files)
    if not paths:
        raise DataNotFound(f"{folder} holds no images in class folders: {FOLDER_LAYOUT}")
    return paths, np.asarray(targets, dtype=np.int64), classes


def load_image_folder(root: str) -> tuple[ImagePool, ImagePool, list[str]]:
    base = Path(root)
    train_paths, train_y, classes = list_image_folder(base / "train")
    test_paths, test_y, _ = list_image_folder(base / "test", classes)
    return (ImagePool(train_paths, train_y, str(base / "train")), ImagePool(test_paths, test_y, str(base / "test")),
            classes)


# --- ImageNet-LT: image root + list files of "relative/path label" lines ---------------------------

def read_image_list(list_file: Path, image_root: Path) -> ImagePool:
    paths, targets = [], []
    _require(list_file, "ImageNet-LT list files (ImageNet_LT_train.txt, ImageNet_LT_test.txt) go in dataset.list_dir")
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise BadData(f"{list_file}: not a text file ({one_line(e)}): expected 'relative/path label' lines") from None
    for n, line in enumerate(lines, 1):
        parts = line.strip().rsplit(maxsplit=1)  # a path may hold spaces; the label is the last word
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise BadData(f"{list_file}:{n}: expected 'relative/path label', got {line.strip()[:200]!r}: "
                          f"fix or remove the line")
        paths.append(str(image_root / parts[0]))
        targets.append(int(parts[1]))
    if not paths:
        raise BadData(f"{list_file} lists no images: expected 'relative/path label' lines")
    return ImagePool(paths, np.asarray(targets, dtype=np.int64), str(list_file))


def load_imagenet_lt(root: str, list_dir: str | None, train_list: str, test_list: str) -> tuple[ImagePool, ImagePool]:
    lists = Path(list_dir or root)
    return read_image_list(lists / train_list, Path(root)), read_image_list(lists / test_list, Path(root))


# --- Small-ImageNet-127 (CoSSL's format: pickled batches of flattened CHW uint8 rows) --------------

def load_small_imagenet127(root: str, image_size: int) -> tuple[ImagePool, ImagePool]:
    base = Path(root)
    hint = f"expected CoSSL's Small-ImageNet-127 ({image_size} px): train_data_batch_1..10 and val_data"
    numbered = sorted((int(m.group(1)), p) for p in base.glob("train_data_batch_*")
                      if (m := re.fullmatch(r"train_data_batch_(\d+)", p.name)))  # not train_data_batch_1.bak
    train_files = [p for _, p in numbered]
    if not train_files:
        raise DataNotFound(f"{base}/train_data_batch_* not found: {hint}")
    what = f"Small-ImageNet-127 ({image_size} px)"
    train = _read_batches(train_files, "labels", image_size, what, offset=1)  # stored 1-based
    test = _read_batches([_require(base / "val_data", hint)], "labels", image_size, what, offset=1)
    return train, test
