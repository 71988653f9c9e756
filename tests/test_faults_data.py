"""Bad data on the user's side ends with one line naming the culprit (exit code 2), found before
training or before any shard is written; overwrite=true deletes only what an earlier run of ours wrote."""

import gzip
import json
import pickle
import re

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader

from bmb_stream.cli import main
from bmb_stream.config_schema import CountsDataset
from bmb_stream.datasets import sources
from bmb_stream.datasets.build import build_split
from bmb_stream.errors import DataError
from tests.helpers import WARNING, cli_error
from tests.test_sources import write_idx

COLORS = [(200, 10, 10), (10, 200, 10), (10, 10, 200), (200, 200, 10)]
TINY_RUN = ["model=small_cnn", "train.steps=2", "train.eval_every=2", "train.batch_labeled=4",
            "train.batch_unlabeled=4", "train.num_workers=0", "progress=false"]


def image_folder(root, train, test):
    """root/train/<class>/*.png and root/test/<class>/*.png, 8x8, `train`/`test`: {class: count}."""
    for split, counts in (("train", train), ("test", test)):
        for c, (name, n) in enumerate(counts.items()):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (8, 8), COLORS[c % len(COLORS)]).save(root / split / name / f"{i}.png")
    return root


def folder_args(root, tmp_path, *overrides, classes=3):
    split = {"dataset.n1": "4", "dataset.m1": "2", "dataset.gamma_l": "2", "dataset.gamma_u": "2"}
    split.update(o.split("=", 1) for o in overrides)
    return ["--mode", "offline", "dataset=imagefolder_lt", f"dataset.root={root}", f"dataset.num_classes={classes}",
            *(f"{k}={v}" for k, v in split.items()), *TINY_RUN, f"run.dir={tmp_path / 'run'}"]


@pytest.fixture
def folder(tmp_path):
    return image_folder(tmp_path / "data", {"a": 6, "b": 4, "c": 3}, {"a": 2, "b": 2, "c": 2})


# --- 1. the split and the readers ----------------------------------------------------------------

def test_a_class_too_small_for_the_split_is_named_with_the_keys_to_lower(folder, tmp_path, capsys):
    line = cli_error(folder_args(folder, tmp_path, "dataset.n1=100", "dataset.m1=200"), capsys,  # the defaults
                     ignore=(WARNING,))
    assert "class 0 has 6 images (a)" in line and "100 labeled + 200 unlabeled = 300" in line
    assert all(key in line for key in ("dataset.n1", "dataset.m1", "dataset.gamma_l"))


@pytest.mark.parametrize("case,expected", [
    ("empty_class", "class folder {root}/train/c holds no images"),
    ("test_class_unknown", "{root}/test has class folders that {root}/train lacks (zebra)"),
    ("no_class_folders", "{root}/train holds no images in class folders"),
    ("num_classes", "dataset.num_classes=5 but {root}/train has 3 class folders (a, b, c): set dataset.num_classes=3"),
])
def test_image_folder_layout_errors(folder, tmp_path, capsys, case, expected):
    classes = 3
    if case == "empty_class":
        for p in (folder / "train" / "c").iterdir():
            p.unlink()
    elif case == "test_class_unknown":
        image_folder(folder, {}, {"zebra": 1})
    elif case == "no_class_folders":
        for name in ("a", "b", "c"):
            for p in (folder / "train" / name).iterdir():
                p.rename(folder / "train" / f"{name}-{p.name}")
            (folder / "train" / name).rmdir()
    else:
        classes = 5
    line = cli_error(folder_args(folder, tmp_path, classes=classes), capsys, ignore=(WARNING,))
    assert expected.format(root=folder) in line


def imagenet_lists(root, train_lines, test_lines="val/0.png 0\n"):
    image_folder(root, {"n0": 3, "n1": 3}, {})
    (root / "val").mkdir(exist_ok=True)
    Image.new("RGB", (8, 8)).save(root / "val" / "0.png")
    (root / "ImageNet_LT_train.txt").write_text(train_lines)
    (root / "ImageNet_LT_test.txt").write_text(test_lines)
    return ["--mode", "offline", "dataset=imagenet_lt", f"dataset.root={root}", "dataset.num_classes=2",
            "dataset.image_size=32", *TINY_RUN]


