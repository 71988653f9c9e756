"""Weights users take away and bring in: `eval.keep_best`, `bmb-stream export`, `eval`, `predict`, the
loading snippet of docs/python-api.md and `model.pretrained`."""

import copy
import csv
import json
import re
from pathlib import Path

import pytest
import torch

from bmb_stream.algorithms import Setup, build_algorithm
from bmb_stream.cli import main
from bmb_stream.errors import ConfigError
from bmb_stream.models import build_model
from bmb_stream.models.exported import load_exported, load_pretrained

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = ["mode=offline", "experiment=demo", "train.steps=30", "train.eval_every=10", "train.batch_labeled=32",
           "train.batch_unlabeled=32", "train.num_workers=1", "progress=false"]


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]


def test_keep_best_keeps_the_checkpoint_of_the_best_evaluation(offline_run):
    offline_run, _ = offline_run
    accuracies = [r["balanced_acc"] for r in records(offline_run)]
    best = torch.load(offline_run / "checkpoints" / "best.pt", weights_only=True)
    best_acc = best["history"][-1]["balanced_acc"]
    assert best_acc == max(accuracies) and best["learner"]["step"] == 10 * (accuracies.index(best_acc) + 1)
    summary = json.loads((offline_run / "summary.json").read_text())
    assert summary["best"]["balanced_acc"] == best_acc
    from bmb_stream.inference import evaluate_exported  # the best checkpoint, exported, scores what it scored

    out = offline_run.parent / "best.pt"
    assert main(["export", str(offline_run), "checkpoint=best", f"out={out}"]) == 0
    assert evaluate_exported(out)["balanced_acc"] == best_acc


def test_export_then_eval_reproduce_the_runs_last_evaluation(reference_run, tmp_path, capsys):
    out = tmp_path / "model.pt"
    assert main(["export", str(reference_run), f"out={out}"]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["algorithm"] == "bmb" and meta["weights"] == "ema" and meta["head"].startswith("rule: the balanced head")
    assert len(meta["class_names"]) == meta["num_classes"] == 10 and meta["input_size"] == 32
    capsys.readouterr()
    assert main(["eval", str(out), "device=cpu"]) == 0
    printed = capsys.readouterr().out
    last = records(reference_run)[-1]
    row = re.search(r"^exported +([\d.]+) +([\d.]+)", printed, re.M)
    assert row and float(row.group(1)) == round(100 * last["balanced_acc"], 1)
    from bmb_stream.inference import evaluate_exported

    record = evaluate_exported(out)
    assert record["balanced_acc"] == last["balanced_acc"] and record["per_class_acc"] == last["per_class_acc"]
    raw = tmp_path / "raw.pt"
    assert main(["export", str(reference_run), f"out={raw}", "weights=raw"]) == 0
    assert evaluate_exported(raw)["balanced_acc"] == last["raw_balanced_acc"]


def test_the_documented_loading_snippet_runs(reference_run, tmp_path, monkeypatch):
    assert main(["export", str(reference_run), f"out={tmp_path / 'model.pt'}"]) == 0
    text = (ROOT / "docs" / "python-api.md").read_text()
    snippet = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "load_exported" in b)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(snippet, "docs/python-api.md", "exec"), namespace)
    assert namespace["logits"].shape == (2, 10) and len(namespace["names"]) == 2


def test_predict_writes_one_row_per_image_from_a_folder_and_from_shards(reference_run, fmnist_stream, tmp_path):
    from PIL import Image

    model = tmp_path / "model.pt"
    assert main(["export", str(reference_run), f"out={model}"]) == 0
    folder = tmp_path / "images" / "nested"
    folder.mkdir(parents=True)
    for i in range(5):
        Image.new("L", (28, 28), 40 * i).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    assert main(["predict", str(model), str(tmp_path / "images"), f"out={tmp_path / 'folder.csv'}"]) == 0
    rows = list(csv.DictReader((tmp_path / "folder.csv").open()))
    assert [Path(r["image"]).name for r in rows] == [f"{i}.png" for i in range(5)]
    assert all(0 <= int(r["class"]) < 10 and 0 < float(r["probability"]) <= 1 for r in rows)
    shard = fmnist_stream / "stream-000000.tar"
    assert main(["predict", str(model), str(shard), f"out={tmp_path / 'shard.csv'}"]) == 0
    rows = list(csv.DictReader((tmp_path / "shard.csv").open()))
    assert len(rows) == 96 and rows[0]["image"].startswith(f"{shard}#")


def test_the_folded_rules_give_the_algorithms_logits():
    torch.manual_seed(0)
    classifier = build_model("small_cnn", 3).eval()
    for name in ("cdmad", "abc", "bmb", "fixmatch"):
        setup = Setup(3, torch.tensor([100.0, 30.0, 10.0]), classifier.feature_dim, torch.device("cpu"), seed=0,
                      total_steps=100)
        algorithm = build_algorithm({"name": name}, setup)
        x = torch.randn(4, 3, 32, 32)
        head = type(algorithm).exported_head(algorithm.cfg, classifier, x)
        with torch.no_grad():
            expected = algorithm.test_logits(classifier, x)["rule"]
            assert torch.allclose(head(classifier(x)), expected, atol=1e-5), name


def test_a_run_starts_from_an_exported_or_a_plain_backbone_state_dict(reference_run, tmp_path, capsys):
    from bmb_stream.config import compose, typed
    from bmb_stream.engine.learner import Learner

    exported = tmp_path / "model.pt"
    assert main(["export", str(reference_run), f"out={exported}"]) == 0
    model, _ = load_exported(exported)
    capsys.readouterr()
    cfg = typed(compose([*OFFLINE, f"model.pretrained={exported}", f"run.dir={tmp_path / 'run'}"]))
    learner = Learner(cfg, 10, [100] * 10, torch.device("cpu"))  # what a run builds first
    assert "model.pretrained: backbone from" in capsys.readouterr().out
    for key, value in model.backbone.state_dict().items():  # the weights a run trains, and its EMA model
        assert torch.equal(learner.model.backbone.state_dict()[key], value), key
        assert torch.equal(learner.ema.module.backbone.state_dict()[key], value), key
    plain = build_model("small_cnn", 10)
    torch.save({**copy.deepcopy(model.backbone.state_dict()), "fc.weight": torch.zeros(1)}, tmp_path / "plain.pt")
    load_pretrained(plain, tmp_path / "plain.pt")  # a classifier's fc.* is left out
    for key, value in plain.backbone.state_dict().items():
        assert torch.equal(value, model.backbone.state_dict()[key]), key
    with pytest.raises(ConfigError, match="does not fit this model's backbone"):
        load_pretrained(build_model("wrn28_2", 10), exported)


def test_a_safetensors_export_loads_as_the_pt_one(reference_run, tmp_path, capsys):
    assert main(["export", str(reference_run), f"out={tmp_path / 'model.safetensors'}"]) == 0
    assert main(["export", str(reference_run), f"out={tmp_path / 'model.pt'}"]) == 0
    a, meta = load_exported(tmp_path / "model.safetensors")
    b, _ = load_exported(tmp_path / "model.pt")
    x = torch.randint(0, 256, (3, meta["channels"], meta["input_size"], meta["input_size"]), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    assert main(["export", str(reference_run), f"out={tmp_path / 'model.bin'}"]) == 2
    assert "the weights file ends in .pt (a PyTorch state dict) or .safetensors" in capsys.readouterr().err
