"""Data-parallel training under torchrun on the CPU (gloo, 2 ranks): one learner state on every
rank, one run directory, and a stop that reaches every rank."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.distributed_worker import bank_steps
from tests.helpers import wait_for
from tests.stream_helpers import FAST, metrics, stream_args

pytestmark = pytest.mark.distributed
ROOT = Path(__file__).resolve().parents[1]
WORKER = str(ROOT / "tests" / "distributed_worker.py")
SMALL = ["mode=offline", "experiment=demo", "train.batch_labeled=16", "train.batch_unlabeled=16",
         "train.num_workers=0", "progress=false"]


def torchrun(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             *args], cwd=kw.get("cwd", ROOT), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finished(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def test_two_ranks_of_24_and_40_candidates_fill_the_bank_as_one_rank_of_64(tmp_path):
    finished(torchrun(WORKER, "bank", str(tmp_path)))
    bank_steps(tmp_path)  # the single-process reference: a world of one rank takes all 64
    reference = torch.load(tmp_path / "bank-world1-rank0.pt", weights_only=True)
    assert 0 < reference["bank"]["labels"].numel() < 40 * 6  # filled, with admissions and evictions
    for rank in (0, 1):
        state = torch.load(tmp_path / f"bank-world2-rank{rank}.pt", weights_only=True)
        for key in ("features", "labels", "generator"):
            assert torch.equal(state["bank"][key], reference["bank"][key]), key
        for key in ("losses", "nhat", "origin"):
            assert torch.equal(state[key], reference[key]), key


def same_except(a: dict, b: dict, key: str) -> list[str]:
    return [k for k in a if k != key and a[k] != b[k]]


def test_twenty_real_steps_leave_one_learner_state_on_every_rank(tmp_path):
    run_dir = tmp_path / "run"
    finished(torchrun(WORKER, "train", str(tmp_path), *SMALL, "train.steps=20", "train.eval_every=10",
                      f"run.dir={run_dir}"))
    rank0, rank1 = (torch.load(tmp_path / f"train-rank{r}.pt", weights_only=True) for r in (0, 1))
    # parameters, batch-norm buffers, optimizer, EMA, bank and Nhat hash equal on both ranks
    assert same_except(rank0, rank1, "first_batches") == []
    # each rank trains on its own images, augmented with its own random stream
    assert all(a != b for a, b in zip(rank0["first_batches"], rank1["first_batches"]))
    # rank 0 alone writes the run directory: one record per evaluation
    assert len((run_dir / "eval.jsonl").read_text().splitlines()) == 2
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 20 and summary["samples_seen"] == 20 * 2 * 16
    assert sum(summary["data"]["test_per_class"]) == 10_000
    # each rank evaluated half of the test set: the summed counts are one process's over all of it
    last = json.loads((run_dir / "eval.jsonl").read_text().splitlines()[-1])
    alone = evaluate_alone([*SMALL, "train.steps=20", "train.eval_every=10"], run_dir / "checkpoints" / "last.pt",
                           tmp_path)
    assert last["per_class_acc"] == alone["per_class_acc"] and last["raw_balanced_acc"] == alone["raw_balanced_acc"]
    assert last["top1_acc"] == pytest.approx(alone["top1_acc"]) and last["test_loss"] == pytest.approx(alone["test_loss"])


def evaluate_alone(overrides: list[str], checkpoint: Path, tmp_path: Path) -> dict:
    """A checkpoint's models evaluated by one process over the whole test set."""
    from bmb_stream.config import compose, typed
    from bmb_stream.datasets import build_split
    from bmb_stream.engine.learner import Learner
    from bmb_stream.evaluation.evaluator import Evaluator

    cfg = typed(compose([*overrides, f"run.dir={tmp_path / 'alone'}"]))
    split = build_split(cfg.dataset, seed=cfg.seed, progress=False)
    learner = Learner(cfg, split.num_classes, split.labeled_per_class, torch.device("cpu"))
    learner.load_state_dict(torch.load(checkpoint, weights_only=True)["learner"])
    evaluator = Evaluator(split.test, split.num_classes, split.labeled_per_class, torch.device("cpu"),
                          batch_size=cfg.eval.batch_size)
    return evaluator.evaluate(learner.evaluated_model(), learner.raw_model())


