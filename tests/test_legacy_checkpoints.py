"""Run folders written before algorithms became registered classes resume, and continue as the code
that wrote them continued them (tests/data/legacy_runs/README.md)."""

import json
import shutil
from pathlib import Path

import pytest

from bmb_stream.cli import main

LEGACY = Path(__file__).parent / "data" / "legacy_runs"


@pytest.mark.parametrize("method", ["bmb", "fixmatch"])
def test_a_run_of_the_earlier_layout_resumes_and_continues_as_it_did(method, tmp_path, fmnist_root):
    run_dir = tmp_path / method
    shutil.copytree(LEGACY / method, run_dir)
    args = ["--mode", "offline", "experiment=demo", f"method={method}", "model=small_cnn", "model.width=8",
            "train.batch_labeled=16", "train.batch_unlabeled=16", "train.eval_every=3", "train.num_workers=0",
            "eval.batch_size=1000", "progress=false", "seed=3", "train.steps=6", f"run.dir={run_dir}", "resume=true"]
    assert main(args) == 0
    records = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
    expected = json.loads((LEGACY / method / "expected_step6.jsonl").read_text())
    assert [r["step"] for r in records] == [3, 6]
    got = records[-1]
    for key in ("samples_seen", "per_class_acc", "raw_balanced_acc", "bank_class_counts", "class_weights"):
        assert got.get(key) == expected.get(key), key
    assert got["test_loss"] == pytest.approx(expected["test_loss"], rel=1e-5)
