"""The run's loggers (engine/loggers.py) and what a run prints (engine/progress.py), on hand-made records;
then a short offline run's step log, TensorBoard scalars, plain lines and W&B (offline mode)."""

import json
from types import SimpleNamespace

import pytest
import torch

from bmb_stream.engine.loggers import CSV_COLUMNS, RunLoggers, StepScalars
from bmb_stream.engine.progress import PlainLines

RECORD = {"top1_acc": 0.5556, "balanced_acc": 0.5, "raw_top1_acc": 0.5, "raw_balanced_acc": 0.4, "test_loss": 1.2,
          "per_class_acc": [0.5, 0.5], "bwt": -0.1}


def tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_evaluations_go_to_log_csv_and_tensorboard_and_a_resumed_run_counts_on(tmp_path):
    loggers = RunLoggers(tmp_path)
    loggers.evaluation(RECORD, 50)
    loggers.evaluation({**RECORD, "top1_acc": 1.0, "bank_purity": 0.75}, None)  # no step: the evaluation's index
    loggers.close()
    resumed = RunLoggers(tmp_path)
    resumed.evaluation({**RECORD, "top1_acc": 0.25})
    resumed.close()
    rows = (tmp_path / "csv" / "eval_results.csv").read_text().splitlines()
    assert rows[0] == ",".join(CSV_COLUMNS) and len(rows) == 4
    assert rows[1].startswith("50,0.5556,0.5000,") and rows[2].startswith("1,1.0000,") and rows[3].startswith("2,0.2500,")
    assert dict(zip(CSV_COLUMNS, rows[1].split(",")))["bwt"] == "-0.1000"
    lines = (tmp_path / "log.txt").read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("step 50: top1_acc 0.5556") and "bwt -0.1000" in lines[0]
    scalars = tensorboard_scalars(tmp_path / "tensorboard")
    assert sorted(s for s, _ in scalars["balanced_acc"]) == [1, 2, 50]
    assert scalars["bank_purity"] == [(1, 0.75)] and "per_class_acc" not in scalars


def test_an_older_runs_csv_gains_the_new_columns_and_keeps_its_rows(tmp_path):
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "eval_results.csv").write_text("step,top1_acc,balanced_acc\n10,0.5000,0.4000\n")
    loggers = RunLoggers(tmp_path)
    loggers.evaluation(RECORD, 20)
    loggers.close()
    lines = (tmp_path / "csv" / "eval_results.csv").read_text().splitlines()
    assert lines[0] == ",".join(CSV_COLUMNS) and len(lines) == 3
    first = dict(zip(CSV_COLUMNS, lines[1].split(",")))
    assert (first["step"], first["top1_acc"], first["balanced_acc"], first["bwt"]) == ("10", "0.5000", "0.4000", "")
    assert lines[2].startswith("20,") and loggers.evaluations == 2


def test_a_disabled_logger_writes_nothing(tmp_path):
    loggers = RunLoggers(tmp_path / "run", enabled=False)
    loggers.evaluation(RECORD, 1)
    loggers.steps({"loss": 1.0}, 1)
    loggers.close()
    assert not (tmp_path / "run").exists()


def test_step_scalars_average_the_terms_between_reads():
    meter = StepScalars()
    for loss, mask in ((1.0, 0.0), (2.0, 0.5), (3.0, 1.0)):
        meter.add({"loss": torch.tensor(loss), "mask": torch.tensor(mask), "lr": 0.1}, images=10, seconds=0.5,
                  waited_s=0.1)
    values = meter.read()
    assert values["loss"] == pytest.approx(2.0) and values["mask"] == pytest.approx(0.5) and "lr" not in values
    assert values["img_per_s"] == pytest.approx(20.0) and values["data_wait"] == pytest.approx(0.2)
    meter.add({"loss": torch.tensor(5.0)}, images=1, seconds=2.0, waited_s=1.5)
    again = meter.read()  # the steps since the last read only
    assert again == {"loss": 5.0, "img_per_s": 0.5, "data_wait": 0.75}