def launch_logged(log: Path, *args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                 "2", *args], cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)


def test_sigterm_to_the_launcher_stops_every_rank_at_one_step_with_a_checkpoint_that_resumes(tmp_path):
    log = tmp_path / "log.txt"
    proc = launch_logged(log, "-m", "bmb_stream", *SMALL, "train.steps=400", "train.eval_every=10", cwd=tmp_path)
    wait_for(log, proc, text="step 10:")
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    out = log.read_text()
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, runs  # the default run.dir's timestamp is rank 0's, on every rank
    assert "stopped by SIGTERM at step" in out and "resume with: torchrun --nproc_per_node 2 -m bmb_stream" in out
    stopped_at = int(out.split("stopped by SIGTERM at step ")[1].split(";")[0])
    assert (runs[0] / "checkpoints" / "last.pt").exists() and not (runs[0] / "summary.json").exists()
    resumed = launch_logged(tmp_path / "resumed.txt", "-m", "bmb_stream", *SMALL, f"train.steps={stopped_at + 3}",
                            "train.eval_every=10", f"run.dir={runs[0]}", "resume=true", cwd=tmp_path)
    assert resumed.wait(timeout=300) == 0, (tmp_path / "resumed.txt").read_text()[-3000:]
    assert f"at step {stopped_at}" in (tmp_path / "resumed.txt").read_text()
    assert json.loads((runs[0] / "summary.json").read_text())["steps"] == stopped_at + 3


def stream_on_two_ranks(tmp_path: Path, folder: Path, *extra: str) -> dict:
    run_dir = tmp_path / "run"
    finished(torchrun("-m", "bmb_stream", "--mode", "stream", *stream_args(folder, run_dir, *extra)))
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def two_rank_stream(tmp_path_factory, fmnist_stream) -> Path:
    """An uninterrupted 2-rank run over the small stream, 2 shards per experience."""
    tmp_path = tmp_path_factory.mktemp("two_ranks")
    stream_on_two_ranks(tmp_path, fmnist_stream, "stream.shards_per_experience=2")
    return tmp_path / "run"


def test_a_two_rank_stream_reads_every_sample_once_and_evaluates_the_whole_test_set(two_rank_stream, reference_run):
    summary = json.loads((two_rank_stream / "summary.json").read_text())
    one_rank = json.loads((reference_run / "summary.json").read_text())
    # each rank reads its own shard of each experience: half the steps of one rank, the same images
    assert summary["steps"] * 2 == one_rank["steps"] and summary["samples_seen"] == one_rank["samples_seen"]
    for key in ("unlabeled_per_class", "labeled_per_class", "test_per_class", "labeled_pool_per_class"):
        assert summary["data"][key] == one_rank["data"][key], key
    assert summary["experiences"] == 3 and summary["evaluations"] == 3 and summary["untrained_batches"] == 0
    assert sum(summary["data"]["test_per_class"]) == 500


