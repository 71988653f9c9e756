"""ABC and CDMAD through the command line: offline on the real Fashion-MNIST-LT, and on the small real
stream, where a run killed mid-stream and resumed ends exactly as an uninterrupted one."""

import json
import signal
import time

import pytest

from bmb_stream.cli import main
from tests.helpers import wait_for
from tests.stream_helpers import metrics
from tests.test_faults_shards import TINY, stream_folder
from tests.test_stream import run_cli

BASELINES = ["abc", "cdmad"]
OFFLINE = ["mode=offline", "experiment=demo", "train.steps=30", "train.eval_every=15", "train.batch_labeled=32",
           "train.batch_unlabeled=32", "train.num_workers=1", "progress=false"]
# the stream tests' fast settings, without BMB's bank keys
STREAM = ["train.batch_labeled=16", "train.batch_unlabeled=16", "stream.num_workers=0", "stream.shards_per_experience=1",
          "stream.eval_every=1", "progress=false"]


def stream_args(folder, run_dir, method, *extra):
    return [f"stream.urls={folder}/stream-{{000000..000005}}.tar", f"run.dir={run_dir}", f"method={method}", *STREAM,
            *extra]


@pytest.mark.parametrize("method", BASELINES)
def test_offline_run_reports_its_rule_and_the_plain_number(method, tmp_path, fmnist_root):
    assert main([*OFFLINE, f"method={method}", f"run.dir={tmp_path}"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["method"] == method and summary["test_rule"]
    records = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [15, 30]
    for r in records:
        assert 0 <= r["plain_balanced_acc"] <= 1 and "bank_class_counts" not in r
    assert summary["final"]["plain_balanced_acc"] == records[-1]["plain_balanced_acc"]
    assert "plain_balanced_acc" in (tmp_path / "csv" / "eval_results.csv").read_text().splitlines()[0]


@pytest.mark.parametrize("method", BASELINES)
def test_a_stream_run_killed_and_resumed_ends_as_an_uninterrupted_one(method, fmnist_stream, tmp_path):
    reference = tmp_path / "reference"
    assert main(stream_args(fmnist_stream, reference, method)) == 0
    killed = tmp_path / "killed"
    proc = run_cli(stream_args(fmnist_stream, killed, method))
    wait_for(killed / "checkpoints" / "experience-000003.pt", proc)
    time.sleep(0.5)  # into experience 3
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()
    assert main(stream_args(fmnist_stream, killed, method, "resume=true")) == 0
    a = json.loads((reference / "summary.json").read_text())
    b = json.loads((killed / "summary.json").read_text())
    assert metrics(a) == metrics(b)
    assert a["final"]["plain_balanced_acc"] is not None


def test_a_stream_of_unknown_length_is_refused_where_a_schedule_is_a_fraction_of_the_run(tmp_path, capsys):
    plain = stream_folder(tmp_path / "plain")  # no manifest: the shards' sample counts are unknown
    tiny = [a for a in TINY if not a.startswith("method.bank.")]
    assert main([*tiny, f"stream.urls={plain}", "method=abc", f"run.dir={tmp_path}/r"]) == 2
    assert "method=abc schedules by the fraction of the run done" in capsys.readouterr().err
    assert main([*tiny, f"stream.urls={plain}", "method=cdmad", "method.debias_start=0", f"run.dir={tmp_path}/r2"]) == 0
