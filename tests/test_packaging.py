"""The package as users install it: a wheel (configs/ and streams/ inside) in a fresh virtual
environment, run from outside the repository; the command's own flags; running without the s3 extra."""

import os
import shutil
import subprocess
import sys
import sysconfig
import urllib.error
from pathlib import Path

import pytest

from bmb_stream.cli import main
from bmb_stream.engine.batches import worker_start
from bmb_stream.errors import ConfigError
from tests.stream_helpers import SMALL_STREAM
from tests.test_faults_data import folder_args, image_folder

REPO = Path(__file__).resolve().parents[1]


def test_a_wheel_runs_every_command_outside_the_repository(tmp_path):
    wheels, env_dir, work = tmp_path / "wheels", tmp_path / "env", tmp_path / "elsewhere"
    # the dependencies this interpreter sees (torch alone is gigabytes; setuptools builds the wheel offline),
    # without the site where the checkout itself is installed (editable)
    own = sysconfig.get_paths()["purelib"]
    deps = [p for p in sys.path if p.endswith("-packages") and p != own]
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info beside the sources
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    for folder in ("bmb_stream", "configs", "streams"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels,
                    source], check=True, capture_output=True, cwd=tmp_path,
                   env={**os.environ, "PYTHONPATH": os.pathsep.join(deps)})
    wheel = next(wheels.glob("bmb_stream-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", env_dir], check=True)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    (site / "deps.pth").write_text("\n".join(deps) + "\n")  # the wheel is installed, not its dependencies
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, wheel], check=True,
                   capture_output=True)
    work.mkdir()

    def run(*args: str) -> str:
        done = subprocess.run([python, "-m", "bmb_stream", *args], cwd=work, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    imported = subprocess.check_output([python, "-c", "import bmb_stream; print(bmb_stream.__file__)"], cwd=work,
                                       text=True)
    assert imported.startswith(str(site)), imported  # the installed copy, not the checkout
    assert run("--version").strip().startswith("bmb-stream ")
    assert "experiment_name: demo" in run("--cfg", "job")
    root = image_folder(tmp_path / "images", {"a": 6, "b": 4, "c": 3}, {"a": 2, "b": 2, "c": 2})
    out = run(*(a for a in folder_args(root, tmp_path) if not a.startswith("run.dir=")), "run.dir=run")
    assert "headline" in out and (work / "run" / "summary.json").exists()
    run("simulate", "fmnist_lt_stationary", "out=stream", "progress=false", *SMALL_STREAM)
    assert (work / "stream" / "manifest.json").exists()


def test_cfg_job_prints_the_checked_config_and_trains_nothing(tmp_path, capsys):
    assert main(["--cfg", "job", "--mode", "offline", "method=abc", f"run.dir={tmp_path / 'r'}",
                 "storage.s3.secret_access_key=hidden"]) == 0
    out = capsys.readouterr().out
    assert "name: abc" in out and "mode: offline" in out and "hidden" not in out and "<redacted>" in out
    assert not (tmp_path / "r").exists()
    assert main(["--cfg", "everything"]) == 2
    assert "--cfg needs one of: job, all" in capsys.readouterr().err
    assert main(["--cfg=job", "train.amp=yes"]) == 2  # a bad value is refused as in a run
    assert main(["--version"]) == 0 and capsys.readouterr().out.startswith("bmb-stream 0.")


def test_without_boto3_http_works_and_s3_says_what_to_install(monkeypatch):
    from bmb_stream.storage import retry
    from bmb_stream.storage.object_store import S3Settings

    for name in ("boto3", "boto3.exceptions", "botocore", "botocore.exceptions"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as where the s3 extra is not installed
    with pytest.raises(ConfigError, match=r"pip install 'bmb-stream\[s3\]'"):
        S3Settings().make_session()
    unavailable = urllib.error.HTTPError("http://h/x.tar", 503, "Service Unavailable", {}, None)
    missing = urllib.error.HTTPError("http://h/x.tar", 404, "Not Found", {}, None)
    assert retry.is_transient(unavailable) and not retry.is_transient(missing)
    assert retry.is_missing(missing) and retry.describe(missing) == "HTTP 404 Not Found"
    assert retry.is_transient(ConnectionResetError()) and not retry.is_transient(ValueError())


def test_loader_workers_fork_on_every_python():
    assert worker_start(2) == "fork" and worker_start(0) is None
