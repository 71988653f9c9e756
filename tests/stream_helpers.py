"""What the stream tests share: fast settings for tiny runs, the small real stream's recipe, and
shards written by hand with tarfile (the shard contract, not WebDataset's writer)."""

import io
import tarfile

import numpy as np
from PIL import Image

FAST = ["train.batch_labeled=16", "train.batch_unlabeled=16", "method.tau=0.3", "method.bank.count_floor=1",
        "method.bank.capacity=64", "method.bank.draw=32", "stream.num_workers=0", "stream.shards_per_experience=1",
        "stream.eval_every=1", "progress=false"]

# 6 shards of 96 real Fashion-MNIST images (10% labeled), seed set 1221, test set 500
SMALL_STREAM = ["shards=6", "samples_per_shard=96", "labeled_fraction=0.1", "prior.gamma=10", "test_per_class=50",
                "dataset_overrides.n1=300", "dataset_overrides.gamma_l=10"]


def stream_args(folder, run_dir, *extra):
    return [f"stream.urls={folder}/stream-{{000000..000005}}.tar", f"run.dir={run_dir}", *FAST, *extra]


def metrics(summary):
    """The numbers of a summary, without the timings."""
    drop = {"wall_s", "train_images_per_s"}
    return {k: v for k, v in summary.items() if k not in drop}


def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def add(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_tar(path, samples):
    with tarfile.open(path, "w") as tar:
        for key, fields in samples:
            for ext, data in fields.items():
                add(tar, f"{key}.{ext}", data)