def test_a_resumed_run_drops_the_step_lines_after_its_checkpoint(tmp_path):
    loggers = RunLoggers(tmp_path)
    for step in (5, 10, 15, 20):
        loggers.steps({"loss": step / 10, "lr": 0.01, "bank_purity": None}, step)
    loggers.close()
    resumed = RunLoggers(tmp_path)
    resumed.resume_at(10)
    resumed.steps({"loss": 9.0}, 15)
    resumed.close()
    lines = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in lines] == [(5, 0.5), (10, 1.0), (15, 9.0)]
    assert "bank_purity" not in lines[0]  # unknown values are left out, not written as null
    assert [s for s, _ in tensorboard_scalars(tmp_path / "tensorboard")["train/loss"]] == [5, 10, 15]


def test_plain_lines_one_per_log_point_without_carriage_returns(capsys):
    lines = PlainLines(total=100, initial=0, desc="bmb offline")
    for step in range(1, 21):
        lines.update()
        if step % 10 == 0:
            lines.show({"loss": 1.234, "lr": 0.002, "img_per_s": 1234.5, "ignored": 1.0}, where="2/5")
    lines.write("step 20: balanced acc 0.5")
    out = capsys.readouterr().out
    assert "\r" not in out
    shown = out.splitlines()
    assert len(shown) == 3 and shown[0].startswith("bmb offline step 10/100 (10%), eta ")
    assert "experience 2/5: loss 1.23, lr 0.002, img_per_s 1234" in shown[0] and "ignored" not in shown[0]
    PlainLines(total=None, initial=0, desc="x", disable=True).show({"loss": 1.0})
    assert capsys.readouterr().out == ""


def test_wandb_gets_the_same_scalars_in_offline_mode(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged = []
    original = wandb.Run.log

    def spy(self, data, step=None, **kw):
        logged.append((step, dict(data)))
        return original(self, data, step=step, **kw)

    monkeypatch.setattr(wandb.Run, "log", spy)
    cfg = SimpleNamespace(enabled=True, project="p", entity=None, name=None, group=None, tags=[], mode="offline")
    loggers = RunLoggers(tmp_path / "run", wandb_cfg=cfg, config={"seed": 0})
    loggers.steps({"loss": 1.5, "lr": 0.01}, 5)
    loggers.evaluation(RECORD, 10)
    loggers.close()
    assert logged[0] == (5, {"train/loss": 1.5, "train/lr": 0.01})
    assert logged[1][0] == 10 and logged[1][1]["balanced_acc"] == 0.5 and logged[1][1]["bwt"] == -0.1
    run_id = (tmp_path / "run" / "wandb" / "run-id").read_text().strip()
    (stored,) = (tmp_path / "run" / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    assert b"train/loss" in stored.read_bytes() and b"balanced_acc" in stored.read_bytes()
    again = RunLoggers(tmp_path / "run", wandb_cfg=cfg)  # a resumed run continues the same W&B run
    again.steps({"loss": 1.0}, 15)
    again.close()
    assert (tmp_path / "run" / "wandb" / "run-id").read_text().strip() == run_id


def test_a_short_offline_run_logs_every_fifth_step_and_prints_plain_lines_to_a_file(offline_run):
    run_dir, text = offline_run  # stdout was a file, as under Slurm or nohup: no bar, plain lines
    assert "\r" not in text
    step_lines = [line for line in text.splitlines() if line.startswith("bmb offline step ")]
    assert [line.split()[3].split("/")[0] for line in step_lines] == ["5", "10", "15", "20"]
    scalars = tensorboard_scalars(run_dir / "tensorboard")
    for name in ("loss", "loss_l", "loss_l_bal", "loss_u", "loss_u_bal", "loss_mb", "mask", "mask_std", "lr",
                 "img_per_s", "data_wait", "pseudo_label_acc", "bank_size"):
        assert sorted(s for s, _ in scalars[f"train/{name}"]) == [5, 10, 15, 20], name
    steps = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps] == [5, 10, 15, 20] and steps[0]["lr"] == pytest.approx(0.002)
    assert all(0 <= r["mask"] <= 1 and 0 <= r["pseudo_label_acc"] <= 1 and r["bank_size"] >= 0 for r in steps)
    assert sorted(s for s, _ in scalars["balanced_acc"]) == [10, 20]
