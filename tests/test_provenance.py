"""Where a run's numbers came from: provenance.json (one record per start) and summary.json's version
and commit."""

import json

from bmb_stream.cli import main
from bmb_stream.engine.provenance import git_state
from tests.test_faults_data import folder_args, image_folder


def test_every_start_records_the_command_code_software_and_devices(tmp_path):
    root = image_folder(tmp_path / "data", {"a": 6, "b": 4, "c": 3}, {"a": 2, "b": 2, "c": 2})
    args = [*folder_args(root, tmp_path), "resume=auto", "storage.s3.secret_access_key=hidden"]
    assert main(args) == 0
    assert main(args) == 0  # started again: the finished run is continued (nothing left to train)
    records = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert len(records) == 2
    first = records[0]
    assert first["command"][0] == "bmb-stream" and "resume=auto" in first["command"]
    assert "hidden" not in json.dumps(records) and not any("secret_access_key" in a for a in first["command"])
    assert first["world_size"] == 1 and first["device"] == "cpu" and first["torch"] and first["python"]
    code = git_state()
    assert first["commit"] == code["commit"] and first["dirty"] == code["dirty"]
    assert code["commit"] is None or len(code["commit"]) == 40
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["version"] == first["version"] and summary["commit"] == first["commit"]
