"""The run folder under hostile conditions: two runs into one folder, resuming a folder whose last
checkpoint is gone, empty or of another layout, a config.yaml emptied or stripped, a folder that holds
other files, and training that diverges. Each ends with one line naming the cause and the fix (exit 2),
or continues from what the folder really holds; nothing that was there before is changed."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bmb_stream.cli import main
from tests.helpers import error_line
from tests.test_faults_run import snapshot
from tests.test_faults_shards import TINY, good_manifest, stream_folder

ROOT = Path(__file__).resolve().parents[1]


def args_for(folder: Path, run_dir: Path, *extra) -> list[str]:
    """A run over `folder`'s four tiny shards, one experience each (every boundary is checkpointed)."""
    return [*TINY, f"stream.urls={folder}", "stream.shards_per_experience=1", f"run.dir={run_dir}", *extra]


@pytest.fixture(scope="module")
def tiny_stream(tmp_path_factory) -> Path:
    return stream_folder(tmp_path_factory.mktemp("tiny") / "stream", shards=4, manifest=good_manifest(4))


@pytest.fixture(scope="module")
def finished(tiny_stream, tmp_path_factory) -> Path:
    """A finished run: config.yaml, eval.jsonl, summary.json, last.pt and three experience checkpoints."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    assert main(args_for(tiny_stream, run_dir)) == 0
    return run_dir


def copy_of(run_dir: Path, to: Path) -> Path:
    for name, data in snapshot(run_dir).items():
        (to / name).parent.mkdir(parents=True, exist_ok=True)
        (to / name).write_bytes(data)
    return to


def final_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())["final"]


def refused(run_dir: Path, tiny_stream: Path, capsys, *extra) -> str:
    """Resume `run_dir` with `extra`: exit 2, one line (returned), every file of the folder as it was."""
    before = snapshot(run_dir)
    assert main(args_for(tiny_stream, run_dir, "resume=true", *extra)) == 2
    line = error_line(capsys)
    assert snapshot(run_dir) == before, line
    return line


def only_last(finished: Path, to: Path) -> Path:
    """A copy of the finished run with last.pt alone among its checkpoints."""
    run_dir = copy_of(finished, to)
    for old in (run_dir / "checkpoints").glob("experience-*.pt"):
        old.unlink()
    return run_dir


# --- two runs into one folder ------------------------------------------------------------------------

HOLD = """
import sys, time
from bmb_stream.storage.locks import FolderLock
lock = FolderLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("resume", [False, True])
def test_a_folder_in_use_by_another_run_is_refused_naming_its_pid(finished, tmp_path, tiny_stream, capsys, resume):
    run_dir = copy_of(finished, tmp_path / "run") if resume else tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(run_dir)
        assert main(args_for(tiny_stream, run_dir, *(["resume=true"] if resume else []))) == 2
        line = error_line(capsys)
        assert f"run.dir={run_dir} is in use by another run (PID {holder.pid})" in line, line
        assert snapshot(run_dir) == before
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the lock of the killed holder: nothing stale stops the next run
    assert main(args_for(tiny_stream, run_dir, *(["resume=true"] if resume else []))) == 0


def test_two_runs_started_together_into_one_folder_one_runs_the_other_is_refused(tiny_stream, tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "bmb_stream", *args_for(tiny_stream, run_dir)]
    procs = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outputs
    refused = next(err for p, (_, err) in zip(procs, outputs) if p.returncode == 2)
    assert "Traceback" not in refused and ("is in use by another run (PID " in refused or "already holds a run" in refused)
    records = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
    assert [r["experience"] for r in records] == [0, 1, 2, 3]  # one run's records, once each
    assert (run_dir / "log.txt").read_text().count("experience 3") <= 1


# --- resume=true continues from what the folder holds, or refuses ------------------------------------

def test_resume_without_last_pt_continues_from_the_newest_experience_checkpoint(finished, tiny_stream, tmp_path, capsys):
    run_dir = copy_of(finished, tmp_path / "run")
    (run_dir / "checkpoints" / "last.pt").unlink()
    (run_dir / "checkpoints" / "experience-000004.pt").unlink()  # the last experience is trained again
    assert main(args_for(tiny_stream, run_dir, "resume=true")) == 0
    assert "resumed from " + str(run_dir / "checkpoints" / "experience-000003.pt") in capsys.readouterr().out
    assert final_of(run_dir) == final_of(finished)
    records = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
    assert [r["experience"] for r in records] == [0, 1, 2, 3]


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_an_unreadable_last_pt_resumes_from_a_kept_checkpoint_and_says_why(finished, tiny_stream, tmp_path, capsys,
                                                                             damage):
    run_dir = copy_of(finished, tmp_path / "run")
    last = run_dir / "checkpoints" / "last.pt"
    data = last.read_bytes()
    last.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"\x00not a checkpoint"}[damage])
    for kept in ("experience-000004.pt", "experience-000003.pt"):  # the newest kept ones are damaged too
        (run_dir / "checkpoints" / kept).write_bytes(b"")
    assert main(args_for(tiny_stream, run_dir, "resume=true")) == 0
    captured = capsys.readouterr()
    assert "last.pt cannot be loaded: " in captured.err and "experience-000002.pt" in captured.err
    if damage == "empty":
        assert "the file is empty" in captured.err
    assert final_of(run_dir) == final_of(finished)  # replayed exactly from experience 2


