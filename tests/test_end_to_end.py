"""Offline runs on the real Fashion-MNIST-LT through the command line, and the run directory contract."""

import json

import pytest
import torch
from torch.utils.data import DataLoader, Subset

from bmb_stream.cli import main
from bmb_stream.config import compose, typed

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


@torch.no_grad()
def head_accuracies(model, learner, test, classes: list[int]) -> dict[str, list[float]]:
    """Each head's accuracy of `model` on the test images of each of `classes`, computed here, apart
    from the evaluator."""
    model.eval()
    targets = torch.as_tensor(test.targets)
    picked = torch.isin(targets, torch.tensor(classes)).nonzero().flatten().tolist()
    hits = {"std": torch.zeros(model.num_classes), "bal": torch.zeros(model.num_classes)}
    for x, y in DataLoader(Subset(test, picked), batch_size=500):
        features = model(learner.input(x))
        for head, hit in hits.items():
            hit.index_add_(0, y, (model.head(head)(features).argmax(1) == y).float())
    total = torch.bincount(targets, minlength=model.num_classes)
    return {head: [float(hit[c] / total[c]) for c in classes] for head, hit in hits.items()}


@pytest.mark.parametrize("method", ["fixmatch", "supervised"])
def test_baselines_run_and_evaluate_the_standard_head(method, tmp_path):
    """The baselines have no test-time rule: the accuracies a run reports are those of the standard
    head of its saved EMA model, not those of the balanced head (untrained here, of no use to them).
    Checked on two classes' test images (2,000), the per-class accuracies the balanced accuracy is
    the mean of."""
    from bmb_stream.datasets import build_split
    from bmb_stream.engine.learner import Learner

    overrides = [*RUN, f"method={method}", "train.steps=30", "train.eval_every=30"]
    assert main([*overrides, f"run.dir={tmp_path}"]) == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["method"] == method and s["test_rule"] is None
    r = json.loads((tmp_path / "eval.jsonl").read_text().splitlines()[-1])
    assert "bank_class_counts" not in r
    assert s["final"]["balanced_acc"] == r["balanced_acc"] == pytest.approx(sum(r["per_class_acc"]) / 10)
    cfg = typed(compose(overrides))
    split = build_split(cfg.dataset, seed=cfg.seed, progress=False)
    learner = Learner(cfg, split.num_classes, split.labeled_per_class, torch.device("cpu"))
    learner.load_state_dict(torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["learner"])
    classes = [0, 1]  # many-shot: learnt after 30 steps (over 0.8), where the balanced head is not
    heads = head_accuracies(learner.ema.module, learner, split.test, classes)
    assert [r["per_class_acc"][c] for c in classes] == pytest.approx(heads["std"], abs=1e-3)  # 1 image in 1,000
    assert sum(abs(a - b) for a, b in zip(heads["std"], heads["bal"])) > 0.1  # the heads differ