@pytest.mark.parametrize("lines,expected", [
    ("train/n0/0.png 0\ntrain/n1/0.png\n", "ImageNet_LT_train.txt:2: expected 'relative/path label'"),
    ("train/n0/0.png 0\ntrain/n1/0.png 7\n",
     "ImageNet_LT_train.txt: label 7 (image {root}/train/n1/0.png) is outside 0..1"),
    ("train/n0/0.png 0\ntrain/n1/9.png 1\n", "image {root}/train/n1/9.png: not found"),
])
def test_imagenet_list_errors_name_the_line_or_file(tmp_path, capsys, lines, expected):
    root = tmp_path / "inet"
    args = imagenet_lists(root, lines)
    line = cli_error([*args, f"run.dir={tmp_path / 'run'}"], capsys, ignore=(WARNING,))
    assert expected.format(root=root) in line


def fmnist_files(root, n=20):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return root


@pytest.mark.parametrize("damage,expected", [
    (lambda p: p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:500])), "truncated IDX file"),
    (lambda p: p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:6])), "truncated IDX file"),
    (lambda p: p.write_bytes(gzip.compress(b"\x00\x00\x0d\x03" + b"\0" * 100)), "not an unsigned-byte IDX file"),
    (lambda p: p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes()))[:-20]), "cannot read it"),
    (lambda p: p.write_bytes(b"plain bytes, no gzip"), "cannot read it"),
])
def test_a_damaged_idx_file_is_named(tmp_path, capsys, damage, expected):
    root = fmnist_files(tmp_path / "fm")
    damage(root / "train-images-idx3-ubyte.gz")
    args = ["--mode", "offline", "dataset=fashion_mnist_lt", f"dataset.root={root}", *TINY_RUN,
            f"run.dir={tmp_path / 'run'}"]
    line = cli_error(args, capsys, ignore=(WARNING,))
    assert "train-images-idx3-ubyte.gz" in line and expected in line


def test_idx_images_and_labels_of_different_lengths(tmp_path):
    root = fmnist_files(tmp_path)
    write_idx(root / "t10k-labels-idx1-ubyte.gz", np.arange(7) % 10)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz .*and t10k-labels-idx1-ubyte.gz .7 labels"):
        sources.load_fashion_mnist(str(root))


def cifar10_folder(root, first_batch: bytes | None = None):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), "labels": list(np.arange(20) % 10)}
        (folder / name).write_bytes(pickle.dumps(batch))
    if first_batch is not None:
        (folder / "data_batch_1").write_bytes(first_batch)
    return root


def test_a_file_that_is_no_cifar_batch_is_named(tmp_path, capsys):
    root = cifar10_folder(tmp_path / "cifar", b"<html>not found</html>")
    args = ["--mode", "offline", "dataset=cifar10_lt", f"dataset.root={root}", *TINY_RUN, f"run.dir={tmp_path / 'r'}"]
    line = cli_error(args, capsys, ignore=(WARNING,))
    assert "data_batch_1: not a CIFAR-10 python batch" in line and "original CIFAR-10 python archive" in line


@pytest.mark.parametrize("batch,expected", [
    ({"data": np.zeros((4, 3072), np.uint8)}, "KeyError: 'labels'"),
    ({"data": np.zeros((4, 3000), np.uint8), "labels": [0] * 4}, "expected N rows of 3x32x32 = 3072"),
    ({"data": np.zeros((4, 3072), np.uint8), "labels": [0] * 3}, "with 3 labels"),
    ([1, 2, 3], "not a CIFAR-10 python batch (TypeError"),
])
def test_wrong_cifar_batches(tmp_path, batch, expected):
    root = cifar10_folder(tmp_path, pickle.dumps(batch))
    with pytest.raises(DataError, match="data_batch_1") as info:
        sources.load_cifar(str(root), 10)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_small_imagenet_of_another_size_names_the_key(tmp_path):
    for name in ("train_data_batch_1", "val_data"):
        (tmp_path / name).write_bytes(pickle.dumps({"data": np.zeros((2, 3 * 64 * 64), np.uint8), "labels": [1, 2]}))
    (tmp_path / "train_data_batch_1.bak").write_bytes(b"ignored")
    with pytest.raises(DataError, match="train_data_batch_1: .*dataset.image_size"):
        sources.load_small_imagenet127(str(tmp_path), 32)
    assert len(sources.load_small_imagenet127(str(tmp_path), 64)[0]) == 2