@pytest.mark.parametrize("kept", ["none", "all damaged"])
def test_results_without_a_loadable_checkpoint_are_refused_and_kept(finished, tiny_stream, tmp_path, capsys, kept):
    run_dir = copy_of(finished, tmp_path / "run")
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"")
    for old in (run_dir / "checkpoints").glob("experience-*.pt"):
        old.unlink() if kept == "none" else old.write_bytes(b"\x80\x02truncated")
    line = refused(run_dir, tiny_stream, capsys)
    assert "last.pt cannot be loaded: the file is empty" in line and "start another run.dir" in line, line


def test_records_without_any_checkpoint_are_refused_and_kept(finished, tiny_stream, tmp_path, capsys):
    run_dir = copy_of(finished, tmp_path / "run")
    for old in (run_dir / "checkpoints").glob("*.pt"):
        old.unlink()
    line = refused(run_dir, tiny_stream, capsys)
    assert "holds results (eval.jsonl, summary.json) but no checkpoint" in line, line


def _foreign(state: dict, shape: str):
    if shape == "newer layout":
        return {**state, "format": 99}
    if shape == "no learner":
        return {k: v for k, v in state.items() if k != "learner"}
    if shape == "a tensor":
        return torch.zeros(3)
    if shape == "a list":
        return [state["learner"]]
    if shape == "another model":
        model = {k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) if v.dim() else v
                 for k, v in state["learner"]["model"].items()}
        return {**state, "learner": {**state["learner"], "model": model}}
    if shape == "learner without step":
        return {**state, "learner": {k: v for k, v in state["learner"].items() if k != "step"}}
    raise ValueError(shape)


@pytest.mark.parametrize("shape", ["newer layout", "no learner", "a tensor", "a list", "another model",
                                   "learner without step"])
def test_a_checkpoint_of_another_layout_is_one_line(finished, tiny_stream, tmp_path, capsys, shape):
    run_dir = only_last(finished, tmp_path / "run")
    last = run_dir / "checkpoints" / "last.pt"
    torch.save(_foreign(torch.load(last, weights_only=True), shape), last)
    line = refused(run_dir, tiny_stream, capsys)
    assert "written by another version of bmb-stream" in line and "last.pt" in line, line


def test_a_checkpoint_holding_python_objects_is_not_unpickled(finished, tiny_stream, tmp_path, capsys):
    run_dir = only_last(finished, tmp_path / "run")
    last = run_dir / "checkpoints" / "last.pt"
    torch.save({**torch.load(last, weights_only=True), "extra": argparse.Namespace(x=1)}, last)
    line = refused(run_dir, tiny_stream, capsys)
    assert "last.pt cannot be loaded" in line and "not loaded (untrusted)" in line, line


# --- the experience is checked against the checkpoint, not config.yaml alone ------------------------

@pytest.mark.parametrize("edit", ["empty", "stripped", "edited", "deleted"])
def test_resume_checks_the_experience_against_the_checkpoints_config(finished, tiny_stream, tmp_path, capsys, edit):
    run_dir = copy_of(finished, tmp_path / "run")
    config = run_dir / "config.yaml"
    if edit == "deleted":
        config.unlink()
    else:
        config.write_text({"empty": "", "stripped": "seed: 0\n",
                           "edited": config.read_text().replace("tau: 0.95", "tau: 0.5")}[edit])
    line = refused(run_dir, tiny_stream, capsys, "method.tau=0.5")
    assert "method.tau: 0.95 -> 0.5" in line and "changes the experiment" in line, line


# --- a folder that holds other files -----------------------------------------------------------------

@pytest.mark.parametrize("found", [["notes.txt"], ["data/"], [".git/", "train.py"], ["stream-000000.tar"]])
def test_a_new_run_refuses_a_folder_of_other_files(tiny_stream, tmp_path, capsys, found):
    run_dir = tmp_path / "project"
    for name in found:
        (run_dir / name.rstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name.rstrip("/")).mkdir() if name.endswith("/") else (run_dir / name).write_text("mine")
    before = snapshot(run_dir)
    assert main(args_for(tiny_stream, run_dir)) == 2
    line = error_line(capsys)
    assert f"run.dir={run_dir} is not empty and holds no bmb-stream run" in line and "run.allow_nonempty=true" in line
    assert all(name.rstrip("/") in line for name in found), line
    assert snapshot(run_dir) == before and sorted(p.name for p in run_dir.iterdir()) == sorted(
        name.rstrip("/").split("/")[0] for name in found)


