"""Each reader on small files written in the real format."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from bmb_stream.config_schema import CifarDataset, CountsDataset
from bmb_stream.datasets import sources
from bmb_stream.datasets.build import build_split


def write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_is_also_read_where_torchvision_downloads_it(tmp_path):
    from bmb_stream.datasets.sources import load_fashion_mnist

    raw = tmp_path / "FashionMNIST" / "raw"  # torchvision.datasets.FashionMNIST(tmp_path, download=True)
    raw.mkdir(parents=True)
    for prefix, n in (("train", 20), ("t10k", 10)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", np.full((n, 28, 28), 7))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
        for kind in ("images-idx3", "labels-idx1"):  # it keeps the archive and its unpacked file
            gz = raw / f"{prefix}-{kind}-ubyte.gz"
            (raw / gz.stem).write_bytes(gzip.decompress(gz.read_bytes()))
            if prefix == "t10k":  # either one is enough
                gz.unlink()
    train, test = load_fashion_mnist(str(tmp_path))
    assert len(train) == 20 and len(test) == 10 and list(test.targets) == list(np.arange(10))


def test_idx_reader_and_fashion_mnist_padding(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 10)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    train, test = sources.load_fashion_mnist(str(tmp_path))
    assert train.images.shape == (30, 3, 32, 32) and test.images.shape == (10, 3, 32, 32)
    raw = sources.read_idx(tmp_path / "train-images-idx3-ubyte.gz")
    assert torch.equal(train.images[4, 1, 2:30, 2:30], torch.from_numpy(raw[4].copy()))
    assert train.images[:, :, :2].sum() == 0  # zero padding
    assert train.targets.tolist() == [i % 10 for i in range(30)]


def test_truncated_idx_file_is_reported(tmp_path):
    path = tmp_path / "x.gz"
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 8, 3) + struct.pack(">3I", 5, 28, 28) + b"\0" * 100)
    with pytest.raises(ValueError, match="truncated"):
        sources.read_idx(path)


def test_missing_fashion_mnist_names_the_package(tmp_path):
    with pytest.raises(sources.DataNotFound, match="dataset-fashion-mnist"):
        sources.load_fashion_mnist(str(tmp_path))


def write_cifar10(root, per_class=60):
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = per_class * 10 // 5 if name != "test_batch" else 50
        labels = (np.arange(n) % 10).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": labels}, f)


def test_cifar10_folder_layout_and_split(tmp_path):
    write_cifar10(tmp_path)
    train, test = sources.load_cifar(str(tmp_path), 10)
    assert train.images.shape == (600, 3, 32, 32) and len(test) == 50
    cfg = OmegaConf.merge(OmegaConf.structured(CifarDataset), {"source": "cifar10", "root": str(tmp_path), "num_classes": 10, "image_size": 32,
                            "n1": 20, "m1": 30, "gamma_l": 10, "gamma_u": 10, "labeled_ratio": None,
                            "split_shuffle": True, "mean": [0.5] * 3, "std": [0.25] * 3})
    split = build_split(cfg, seed=0)
    assert split.labeled_per_class == [20, 15, 11, 9, 7, 5, 4, 3, 2, 2]
    assert split.test_per_class == [5] * 10
    x, y = split.labeled[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8  # normalised on the training device
    (w, s1, s2), _ = split.unlabeled[0]
    assert w.shape == s1.shape == s2.shape == (3, 32, 32)


def test_cifar_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(sources.DataNotFound, match="cifar-100-python"):
        sources.load_cifar(str(tmp_path), 100)


def write_images(folder, n, color):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (40, 36), color=color).save(folder / f"{i}.png")


def test_image_folder_source(tmp_path):
    for split, n in (("train", 12), ("test", 3)):
        write_images(tmp_path / split / "cat", n, (200, 10, 10))
        write_images(tmp_path / split / "dog", n // 3, (10, 10, 200))
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    cfg = OmegaConf.merge(OmegaConf.structured(CountsDataset), {"source": "imagefolder", "root": str(tmp_path), "num_classes": 2, "image_size": 32,
                            "n1": 4, "m1": 4, "gamma_l": 2, "gamma_u": 2, "labeled_ratio": None,
                            "split_shuffle": True, "mean": [0.5] * 3, "std": [0.25] * 3})
    split = build_split(cfg)
    assert split.class_names == ["cat", "dog"]
    assert split.labeled_per_class == [4, 2] and split.test_per_class == [3, 1]
    x, _ = split.test[0]
    assert x.shape == (3, 32, 32)


def test_corrupt_image_names_the_file(tmp_path):
    write_images(tmp_path / "train" / "a", 4, (0, 0, 0))
    write_images(tmp_path / "test" / "a", 1, (0, 0, 0))
    write_images(tmp_path / "train" / "b", 4, (0, 0, 0))
    write_images(tmp_path / "test" / "b", 1, (0, 0, 0))
    (tmp_path / "test" / "a" / "0.png").write_bytes(b"\x89PNG broken")
    cfg = OmegaConf.merge(OmegaConf.structured(CountsDataset), {"source": "imagefolder", "root": str(tmp_path), "num_classes": 2, "image_size": 32,
                            "n1": 2, "m1": 1, "gamma_l": 1, "gamma_u": 1, "labeled_ratio": None,
                            "mean": [0.5] * 3, "std": [0.25] * 3})
    with pytest.raises(ValueError, match="0.png"):  # found when the split is built
        build_split(cfg)
    split = build_split(cfg, check_images=False)
    with pytest.raises(ValueError, match="0.png"):  # and named if it goes bad after the check
        split.test[0]


def test_imagenet_lt_lists(tmp_path):
    write_images(tmp_path / "train" / "n1", 5, (1, 2, 3))
    write_images(tmp_path / "val" / "n1", 2, (1, 2, 3))
    lines = [f"train/n1/{i}.png {i % 2}" for i in range(5)]
    (tmp_path / "ImageNet_LT_train.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "ImageNet_LT_test.txt").write_text("val/n1/0.png 0\nval/n1/1.png 1\n")
    train, test = sources.load_imagenet_lt(str(tmp_path), None, "ImageNet_LT_train.txt", "ImageNet_LT_test.txt")
    assert train.targets.tolist() == [0, 1, 0, 1, 0] and train.images[1].endswith("train/n1/1.png")
    (tmp_path / "bad.txt").write_text("train/n1/0.png\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        sources.read_image_list(tmp_path / "bad.txt", tmp_path)


def test_small_imagenet127_pickles(tmp_path):
    rng = np.random.default_rng(0)
    for i in (1, 2, 10):
        with open(tmp_path / f"train_data_batch_{i}", "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (4, 3 * 32 * 32), dtype=np.uint8),
                         "labels": [1, 2, 127, 1], "mean": np.zeros(3072)}, f)
    with open(tmp_path / "val_data", "wb") as f:
        pickle.dump({"data": rng.integers(0, 256, (3, 3 * 32 * 32), dtype=np.uint8), "labels": [1, 64, 127]}, f)
    train, test = sources.load_small_imagenet127(str(tmp_path), 32)
    assert train.images.shape == (12, 3, 32, 32)
    assert train.targets.tolist()[:4] == [0, 1, 126, 0] and test.targets.tolist() == [0, 63, 126]