@pytest.mark.parametrize("workers", [0, 1])
def test_two_ranks_augment_the_same_images_differently_in_a_stream(tmp_path, fmnist_stream, workers):
    """Experience 0 of two identical shards: each rank reads one, so both get the same images in the
    same order, and their views differ (each rank's augmentation, in the main process or in its worker,
    has its own random stream)."""
    import shutil

    folder = tmp_path / "stream"
    shutil.copytree(fmnist_stream, folder)
    shutil.copyfile(folder / "stream-000000.tar", folder / "stream-000001.tar")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["shards"][1] = {**manifest["shards"][0], "file": "stream-000001.tar"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    shards = ",".join(f"'{folder}/stream-00000{i}.tar'" for i in (0, 1))
    finished(torchrun(WORKER, "stream", str(tmp_path), "mode=stream", f"stream.urls=[{shards}]", f"run.dir={tmp_path / 'run'}",
                      *FAST, "stream.shards_per_experience=2", f"stream.num_workers={workers}"))
    rank0, rank1 = (torch.load(tmp_path / f"stream-rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0["samples"] == rank1["samples"]
    assert rank0["views"] != rank1["views"]


def test_uneven_shares_and_a_shard_skipped_on_one_rank_end_without_a_hang(tmp_path, fmnist_stream):
    import shutil

    folder = tmp_path / "stream"
    shutil.copytree(fmnist_stream, folder)
    damaged = folder / "stream-000001.tar"  # rank 1's shard of the first experience
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    # 3 shards per experience: rank 0 reads 2, rank 1 reads 1 (half of it, under skip)
    summary = stream_on_two_ranks(tmp_path, folder, "stream.shards_per_experience=3", "stream.on_shard_error=skip")
    assert summary["experiences"] == 2
    assert [s["url"] for s in summary["skipped_shards"]] == [str(damaged)]
    assert summary["untrained_batches"] > 0  # rank 0's longer share, read to its end


def resumed_stream_summary(tmp_path: Path, args: list[str]) -> dict:
    """The numbers of a stopped 2-rank stream run (run.dir=tmp_path/run) once resumed to its end."""
    resumed = launch_logged(tmp_path / "resumed.txt", "-m", "bmb_stream", "--mode", "stream", *args, "resume=true",
                            cwd=ROOT)
    assert resumed.wait(timeout=300) == 0, (tmp_path / "resumed.txt").read_text()[-3000:]
    return metrics(json.loads((tmp_path / "run" / "summary.json").read_text()))


def test_sigterm_mid_experience_resumes_a_two_rank_stream_exactly(tmp_path, fmnist_stream, two_rank_stream):
    log, run_dir = tmp_path / "log.txt", tmp_path / "run"
    args = stream_args(fmnist_stream, run_dir, "stream.shards_per_experience=2", "train.log_every=1")
    proc = launch_logged(log, "-m", "bmb_stream", "--mode", "stream", *args, cwd=ROOT)
    wait_for(log, proc, text="experience 0:")
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    if state["position"]["batches"] == 0:
        pytest.skip("the stop fell on an experience boundary; the mid-experience case was not exercised")
    assert len(state["position"]["rank_batches"]) == 2 and len(state["learner"]["rank_rng"]) == 2
    assert resumed_stream_summary(tmp_path, args) == metrics(json.loads((two_rank_stream / "summary.json").read_text()))


def test_a_killed_rank_ends_the_launch_and_the_run_resumes_as_if_never_stopped(tmp_path, fmnist_stream,
                                                                                two_rank_stream):
    import psutil

    log, run_dir = tmp_path / "log.txt", tmp_path / "run"
    args = stream_args(fmnist_stream, run_dir, "stream.shards_per_experience=2")
    proc = launch_logged(log, "-m", "bmb_stream", "--mode", "stream", *args, cwd=ROOT)
    wait_for(log, proc, text="experience 0:")
    time.sleep(0.5)
    ranks = [p for p in psutil.Process(proc.pid).children() if "bmb_stream" in " ".join(p.cmdline())]
    assert len(ranks) == 2
    started = time.time()
    ranks[1].kill()
    proc.wait(timeout=120)  # torchrun ends the other rank: well inside the process group's timeout (10 minutes)
    assert proc.returncode != 0 and time.time() - started < 120
    assert not (run_dir / "summary.json").exists()
    assert resumed_stream_summary(tmp_path, args) == metrics(json.loads((two_rank_stream / "summary.json").read_text()))
