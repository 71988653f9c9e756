"""An Avalanche benchmark in, as a stream: a class-incremental benchmark made from real Fashion-MNIST
tensors is written as shards and streamed end to end, with its continual-learning metrics."""

import json
import tarfile
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from bmb_stream.cli import main
from bmb_stream.datasets.sources import load_fashion_mnist
from bmb_stream.errors import ConfigError
from bmb_stream.simulation.from_avalanche import as_uint8_image, write_avalanche_benchmark
from tests.stream_helpers import FAST

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="no QP solver found")
    from avalanche.benchmarks import nc_benchmark


def small_benchmark(root, per_class=24, test_per_class=10):
    """5 experiences of 2 classes each, gray float images in [0, 1] as Avalanche's tensor datasets give them."""
    train, test = load_fashion_mnist(root)

    def take(pool, n):
        idx = np.concatenate([np.flatnonzero(pool.targets == c)[:n] for c in range(10)])
        x = pool.images[idx][:, :1].float() / 255  # one channel, as Fashion-MNIST comes
        y = torch.as_tensor(pool.targets[idx])
        ds = TensorDataset(x, y)
        ds.targets = y
        return ds

    return nc_benchmark(take(train, per_class), take(test, test_per_class), n_experiences=5, task_labels=False,
                        seed=0, fixed_class_order=list(range(10)))


def test_an_avalanche_benchmark_streams_end_to_end(fmnist_root, tmp_path, capsys):
    manifest = write_avalanche_benchmark(small_benchmark(fmnist_root), tmp_path / "s", labeled_fraction=0.25)
    assert len(manifest["shards"]) == 5 and manifest["num_classes"] == 10
    # experience k holds classes 2k and 2k + 1; its first one's labeled images are the seed set
    assert [np.flatnonzero(s["class_histogram"]).tolist() for s in manifest["shards"]] == [[0, 1], [2, 3], [4, 5],
                                                                                          [6, 7], [8, 9]]
    assert manifest["labeled_set"]["samples"] == 12 and manifest["shards"][0]["samples"] == 36
    assert manifest["shards"][1]["labeled"] == 12 and manifest["test_set"]["samples"] == 100
    with tarfile.open(tmp_path / "s" / "stream-000001.tar") as tar:
        kinds = {name.split(".", 1)[1] for name in tar.getnames()}
    assert kinds == {"png", "cls", "gt.cls", "json"}
    run_dir = tmp_path / "run"
    assert main([f"stream.urls={tmp_path}/s/stream-{{000000..000004}}.tar", f"run.dir={run_dir}", *FAST,
                 "stream.passes=1"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["experiences"] == 5 and summary["evaluated_after_experience"] == [0, 1, 2, 3, 4]
    assert len(summary["accuracy_matrix"]) == 5 and all(len(row) == 5 for row in summary["accuracy_matrix"])
    assert isinstance(summary["bwt"], float) and isinstance(summary["fwt"], float)
    assert len(summary["prequential_accuracy"]) == 5
    assert all(isinstance(p, float) for p in summary["prequential_accuracy"])
    assert (run_dir / "plots" / "accuracy_matrix.png").stat().st_size > 0
    assert (run_dir / "plots" / "prequential.png").stat().st_size > 0
    assert "continual learning (%): average accuracy" in capsys.readouterr().out


def test_images_of_every_kind_become_three_channel_uint8():
    gray = torch.full((1, 4, 4), 0.5)
    assert as_uint8_image(gray).shape == (3, 4, 4) and int(as_uint8_image(gray)[0, 0, 0]) == 128
    assert as_uint8_image(torch.zeros(4, 4, dtype=torch.uint8)).shape == (3, 4, 4)
    with pytest.raises(ConfigError, match="expected"):
        as_uint8_image(torch.zeros(2, 4, 4))


def test_refuses_a_folder_that_is_not_empty(tmp_path):
    x, y = torch.rand(8, 1, 4, 4), torch.arange(8) % 2
    data = TensorDataset(x, y)
    data.targets = y
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        write_avalanche_benchmark(nc_benchmark(data, data, n_experiences=2, task_labels=False, seed=0), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