# --- 2. bad image files: before training, and during it ---------------------------------------------

@pytest.mark.parametrize("where,content,expected", [
    ("train/b/1.png", b"this is a text file", "not an image"),
    ("test/c/0.png", "half", "not a readable image"),
])
def test_a_bad_image_stops_the_run_before_training(folder, tmp_path, capsys, where, content, expected):
    path = folder / where
    if content == "half":  # a noisy image, cut after its header
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        content = path.read_bytes()[:1500]
    path.write_bytes(content)
    line = cli_error(folder_args(folder, tmp_path), capsys, ignore=(WARNING,))
    assert f"image {path}: {expected}" in line
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()  # stopped before any training step


def test_a_jpeg_cut_short_is_found_up_front(tmp_path):
    path = tmp_path / "x.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    assert sources.image_problem(str(path)) is None
    path.write_bytes(path.read_bytes()[:1500])
    assert "truncated" in sources.image_problem(str(path))


def test_an_image_that_goes_bad_after_the_check_is_named_in_training(folder):
    cfg = OmegaConf.merge(OmegaConf.structured(CountsDataset), {"source": "imagefolder", "root": str(folder), "num_classes": 3, "image_size": 32,
                            "n1": 4, "m1": 2, "gamma_l": 2, "gamma_u": 2, "labeled_ratio": None,
                            "mean": [0.5] * 3, "std": [0.25] * 3})
    split = build_split(cfg)
    bad = split.labeled.pool.images[int(split.labeled.indices[0])]
    with open(bad, "wb") as f:
        f.write(b"gone bad")
    with pytest.raises(DataError, match=f"cannot decode image {re.escape(bad)}: not an image .*: replace it"):
        split.labeled[0]
    # in a DataLoader worker too, the message comes back as the one line (no worker traceback)
    with pytest.raises(DataError) as info:
        next(iter(DataLoader(split.labeled, batch_size=len(split.labeled), num_workers=1)))
    assert str(info.value).startswith(f"cannot decode image {bad}") and "\n" not in str(info.value)


# --- 3. shards of undecodable files are refused before anything is written -----------------------

def shards_args(root, out, *extra):  # mode=offline: only the dataset matters, not stream mode's own checks
    return ["shards", "mode=offline", "dataset=imagefolder_lt", f"dataset.root={root}", "dataset.num_classes=3",
            "dataset.n1=4", "dataset.m1=2", "dataset.gamma_l=2", "dataset.gamma_u=2", f"out={out}", "progress=false",
            *extra]


