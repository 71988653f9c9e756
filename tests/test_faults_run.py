"""Faults and bad input around a run: the mode an experiment runs in, the run directory (never
overwritten, resumed only into the same experiment), signals to the whole process group, a full
disk, wrong config values, and the messages that say what to do. Each ends with one line naming the
culprit, exit code 2 (0 for a clean stop), and earlier runs and checkpoints intact."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bmb_stream.cli import main
from bmb_stream.config import compose
from tests.helpers import error_line, wait_for
from tests.stream_helpers import metrics, png, stream_args, write_tar

ROOT = Path(__file__).resolve().parents[1]


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- the mode an experiment runs in -------------------------------------------------------------

def test_a_published_protocol_runs_offline_unless_told_otherwise():
    assert compose(["experiment=cifar10_lt_r100", "dataset.root=/tmp"]).mode == "offline"
    assert compose(["experiment=fmnist_lt_r100"]).mode == "offline"
    assert compose(["experiment=fmnist_lt_r100", "mode=stream"]).mode == "stream"
    assert compose([]).mode == "stream"  # the default job is a stream


def test_a_stream_of_another_dataset_is_refused(capsys, tmp_path):
    code = main(["--mode", "stream", "experiment=cifar10_lt_r100", "dataset.root=/tmp", f"run.dir={tmp_path / 'r'}"])
    assert code == 2
    line = error_line(capsys)
    assert "cifar10_lt" in line and "fmnist_lt_drift" in line and "--mode offline" in line
    assert not (tmp_path / "r").exists()


# --- the run directory ------------------------------------------------------------------------------

def test_a_new_run_never_overwrites_an_earlier_one(reference_run, capsys):
    before = snapshot(reference_run)
    assert main(stream_args(reference_run.parent, reference_run)) == 2
    line = error_line(capsys)
    assert f"run.dir={reference_run} already holds a run" in line and "resume=true" in line
    assert snapshot(reference_run) == before


@pytest.mark.parametrize("change, key, resume", [
    ("method.tau=0.5", "method.tau", "true"), ("model=wrn28_2", "model.name", "true"), ("seed=5", "seed", "true"),
    ("stream.shards_per_experience=2", "stream.shards_per_experience", "true"),
    ("seed=5", "seed", "auto"),  # resume=auto never starts over a run of another configuration
])
def test_resume_refuses_a_changed_experiment(fmnist_stream, reference_run, capsys, change, key, resume):
    before = snapshot(reference_run)
    assert main(stream_args(fmnist_stream, reference_run, f"resume={resume}", change)) == 2
    line = error_line(capsys)
    assert f"{key}:" in line and "changes the experiment" in line and f"resume={resume}:" in line
    assert snapshot(reference_run) == before


def test_resume_refuses_another_stream(fmnist_stream, reference_run, capsys):
    args = [a if not a.startswith("stream.urls=") else f"stream.urls={fmnist_stream}/stream-{{000000..000004}}.tar"
            for a in stream_args(fmnist_stream, reference_run, "resume=true")]
    assert main(args) == 2
    assert "stream.urls:" in error_line(capsys)


def test_resume_accepts_changes_that_do_not_change_the_experiment(fmnist_stream, reference_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    os.makedirs(copy)
    for name, data in snapshot(reference_run).items():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes(data)
    summary = json.loads((copy / "summary.json").read_text())
    assert main(stream_args(fmnist_stream, copy, "resume=true", "stream.num_workers=1", "progress=true",
                            "eval.batch_size=77")) == 0
    assert json.loads((copy / "summary.json").read_text())["final"] == summary["final"]  # nothing left to train


def test_resume_auto_starts_a_run_and_a_killed_one_restarts_to_the_uninterrupted_result(fmnist_stream,
                                                                                       reference_run, tmp_path):
    """What Slurm's requeue and torchrun --max-restarts do: the same command again after a kill."""
    args = stream_args(fmnist_stream, tmp_path / "run", "resume=auto")
    proc = subprocess.Popen([sys.executable, "-m", "bmb_stream", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    wait_for(tmp_path / "run" / "checkpoints" / "experience-000002.pt", proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and not (tmp_path / "run" / "summary.json").exists(), out
    assert main(args) == 0
    done, reference = (json.loads((d / "summary.json").read_text()) for d in (tmp_path / "run", reference_run))
    assert metrics(done) == metrics(reference)


@pytest.mark.parametrize("resume", ["true", "auto"])
def test_a_run_with_records_but_no_checkpoint_is_never_started_over(fmnist_stream, reference_run, tmp_path, resume,
                                                                    capsys):
    copy = tmp_path / "copy"
    shutil.copytree(reference_run, copy)
    shutil.rmtree(copy / "checkpoints")
    before = snapshot(copy)
    assert main(stream_args(fmnist_stream, copy, f"resume={resume}")) == 2
    assert f"resume={resume}: {copy} holds results" in error_line(capsys)
    assert snapshot(copy) == before


def test_resume_of_a_missing_run_is_refused(capsys, tmp_path):
    assert main([f"run.dir={tmp_path / 'typo'}", "resume=true"]) == 2
    line = error_line(capsys)
    assert "typo" in line and "holds no run" in line
    assert not (tmp_path / "typo").exists()


def test_resume_of_a_run_stopped_before_its_first_checkpoint_starts_it(fmnist_stream, tmp_path, capsys):
    args = stream_args(fmnist_stream, tmp_path, "stream.max_experiences=1")
    assert main(args) == 0
    for made in [*(tmp_path / "checkpoints").glob("*.pt"), tmp_path / "eval.jsonl", tmp_path / "summary.json"]:
        made.unlink()  # as a run stopped before its first checkpoint leaves its folder: no record, no checkpoint
    assert main([*args, "resume=true"]) == 0
    assert "has no checkpoint yet; the run starts from the beginning" in capsys.readouterr().out


def test_an_unwritable_run_dir_stops_before_any_data_is_read(capsys, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    start = time.time()
    assert main([f"run.dir={tmp_path / 'file' / 'run'}", "stream.recipe=no_such_recipe"]) == 2
    line = error_line(capsys)
    assert "run.dir=" in line and "cannot write there" in line
    assert time.time() - start < 30


# --- signals ----------------------------------------------------------------------------------------

def test_a_stop_takes_a_broken_worker_hand_over_as_the_stop_and_nothing_else():
    from bmb_stream.engine.stops import StopFlag

    flag = StopFlag()
    broken = (RuntimeError("DataLoader worker (pid 7) exited unexpectedly"), EOFError(), ConnectionResetError())
    assert not any(flag.stopping(e) for e in broken)  # without a stop signal these are failures
    flag.raised = "SIGTERM"
    assert all(flag.stopping(e) for e in broken)
    assert not flag.stopping(RuntimeError("CUDA out of memory")) and not flag.stopping(ValueError("bad"))


def test_sigterm_to_the_process_group_checkpoints_and_the_printed_command_resumes(fmnist_stream, tmp_path):
    """What timeout, Slurm and systemd send: the DataLoader workers get the signal too."""
    run_dir = tmp_path / "a run dir"  # a space: the printed command must quote it
    args = stream_args(fmnist_stream, run_dir, "stream.num_workers=2", "train.num_workers=1")
    proc = subprocess.Popen([sys.executable, "-m", "bmb_stream", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    wait_for(run_dir / "checkpoints" / "experience-000002.pt", proc)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "Traceback" not in out, out
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["position"]["experience"] >= 2
    command = shlex.split(next(line for line in out.splitlines() if line.startswith("resume with: "))[13:])
    # the same arguments, run.dir last: with resume=auto the one command starts or continues the run
    assert command == ["bmb-stream", *(a for a in args if not a.startswith("run.dir=")), f"run.dir={run_dir}",
                       "resume=auto"]
    assert main(command[1:]) == 0
    assert json.loads((run_dir / "summary.json").read_text())["experiences"] == 6


def test_ctrl_c_during_start_up_prints_no_traceback(fmnist_root, tmp_path):
    def as_from_a_shell():  # Ctrl-C's disposition as a terminal gives it, whatever this process inherited
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen([sys.executable, "-m", "bmb_stream", "--mode", "offline", "progress=false",
                             "model=small_cnn", "train.num_workers=0", f"run.dir={tmp_path}"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=as_from_a_shell)
    wait_for(tmp_path / "checkpoints", proc)  # the run directory is checked before the data is read
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert "Traceback" not in out, out
    assert proc.returncode in (0, 130), out  # interrupted during start-up, or stopped cleanly in training


# --- a full disk ------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path, reference_run):
    """A tmpfs that holds about three checkpoints of the small stream run (mounting needs root, as CI is)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    size = (reference_run / "checkpoints" / "last.pt").stat().st_size
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size * 3.5) // 4096 * 4096}", "tmpfs",
                              str(mount)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {mounted.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_while_checkpointing_keeps_the_last_checkpoint(fmnist_stream, small_disk, capsys):
    run_dir = small_disk / "run"
    assert main(stream_args(fmnist_stream, run_dir)) == 2
    line = error_line(capsys)
    assert "no space left on the device" in line and "the previous checkpoint is intact" in line
    assert not list(run_dir.rglob("*.tmp")), list(run_dir.rglob("*"))
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["position"]["batches"] == 0


# --- config values ----------------------------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ("optim.lr=abc", "optim.lr=abc: must be a number (positive)"),
    ("seed=abc", "seed=abc: must be an integer >= 0"),
    ("eval.batch_size=0.5", "eval.batch_size=0.5: must be a positive integer"),
    ("method.bank.capacity=0.5", "method.bank.capacity=0.5: must be a positive integer"),
    ("train.batch_labeled=true", "train.batch_labeled=true: must be a positive integer"),
    ("resume=maybe", "resume=maybe: must be true, false or auto"),
    ("method.tau=nan", "method.tau=nan: must be in (0, 1]"),
    ("train.steps=100", "train.steps applies to offline mode"),
    ("train.eval_every=10", "train.eval_every applies to offline mode"),
    ("method=bmm", "method=bmm: unknown option; accepted: abc, bmb, cdmad, fixmatch, supervised (did you mean bmb?)"),
    ("train.stpes=3", "train.stpes: no such configuration key (did you mean train.steps?)"),
    ("simualte", "did you mean 'bmb-stream simulate'?"),
    ("method=fixmatch method.bank.capacity=8", "method.bank.capacity: not a key of this configuration"),
])
def test_bad_values_stop_before_any_work(override, message, capsys, tmp_path):
    assert main([*override.split(), f"run.dir={tmp_path / 'run'}"]) == 2
    assert message in error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_train_steps_is_refused_in_stream_mode_but_read_offline():
    assert compose(["mode=offline", "train.steps=100"]).train.steps == 100


def test_device_cuda_without_a_gpu_is_one_line(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["device=cuda", f"run.dir={tmp_path}"]) == 2
    assert "device=cuda" in error_line(capsys)


# --- the stream's length and the schedule -----------------------------------------------------------

@pytest.mark.parametrize("workers", [0, 2])
def test_the_schedule_horizon_is_the_streams_length_in_steps(fmnist_stream, tmp_path, workers):
    args = stream_args(fmnist_stream, tmp_path, f"stream.num_workers={workers}", "optim.schedule=cosine")
    assert main(args) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    end = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["learner"]["scheduler"]
    middle = torch.load(tmp_path / "checkpoints" / "experience-000004.pt", weights_only=True)["learner"]["scheduler"]
    assert end["last_epoch"] == summary["steps"]
    assert end["_last_lr"][0] == pytest.approx(0.0, abs=1e-12)  # the cosine reaches 0 at the stream's end,
    assert middle["_last_lr"][0] > 1e-5  # not before


def test_labeled_stream_samples_join_the_pool_once(reference_run, fmnist_stream):
    manifest = json.loads((fmnist_stream / "manifest.json").read_text())
    summary = json.loads((reference_run / "summary.json").read_text())
    labeled_in_stream = sum(s["labeled"] for s in manifest["shards"])
    assert 0 < labeled_in_stream < 1000  # under the pool's capacity: every one is kept, once
    assert sum(summary["data"]["labeled_pool_per_class"]) == labeled_in_stream


def test_a_failing_run_with_workers_exits(tmp_path):
    """An error raised in a DataLoader worker ends the process too, not only main()."""
    for s in range(4):
        write_tar(tmp_path / f"stream-{s:06d}.tar", [(f"s{s}-{j}", {"png": b"\x89PNG broken" if (s, j) == (2, 3) else png(j)})
                                                    for j in range(8)])
    for name in ("labeled", "test"):
        write_tar(tmp_path / f"{name}-000000.tar", [(f"{name}{j}", {"png": png(j), "cls": str(j % 2).encode()})
                                                     for j in range(8)])
    proc = subprocess.run([sys.executable, "-m", "bmb_stream", f"stream.urls={tmp_path}", "dataset.num_classes=2",
                           f"run.dir={tmp_path / 'run'}", "progress=false", "stream.num_workers=2",
                           "train.batch_labeled=4", "train.batch_unlabeled=4", "method.bank.capacity=8",
                           "method.bank.draw=4", "eval.batch_size=16"], cwd=ROOT, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "sample s2-3 in" in proc.stderr
