import warnings

import pytest

warnings.filterwarnings("ignore", message="no QP solver found")

FMNIST_ROOT = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(scope="session")
def fmnist_root():
    from pathlib import Path

    if not (Path(FMNIST_ROOT) / "train-images-idx3-ubyte.gz").exists():
        pytest.fail("Fashion-MNIST is missing: apt-get install dataset-fashion-mnist (the install script does it)")
    return FMNIST_ROOT


@pytest.fixture(scope="session")
def fmnist_stream(tmp_path_factory, fmnist_root):
    """The small real Fashion-MNIST stream of stream_helpers.SMALL_STREAM, in a local folder."""
    from bmb_stream.simulation.recipes import load_recipe
    from bmb_stream.simulation.simulate import simulate
    from tests.stream_helpers import SMALL_STREAM

    out = tmp_path_factory.mktemp("stream")
    name, recipe = load_recipe("fmnist_lt_stationary", SMALL_STREAM)
    simulate(name, recipe, out, progress=False)
    return out


@pytest.fixture(scope="session")
def reference_run(fmnist_stream, tmp_path_factory):
    """An uninterrupted stream run over the small stream, from local files, without workers."""
    from bmb_stream.cli import main
    from tests.stream_helpers import stream_args

    run_dir = tmp_path_factory.mktemp("reference")
    assert main(stream_args(fmnist_stream, run_dir)) == 0
    return run_dir


@pytest.fixture(scope="session")
def offline_run(tmp_path_factory, fmnist_root):
    """A short offline BMB run on the real Fashion-MNIST-LT, through the command line with stdout to a file
    (as under Slurm: plain lines), step scalars every 5 steps, evaluations every 10, the best checkpoint
    kept. Returns the run folder and what it printed."""
    import subprocess
    import sys
    from pathlib import Path

    folder = tmp_path_factory.mktemp("offline")
    run_dir, printed = folder / "run", folder / "printed.txt"
    with open(printed, "w") as out:
        proc = subprocess.run([sys.executable, "-m", "bmb_stream", "mode=offline", "experiment=demo", "method=bmb",
                               "train.steps=20", "train.eval_every=10", "train.log_every=5", "eval.keep_best=true",
                               "train.batch_labeled=32", "train.batch_unlabeled=32", "train.num_workers=1",
                               f"run.dir={run_dir}"], stdout=out, stderr=subprocess.STDOUT,
                              cwd=Path(__file__).resolve().parents[1], timeout=900)
    assert proc.returncode == 0, printed.read_text()
    return run_dir, printed.read_text()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (rclone serve s3, with authentication) on loopback, bucket `shards`."""
    from tests.s3_server import S3Server

    root = tmp_path_factory.mktemp("s3")
    (root / "shards").mkdir()
    server = S3Server(root)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The standard AWS variables pointing at the test server (the server is started if a test stopped it)."""
    from bmb_stream.storage.object_store import S3Settings, use_storage

    if s3_server.process is None:
        s3_server.start()
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    use_storage(S3Settings())
    return s3_server