def test_shards_refuse_an_undecodable_file_before_writing(folder, tmp_path, capsys):
    out = tmp_path / "shards"
    (folder / "train" / "a" / "5.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    line = cli_error(shards_args(folder, out), capsys, ignore=(WARNING,))
    assert f"image {folder / 'train' / 'a' / '5.png'}: not" in line and line.startswith("bmb-stream shards: error:")
    assert not out.exists()
    out.mkdir()
    (out / "labeled-000000.tar").write_bytes(b"an earlier split")  # overwrite=true: still nothing touched
    cli_error(shards_args(folder, out, "overwrite=true"), capsys, ignore=(WARNING,))
    assert (out / "labeled-000000.tar").read_bytes() == b"an earlier split"


def test_simulate_refuses_an_undecodable_file(folder, tmp_path, capsys):
    recipe = tmp_path / "folder_stream.yaml"
    recipe.write_text("dataset: imagefolder_lt\ndataset_overrides: {num_classes: 3, n1: 2, m1: 0, gamma_l: 2}\n"
                      "seed: 0\nshards: 2\nsamples_per_shard: 3\nlabeled_fraction: 0.5\non_exhausted: stop\n"
                      "test_per_class: null\nprior: {schedule: uniform}\n")
    (folder / "train" / "b" / "3.png").write_text("no image")
    line = cli_error(["simulate", recipe, f"out={tmp_path / 's'}", f"root={folder}", "progress=false"], capsys,
                     ignore=(WARNING,))
    assert f"image {folder / 'train' / 'b' / '3.png'}: not an image" in line
    assert not (tmp_path / "s").exists()
    assert "shards=0: must be a positive integer" in cli_error(
        ["simulate", recipe, f"out={tmp_path / 's'}", f"root={folder}", "shards=0"], capsys, ignore=(WARNING,))


# --- 4. overwrite=true deletes only what an earlier run of ours wrote --------------------------------

def user_files(out):
    (out / "plots").mkdir(parents=True, exist_ok=True)
    for name, text in (("keep.tar", "mine"), ("notes.txt", "mine"), ("plots/mine.png", "mine")):
        (out / name).write_text(text)


def simulate_args(root, out, *extra):
    return ["simulate", "fmnist_lt_stationary", f"out={out}", f"root={root}", "dataset_overrides.n1=4",
            "dataset_overrides.m1=0", "dataset_overrides.gamma_l=2", "samples_per_shard=10", "progress=false",
            "overwrite=true", *extra]


def test_simulate_overwrite_keeps_unrelated_files(tmp_path):
    root, out = fmnist_files(tmp_path / "fm", n=200), tmp_path / "stream"
    assert main(simulate_args(root, out, "shards=4")) == 0
    user_files(out)
    assert main(simulate_args(root, out, "shards=2", "seed=1")) == 0  # a different stream: the old one goes
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert names == {"keep.tar", "notes.txt", "plots/mine.png", "plots/stream_prior.png", "manifest.json",
                     "stream-000000.tar", "stream-000001.tar", "labeled-000000.tar", "test-000000.tar"}
    (out / "manifest.json").unlink()  # no manifest: only our shard names go
    (out / "stream-000007.tar").write_text("stale")
    assert main(simulate_args(root, out, "shards=2")) == 0
    assert not (out / "stream-000007.tar").exists()
    assert all((out / n).read_text() == "mine" for n in ("keep.tar", "notes.txt", "plots/mine.png"))


def test_shards_overwrite_keeps_unrelated_files(folder, tmp_path):
    out = tmp_path / "split"
    out.mkdir()
    user_files(out)
    (out / "unlabeled-000009.tar").write_text("stale, no manifest")
    (out / "stream-000000.tar").write_text("not a split name")
    assert main(shards_args(folder, out, "overwrite=true")) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert not (out / "unlabeled-000009.tar").exists() and (out / "stream-000000.tar").exists()
    (out / "unlabeled-000001.tar").write_text("listed by no manifest: stays now that there is one")
    assert main(shards_args(folder, out, "overwrite=true", "dataset.n1=3")) == 0
    assert (out / "unlabeled-000001.tar").exists()
    assert all((out / n).read_text() == "mine" for n in ("keep.tar", "notes.txt", "plots/mine.png"))
    assert all((out / f).exists() for f in manifest["labeled_set"]["files"])


# --- 5. classes missing from the labeled or the test set: a warning, and the run goes on -------------

def test_missing_classes_are_one_line_warnings(tmp_path, capsys):
    root = image_folder(tmp_path / "data", {"a": 6, "b": 6, "c": 6}, {"a": 2, "b": 2})
    args = folder_args(root, tmp_path, "dataset.gamma_l=10")  # N_c = int(4 / 10) = 0
    assert main(args) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("bmb-stream: warning:")]
    assert len(warnings) == 2 and "Traceback" not in err
    assert "the labeled set has no image of class 2 (c): " in warnings[0] and "dataset.n1" in warnings[0]
    assert "the test set has no image of class 2 (c): " in warnings[1]
