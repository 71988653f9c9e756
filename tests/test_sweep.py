"""Sweeps (`-m`) and `summarize`: jobs in their own folders, a failed job reported, groups averaged."""

import csv
import re

import pytest

from bmb_stream.cli import main
from tests.helpers import error_line
from tests.test_faults_data import folder_args, image_folder


def test_a_sweep_runs_every_job_and_summarize_averages_each_group(tmp_path, capsys):
    root = image_folder(tmp_path / "data", {"a": 6, "b": 4, "c": 3}, {"a": 2, "b": 2, "c": 2})
    args = [a for a in folder_args(root, tmp_path) if not a.startswith("run.dir=")]
    sweep = tmp_path / "sweep"
    assert main(["-m", *args, "seed=0,1", "method=supervised,fixmatch", f"run.dir={sweep}"]) == 0
    out = capsys.readouterr().out
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["seed=0,method=fixmatch", "seed=0,method=supervised", "seed=1,method=fixmatch",
                    "seed=1,method=supervised"]
    assert all((sweep / job / "summary.json").is_file() for job in jobs)
    assert "sweep job 4/4" in out and re.search(r"method=fixmatch +final", out)  # the closing table, by method
    rows = list(csv.DictReader((sweep / "runs_summary.csv").open()))
    assert (sweep / "runs_curves.png").stat().st_size > 0
    assert {r["group"] for r in rows} == {"method=fixmatch", "method=supervised"} and {r["n"] for r in rows} == {"2"}

    (tmp_path / "stopped").mkdir()
    (tmp_path / "stopped" / "config.yaml").write_text((sweep / jobs[0] / "config.yaml").read_text())
    assert main(["summarize", str(sweep / jobs[0]), str(sweep / jobs[2]), str(tmp_path / "stopped"),
                 f"out={tmp_path / 'tables'}"]) == 0
    out = capsys.readouterr().out
    assert f"not finished, not averaged: {tmp_path / 'stopped'}" in out and re.search(r"all runs +final", out)
    assert "| all runs | mean_last_20 |" in (tmp_path / "tables" / "runs_summary.md").read_text()
    assert (tmp_path / "tables" / "runs_curves.png").is_file()


def test_a_failed_job_is_reported_and_the_sweep_goes_on(tmp_path, capsys):
    root = image_folder(tmp_path / "data", {"a": 6, "b": 4, "c": 3}, {"a": 2, "b": 2, "c": 2})
    args = [a for a in folder_args(root, tmp_path, "dataset.num_classes=3") if not a.startswith("run.dir=")]
    # four classes said, three folders found: that job stops when it reads the data, after the checks
    assert main(["-m", *args, "dataset.num_classes=4,3", f"run.dir={tmp_path / 'sweep'}"]) == 1
    captured = capsys.readouterr()
    assert "sweep job dataset.num_classes=4 failed (exit 2); the sweep goes on" in captured.err
    assert "1 sweep job(s) failed: dataset.num_classes=4" in captured.err
    assert (tmp_path / "sweep" / "dataset.num_classes=3" / "summary.json").is_file()


def test_a_bad_value_in_any_job_stops_the_sweep_before_it_starts(tmp_path, capsys):
    assert main(["-m", "seed=0,1", "train.steps=0", f"run.dir={tmp_path / 'sweep'}"]) == 2
    assert "train.steps=0: must be a positive integer" in error_line(capsys)
    assert not (tmp_path / "sweep").exists()
    assert main(["-m", "seed=0"]) == 2
    assert "-m sweeps several values of a key" in error_line(capsys)
    assert main(["seed=0,1"]) == 2
    assert "add -m to run one job per value" in error_line(capsys)


def test_mean_band_over_runs_at_the_steps_every_run_evaluated(tmp_path):
    from bmb_stream.evaluation.plots import group_curves, mean_band

    runs = [[{"step": 10, "balanced_acc": 0.2}, {"step": 20, "balanced_acc": 0.4}, {"step": 30, "balanced_acc": 0.9}],
            [{"step": 10, "balanced_acc": 0.4}, {"step": 20, "balanced_acc": 0.6}]]  # stopped before step 30
    x_key, x, mean, std = mean_band(runs, "balanced_acc")
    assert (x_key, x) == ("step", [10, 20])
    assert mean.tolist() == pytest.approx([0.3, 0.5]) and std.tolist() == pytest.approx([0.1414214, 0.1414214])
    stream = [[{"experience": 0, "step": 5, "samples_seen": 320, "balanced_acc": 0.5}]]
    x_key, x, mean, std = mean_band(stream, "balanced_acc")
    assert (x_key, x, mean.tolist(), std.tolist()) == ("samples_seen", [320], [0.5], [0.0])
    assert group_curves({"a": runs, "b": stream}, tmp_path / "curves.png").stat().st_size > 0
