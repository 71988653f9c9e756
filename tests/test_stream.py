"""Stream mode end to end on real Fashion-MNIST shards: the run directory, exact resume after SIGKILL
and SIGTERM, state continuity across experiences, flat memory, and hand-written shards."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bmb_stream.cli import main
from bmb_stream.simulation.recipes import load_recipe
from bmb_stream.simulation.simulate import simulate
from tests.helpers import wait_for
from tests.stream_helpers import FAST, metrics, png, stream_args, write_tar

ROOT = Path(__file__).resolve().parents[1]


def test_stream_run_directory_and_metrics(reference_run):
    summary = json.loads((reference_run / "summary.json").read_text())
    assert summary["mode"] == "stream" and summary["experiences"] == 6
    assert summary["samples_seen"] == 2 * 6 * 96  # the demo experiment reads each experience twice
    records = [json.loads(line) for line in (reference_run / "eval.jsonl").read_text().splitlines()]
    assert [r["experience"] for r in records] == list(range(6))
    for key in ("experience", "samples_seen", "balanced_acc", "raw_balanced_acc", "top1_acc", "per_class_acc",
                "many_acc", "medium_acc", "few_acc", "bank_class_counts", "class_weights",
                "pseudo_label_precision", "pseudo_label_recall"):
        assert key in records[-1], key
    assert summary["final"]["balanced_acc"] > 0.2  # 10 classes: chance is 0.1
    assert summary["final"]["balanced_acc"] > records[0]["balanced_acc"]  # it learns along the stream
    assert sum(summary["data"]["unlabeled_per_class"]) == 2 * 6 * 96  # hidden classes, counted for monitoring
    assert sum(records[-1]["bank_class_counts"]) > 0 and 0 <= records[-1]["bank_purity"] <= 1
    assert (reference_run / "plots" / "bank_class_counts.png").exists()
    assert len(list((reference_run / "checkpoints").glob("experience-*.pt"))) == 3  # keep_checkpoints


def test_state_carries_over_between_experiences(reference_run):
    """The bank and the class weights at the start of experience 4 are those at the end of experience 3."""
    records = [json.loads(line) for line in (reference_run / "eval.jsonl").read_text().splitlines()]
    start_of_4 = torch.load(reference_run / "checkpoints" / "experience-000004.pt", weights_only=True)
    assert start_of_4["position"] == {"experience": 4, "batches": 0}
    bank = start_of_4["learner"]["algorithm"]["bank"]
    counts = np.bincount(bank["labels"].numpy(), minlength=10).tolist()
    assert counts == records[3]["bank_class_counts"] and sum(counts) > 0
    nhat = start_of_4["learner"]["algorithm"]["estimate"]["total"].float()
    weights = (nhat.clamp_min(1e-3).min() / nhat.clamp_min(1e-3)) ** 1.5
    assert np.allclose(weights.tolist(), records[3]["class_weights"], atol=1e-6)
    assert start_of_4["learner"]["algorithm"]["estimate"]["steps"] == records[3]["step"]


def run_cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "bmb_stream", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def final_bank(run_dir):
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    return state["learner"]["algorithm"]["bank"]


def test_sigkill_then_resume_equals_an_uninterrupted_run(fmnist_stream, reference_run, tmp_path):
    proc = run_cli(stream_args(fmnist_stream, tmp_path))
    wait_for(tmp_path / "checkpoints" / "experience-000003.pt", proc)
    time.sleep(1.0)  # into experience 3
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "summary.json").exists()
    assert main(stream_args(fmnist_stream, tmp_path, "resume=true")) == 0
    a = json.loads((reference_run / "summary.json").read_text())
    b = json.loads((tmp_path / "summary.json").read_text())
    assert metrics(a) == metrics(b)
    bank_a, bank_b = final_bank(reference_run), final_bank(tmp_path)
    assert torch.equal(bank_a["labels"], bank_b["labels"]) and torch.equal(bank_a["features"], bank_b["features"])


def test_sigterm_checkpoints_mid_experience_and_resumes_exactly(fmnist_stream, reference_run, tmp_path):
    proc = run_cli(stream_args(fmnist_stream, tmp_path, "train.log_every=1"))
    wait_for(tmp_path / "checkpoints" / "experience-000002.pt", proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "resume with:" in out
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert state["position"]["experience"] >= 2
    assert main(stream_args(fmnist_stream, tmp_path, "resume=true")) == 0
    a = json.loads((reference_run / "summary.json").read_text())
    b = json.loads((tmp_path / "summary.json").read_text())
    assert metrics(a) == metrics(b)


def test_shards_written_by_hand_with_tarfile(tmp_path):
    """The shard contract, not WebDataset's writer: plain tar members; a pickle member is never read."""
    rng = np.random.default_rng(0)
    evil = b"cos\nsystem\n(S'touch " + str(tmp_path / "pwned").encode() + b"'\ntR."
    for i in range(3):
        samples = []
        for j in range(40):
            c = int(rng.integers(0, 3))
            fields = {"png": png(60 * c + 20), "gt.cls": str(c).encode(), "json": json.dumps({"i": j}).encode()}
            if j == 0:
                fields["pyd"] = evil  # WebDataset's default decoder would unpickle this
            samples.append((f"u{i}-{j:03d}", fields))
        write_tar(tmp_path / f"u-{i}.tar", samples)
    write_tar(tmp_path / "lab.tar", [(f"l{j}", {"png": png(60 * (j % 3) + 20), "cls": str(j % 3).encode()})
                                     for j in range(30)])
    write_tar(tmp_path / "test.tar", [(f"t{j}", {"png": png(60 * (j % 3) + 20), "cls": str(j % 3).encode()})
                                      for j in range(30)])
    args = [f"stream.urls={tmp_path}/u-{{0..2}}.tar", f"stream.labeled_urls={tmp_path}/lab.tar",
            f"stream.test_urls={tmp_path}/test.tar", "dataset.num_classes=3", f"run.dir={tmp_path / 'run'}",
            "dataset.many_threshold=5", "dataset.few_threshold=2", *FAST]
    assert main(args) == 0
    assert not (tmp_path / "pwned").exists()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["samples_seen"] == 2 * 120 and summary["experiences"] == 3  # two passes (the demo)
    assert summary["data"]["test_per_class"] == [10, 10, 10]


