"""Offline runs on the real Fashion-MNIST-LT through the command line, and the run directory contract."""

import json

import pytest
import torch

from bmb_stream.cli import main

RUN = ["mode=offline", "experiment=demo", "train.steps=150", "train.eval_every=50", "train.batch_labeled=32",
       "train.batch_unlabeled=32", "train.num_workers=1", "progress=false"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    import os

    if not os.path.exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"):
        pytest.fail("Fashion-MNIST is missing: apt-get install dataset-fashion-mnist (the install script does it)")
    run_dir = tmp_path_factory.mktemp("demo")
    assert main([*RUN, "method.tau=0.8", f"run.dir={run_dir}"]) == 0
    return run_dir


def test_bmb_learns_well_above_chance(demo_run):
    summary = json.loads((demo_run / "summary.json").read_text())
    # 10 classes: chance is 0.10; 150 small-CNN steps reach about 0.45
    assert summary["final"]["balanced_acc"] > 0.3
    assert summary["final"]["raw_balanced_acc"] > 0.3


def test_run_directory_contract(demo_run):
    for name in ("config.yaml", "eval.jsonl", "summary.json", "log.txt", "csv/eval_results.csv",
                 "checkpoints/last.pt", "plots/per_class_acc.png", "plots/bank_class_counts.png"):
        assert (demo_run / name).exists(), name
    assert list((demo_run / "tensorboard").glob("events.out.tfevents.*"))
    records = [json.loads(line) for line in (demo_run / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [50, 100, 150]
    for r in records:
        for key in ("step", "samples_seen", "balanced_acc", "raw_balanced_acc", "top1_acc", "per_class_acc",
                    "many_acc", "medium_acc", "few_acc", "bank_class_counts", "class_weights"):
            assert key in r, key
        assert len(r["per_class_acc"]) == 10 and 0 <= sum(r["bank_class_counts"]) <= 256
        assert r["balanced_acc"] == pytest.approx(sum(r["per_class_acc"]) / 10)
    s = json.loads((demo_run / "summary.json").read_text())
    for key in ("mode", "method", "dataset", "model", "seed", "steps", "samples_seen", "wall_s",
                "train_images_per_s", "final", "best", "mean_last_20", "median_last_20", "headline", "data"):
        assert key in s, key
    assert (s["mode"], s["method"], s["dataset"], s["model"], s["steps"]) == ("offline", "bmb", "fashion_mnist_lt", "small_cnn", 150)
    assert s["samples_seen"] == 150 * 32
    assert s["headline"]["statistic"] == "mean_last_20"
    assert s["headline"]["balanced_acc"] == pytest.approx(sum(r["balanced_acc"] for r in records) / 3)
    assert s["best"]["balanced_acc"] == max(r["balanced_acc"] for r in records)
    assert s["data"]["labeled_per_class"] == [1500, 899, 539, 323, 193, 116, 69, 41, 25, 15]
    assert s["data"]["test_per_class"] == [1000] * 10
    assert s["data"]["unlabeled_per_class"][0] == 4500
    state = torch.load(demo_run / "checkpoints" / "last.pt", weights_only=True)
    assert state["learner"]["step"] == 150 and set(state["learner"]["algorithm"]) == {"bank", "estimate"}


def test_many_medium_few_groups_follow_labeled_counts(demo_run):
    r = json.loads((demo_run / "eval.jsonl").read_text().splitlines()[-1])
    acc = r["per_class_acc"]
    # labeled counts 1500..15: many > 100 is classes 0-5, few < 20 is class 9, medium classes 6-8
    assert r["many_acc"] == pytest.approx(sum(acc[:6]) / 6)
    assert r["medium_acc"] == pytest.approx(sum(acc[6:9]) / 3)
    assert r["few_acc"] == pytest.approx(acc[9])


def test_resume_continues_from_the_checkpoint(tmp_path, capsys):
    run = [*RUN, "train.eval_every=20", f"run.dir={tmp_path}"]
    assert main([*run, "train.steps=20"]) == 0
    assert main([*run, "train.steps=40", "resume=true"]) == 0
    assert "resumed from" in capsys.readouterr().out
    records = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [20, 40]
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 40


@pytest.mark.parametrize("method", ["fixmatch", "supervised"])
def test_baselines_run_and_evaluate_the_standard_head(method, tmp_path):
    assert main([*RUN, f"method={method}", "train.steps=30", "train.eval_every=30", f"run.dir={tmp_path}"]) == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["method"] == method and s["final"]["balanced_acc"] > 0.1
    r = json.loads((tmp_path / "eval.jsonl").read_text().splitlines()[-1])
    assert "bank_class_counts" not in r