def test_a_folder_of_other_files_is_used_when_the_user_says_so(tiny_stream, tmp_path):
    run_dir = tmp_path / "project"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    assert main(args_for(tiny_stream, run_dir, "run.allow_nonempty=true")) == 0
    assert (run_dir / "notes.txt").read_text() == "mine" and (run_dir / "summary.json").exists()


def test_a_folder_left_by_a_start_that_failed_takes_a_new_run(tiny_stream, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / ".lock").write_text("12345\n")  # left by a process that is gone: its lock went with it
    assert main(args_for(tiny_stream, run_dir)) == 0


# --- training that diverges --------------------------------------------------------------------------

@pytest.mark.parametrize("optim", [["optim.lr=1e30"], ["optim.name=sgd", "optim.lr=1e30"]])
def test_training_that_diverges_stops_with_one_line_and_keeps_finite_checkpoints(tiny_stream, tmp_path, capsys,
                                                                                  optim):
    run_dir = tmp_path / "run"
    assert main(args_for(tiny_stream, run_dir, *optim)) == 2
    line = error_line(capsys)
    assert line.startswith("bmb-stream: error: training diverged:") and "optim.lr" in line, line
    assert not (run_dir / "summary.json").exists()
    for path in (run_dir / "checkpoints").glob("*.pt"):
        model = torch.load(path, weights_only=True)["learner"]["model"]
        assert all(torch.isfinite(v).all() for v in model.values() if v.is_floating_point()), path


# --- what a checkpoint carries is checked before it is trusted --------------------------------------

@pytest.mark.parametrize("config", ["- a\n- b\n", "{}", 123, ""])
def test_a_checkpoint_whose_configuration_is_not_one_is_refused(finished, tiny_stream, tmp_path, capsys, config):
    run_dir = only_last(finished, tmp_path / "run")
    last = run_dir / "checkpoints" / "last.pt"
    torch.save({**torch.load(last, weights_only=True), "config": config}, last)
    line = refused(run_dir, tiny_stream, capsys, "seed=5", "optim.lr=0.77")
    assert "written by another version of bmb-stream" in line, line


def test_a_checkpoint_of_an_earlier_version_resumes_only_where_config_yaml_vouches(finished, tiny_stream, tmp_path,
                                                                                   capsys):
    """Checkpoints written before they carried their configuration: config.yaml must hold the run's keys."""
    run_dir = copy_of(finished, tmp_path / "run")
    (run_dir / "checkpoints" / "experience-000004.pt").unlink()
    for path in (run_dir / "checkpoints").glob("*.pt"):
        state = torch.load(path, weights_only=True)
        torch.save({k: v for k, v in state.items() if k not in ("config", "format")}, path)
    (run_dir / "checkpoints" / "last.pt").unlink()
    full = (run_dir / "config.yaml").read_text()
    (run_dir / "config.yaml").write_text("seed: 0\n")
    line = refused(run_dir, tiny_stream, capsys, "optim.lr=0.77")
    assert "config.yaml lacks keys of the run's configuration" in line, line
    (run_dir / "config.yaml").write_text(full)  # whole again: the earlier checkpoint resumes exactly
    assert main(args_for(tiny_stream, run_dir, "resume=true")) == 0
    assert final_of(run_dir) == final_of(finished)


@pytest.mark.parametrize("where", ["model buffer", "ema weight"])
def test_a_checkpoint_holding_nan_is_refused(finished, tiny_stream, tmp_path, capsys, where):
    run_dir = only_last(finished, tmp_path / "run")
    last = run_dir / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    learner = state["learner"]
    tensors = learner["model"] if where == "model buffer" else learner["ema"]["module"]
    name = next(k for k in tensors if ("running_var" in k) == (where == "model buffer") and tensors[k].is_floating_point())
    tensors[name].view(-1)[0] = float("nan")
    torch.save(state, last)
    line = refused(run_dir, tiny_stream, capsys, "stream.max_experiences=null")
    assert "holds NaN or infinite weights" in line, line


def test_a_checkpoint_of_junk_bytes_says_so(finished, tiny_stream, tmp_path, capsys):
    run_dir = only_last(finished, tmp_path / "run")
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"ju" + bytes(range(256)) * 4)
    assert main(args_for(tiny_stream, run_dir, "resume=true")) == 2
    assert "not a PyTorch checkpoint, or a damaged one" in error_line(capsys)


@pytest.mark.parametrize("resume", [False, True])
def test_a_run_dir_name_too_long_is_one_line(tiny_stream, tmp_path, capsys, resume):
    run_dir = tmp_path / ("r" * 300)
    assert main(args_for(tiny_stream, run_dir, *(["resume=true"] if resume else []))) == 2
    line = error_line(capsys)
    assert "run.dir=" in line and ("File name too long" in line or "holds no run" in line), line
