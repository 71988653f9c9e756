"""The memory bank at work on real data from the first experience: in the default job and in a stream of
a published recipe, where the balanced head is not yet 95% sure of any unlabeled image."""

import json

from bmb_stream.cli import main


def read(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
    return summary, records


def test_default_job_bank_is_full_with_every_class_after_two_experiences(fmnist_root, tmp_path):
    """The default job as `bmb-stream` runs it, stopped after 2 of its 10 experiences (an evaluation after each)."""
    run_dir = tmp_path / "run"
    assert main([f"run.dir={run_dir}", f"stream.cache_dir={tmp_path / 'cache'}", "stream.max_experiences=2",
                 "progress=false"]) == 0
    summary, records = read(run_dir)
    counts = summary["bank_class_counts"]
    assert summary["experiment"] == "demo" and summary["steps"] > 0
    assert sum(counts) >= 0.9 * summary["bank_capacity"], counts
    assert all(c > 0 for c in counts), counts
    # entries of the labeled images are pure by construction; the purity covers pseudo-labeled ones only
    assert summary["bank_labeled"] > 0
    assert max(counts) <= 4 * min(counts), counts  # rebalanced: the gamma-100 head does not take the bank
    # the continual-learning metrics of the drifting stream: one row per experience, backward transfer,
    # forgetting per class, and the prequential accuracy of each experience (its images carry their classes)
    assert summary["evaluated_after_experience"] == [0, 1] and len(summary["accuracy_matrix"]) == 2
    assert isinstance(summary["bwt"], float) and isinstance(summary["fwt"], float)
    assert len(summary["forgetting_per_class"]) == 10
    assert all(isinstance(f, float) for f in summary["forgetting_per_class"])
    assert all(isinstance(p, float) for p in summary["prequential_accuracy"])


def test_published_recipe_streamed_from_shards_ends_with_a_bank_of_most_classes(fmnist_stream, tmp_path):
    """experiment=fmnist_lt_r100 (tau 0.95, the reference's bank) streamed: 6 shards, 2 per experience."""
    run_dir = tmp_path / "run"
    assert main(["--mode", "stream", "experiment=fmnist_lt_r100", "model=small_cnn", "seed=3",
                 f"stream.urls={fmnist_stream}", "stream.shards_per_experience=2", "stream.num_workers=0",
                 f"run.dir={run_dir}", "progress=false"]) == 0
    summary, records = read(run_dir)
    assert summary["experiences"] == 3
    counts = records[-1]["bank_class_counts"]
    assert sum(counts) > 0 and sum(c > 0 for c in counts) >= 8, counts