def test_corrupt_image_missing_and_truncated_shards_name_the_shard(fmnist_stream, tmp_path, capsys):
    write_tar(tmp_path / "bad.tar", [("a", {"png": b"\x89PNG not really", "gt.cls": b"0"})])
    write_tar(tmp_path / "lab.tar", [(f"l{j}", {"png": png(10), "cls": str(j % 2).encode()}) for j in range(4)])
    write_tar(tmp_path / "test.tar", [(f"t{j}", {"png": png(20), "cls": str(j % 2).encode()}) for j in range(4)])
    common = [f"stream.labeled_urls={tmp_path}/lab.tar", f"stream.test_urls={tmp_path}/test.tar",
              "dataset.num_classes=2", f"run.dir={tmp_path / 'run'}", *FAST]
    assert main([f"stream.urls={tmp_path}/bad.tar", *common]) == 2
    assert "sample a in " in capsys.readouterr().err
    assert main([f"stream.urls={tmp_path}/missing-{{0..1}}.tar", *common]) == 2
    assert "missing-0.tar" in capsys.readouterr().err
    # a shard cut short beside its manifest: fewer samples than promised is an error, not a quiet loss
    stream = tmp_path / "stream"
    stream.mkdir()
    for p in fmnist_stream.glob("*"):
        if p.is_file():
            (stream / p.name).write_bytes(p.read_bytes())
    data = (stream / "stream-000001.tar").read_bytes()
    (stream / "stream-000001.tar").write_bytes(data[: len(data) // 2])
    assert main([f"stream.urls={stream}/stream-{{000000..000001}}.tar", f"run.dir={tmp_path / 'run2'}", *FAST]) == 2
    err = capsys.readouterr().err
    assert "stream-000001.tar" in err and "manifest says 96" in err
    # with on_shard_error=skip the corrupt sample and the truncated shard are left out and counted
    write_tar(tmp_path / "mixed.tar", [("a", {"png": b"\x89PNG not really", "gt.cls": b"0"}),
                                       *[(f"b{j}", {"png": png(10), "gt.cls": b"1"}) for j in range(5)]])
    assert main([f"stream.urls={tmp_path}/mixed.tar", *common, "stream.on_shard_error=skip", "stream.passes=1"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [s["url"] for s in summary["skipped_shards"]] == [f"{tmp_path}/mixed.tar"]
    assert summary["samples_seen"] == 5 and "sample a in" in summary["skipped_shards"][0]["error"]
    assert main([f"stream.urls={stream}/stream-{{000000..000001}}.tar", f"run.dir={tmp_path / 'run3'}", *FAST,
                 "stream.on_shard_error=skip", "stream.passes=1"]) == 0
    summary = json.loads((tmp_path / "run3" / "summary.json").read_text())
    assert [s["url"] for s in summary["skipped_shards"]] == [f"{stream}/stream-000001.tar"]


def test_memory_stays_flat_over_many_experiences(tmp_path):
    """120 experiences of one small shard each: the process's resident memory after the 20th and after
    the 120th evaluation differ by little (the precise figure belongs in a benchmark)."""
    for i in range(120):
        write_tar(tmp_path / f"u-{i:03d}.tar", [(f"u{i}-{j}", {"png": png(60 * (j % 3)), "gt.cls": str(j % 3).encode()})
                                                 for j in range(16)])
    write_tar(tmp_path / "lab.tar", [(f"l{j}", {"png": png(60 * (j % 3)), "cls": str(j % 3).encode()}) for j in range(12)])
    write_tar(tmp_path / "test.tar", [(f"t{j}", {"png": png(60 * (j % 3) + 5), "cls": str(j % 3).encode()})
                                      for j in range(12)])
    args = [f"stream.urls={tmp_path}/u-{{000..119}}.tar", f"stream.labeled_urls={tmp_path}/lab.tar",
            f"stream.test_urls={tmp_path}/test.tar", "dataset.num_classes=3", f"run.dir={tmp_path / 'run'}",
            *FAST, "stream.eval_every=10", "stream.keep_checkpoints=0", "train.ema_decay=0"]
    assert main(args) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "eval.jsonl").read_text().splitlines()]
    assert len(records) == 12
    growth = records[-1]["rss_mb"] - records[1]["rss_mb"]
    assert growth < 60, [round(r["rss_mb"]) for r in records]


def test_workers_read_every_shard_exactly_once(fmnist_stream, tmp_path):
    """With two DataLoader workers each experience's shards are split between them; the run checks
    the samples read per shard against the manifest, so a skipped or doubled shard would fail it."""
    assert main(stream_args(fmnist_stream, tmp_path, "stream.num_workers=2", "stream.shards_per_experience=2",
                            "stream.passes=1", "stream.max_experiences=2")) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["samples_seen"] == 4 * 96 and summary["experiences"] == 2


def test_class_incremental_stream_reports_forgetting_per_segment(tmp_path, fmnist_root):
    name, recipe = load_recipe("fmnist_class_incremental", ["shards=4", "samples_per_shard=64", "prior.period=1",
                                                             "prior.initial_classes=4", "test_per_class=30",
                                                             "dataset_overrides.n1=200", "dataset_overrides.gamma_l=10"])
    simulate(name, recipe, tmp_path / "s", progress=False)
    assert main([f"stream.urls={tmp_path}/s/stream-{{000000..000003}}.tar", f"run.dir={tmp_path / 'run'}", *FAST,
                 "stream.passes=1"]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "eval.jsonl").read_text().splitlines()]
    assert [len(r["segment_acc"]) for r in records] == [4, 4, 4, 4]  # classes 0-3, 4-5, 6-7, 8-9
    # a segment has a forgetting value once it has been trained on: 1, 2, 3, 4 of them
    assert [sum(v is not None for v in r["segment_forgetting"]) for r in records] == [1, 2, 3, 4]
    assert records[0]["segment_forgetting"][0] == 0.0 and isinstance(records[-1]["stream_forgetting"], float)
    # the continual-learning metrics: each evaluation's row of the accuracy matrix, a column per experience
    # (each under its own prior); summary.json assembles the matrix
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert all(len(r["experience_accuracy"]) == 4 for r in records)
    assert summary["accuracy_matrix"] == [r["experience_accuracy"] for r in records]
    assert isinstance(records[-1]["bwt"], float) and isinstance(records[-1]["fwt"], float)
    # prequential accuracy: each experience's images predicted before training on them, from their hidden classes,
    # each trained image counted once, at its first read
    first_reads = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["monitor"]["first_reads"]
    assert sum(known for _, known in first_reads.values()) == summary["samples_seen"]
    expected = [right / known for right, known in (first_reads[k] for k in range(4))]
    assert summary["prequential_accuracy"] == expected
    assert [r["prequential_accuracy"] for r in records] == expected  # an evaluation after every experience


def test_http_urls_read_the_same_samples_and_manifest_as_local_files(fmnist_stream, tmp_path):
    """http(s):// shards go through WebDataset's curl opener; the seed and test sets come from the
    manifest beside the shards on the server."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from bmb_stream.cli_args import parse_args
    from bmb_stream.config import compose
    from bmb_stream.engine.stream_source import prepare_stream
    from bmb_stream.shards.reading import shard_samples

    class QuietHandler(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(QuietHandler, directory=str(fmnist_stream))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        remote = compose(parse_args(stream_args(base, tmp_path)))
        local = compose(parse_args(stream_args(fmnist_stream, tmp_path)))
        r, lo = prepare_stream(remote), prepare_stream(local)
        assert [len(e) for e in r.experiences] == [1] * 6 and r.shard_sizes == lo.shard_sizes
        for (r_images, r_labels), (l_images, l_labels) in ((r.labeled, lo.labeled), (r.test, lo.test)):
            assert r_images == l_images and (r_labels == l_labels).all()
        read = [(s["key"], s["image"], s["gt"]) for s in shard_samples(r.experiences[0])]
        assert read == [(s["key"], s["image"], s["gt"]) for s in shard_samples(lo.experiences[0])] and len(read) == 96
    finally:
        server.shutdown()
