"""Secrets, config values and the command line: credentials (keys given as values, the user
information of URLs, signed-URL tokens) appear in no message, no printed command and no file of the
run; the printed command that continues a run parses back (non-ASCII, spaces, URLs) and is accepted;
interpolations that do not resolve or give null, a normalisation off the pixel range, shard URLs of
the wrong type and a seed out of range end with one line naming the key (exit code 2)."""

import functools
import logging
import os
import shlex
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from bmb_stream.cli import main, resume_hint
from bmb_stream.cli_args import parse_args
from bmb_stream.config import compose
from bmb_stream.storage.object_store import S3Settings, use_storage
from tests.helpers import cli_error
from tests.test_faults_shards import TINY, good_manifest, stream_folder

ROOT = Path(__file__).resolve().parents[1]
SECRET = "hunter2-0c7e5a"  # long enough never to occur by chance in a checkpoint's bytes
CLOSED = "http://127.0.0.1:9"  # nothing listens on the discard port: connection refused


@pytest.fixture(autouse=True)
def default_storage():
    yield
    use_storage(S3Settings())  # a run leaves its storage settings behind


def cli(args, capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, out, err


def one_line(args, capsys) -> str:
    """The message of the CLI's one error line (tests.helpers.cli_error: exit code 2), after `error: `."""
    return cli_error(args, capsys).split(": error: ", 1)[1]


def files_without(folder: Path, *secrets: str) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(s.encode() in data for s in secrets), path


# --- secrets in what a run prints and stores -------------------------------------------------------

class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(folder: Path) -> tuple[str, ThreadingHTTPServer]:
    """`folder` over http; the query of a URL (a signed URL's token) is not part of the path."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server


def stop(server: ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()


@pytest.fixture
def web_folder(tmp_path):
    """A tiny stream folder over http."""
    base, server = serve(stream_folder(tmp_path / "web", manifest=good_manifest()))
    yield base
    stop(server)


def test_a_run_keeps_the_secrets_of_its_urls_and_keys_out_of_its_output_and_files(web_folder, tmp_path, capsys):
    s = [f"{SECRET}-{i}" for i in range(14)]
    base = web_folder
    args = [*TINY, f"run.dir={tmp_path / 'run'}",
            f"stream.urls=[{base}/stream-000000.tar?sig={s[0]},{base}/stream-000001.tar?X-Amz-Signature={s[1]}"
            f"&X-Amz-Credential={s[2]}&X-Amz-Date=20250101]",
            f"stream.labeled_urls={base}/labeled-000000.tar?access_token={s[3]}&api-key={s[9]}&X-Api-Key={s[10]}",
            f"stream.test_urls={base}/test-000000.tar?token={s[4]}&jwt={s[11]}&pw={s[12]}&Pass_Phrase={s[13]}",
            f"storage.s3.endpoint_url=http://me@corp.com:{s[5]}@127.0.0.1:9", f"storage.s3.access_key_id={s[6]}",
            f"storage.s3.secret_access_key={s[7]}", f"storage.s3.session_token={s[8]}"]
    code, out, err = cli(args, capsys)
    assert code == 0, err
    assert not any(x in out + err for x in s)
    files_without(tmp_path / "run", *s)
    stored = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["config"]
    assert f"{base}/stream-000001.tar?X-Amz-Signature=<redacted>&X-Amz-Credential=<redacted>&X-Amz-Date=20250101" \
        in stored and "secret_access_key: <redacted>" in stored and "http://<redacted>@127.0.0.1:9" in stored
    assert "api-key=<redacted>&X-Api-Key=<redacted>" in stored and "jwt=<redacted>&pw=<redacted>&Pass_Phrase=" in stored


@pytest.mark.parametrize("url, codes", [
    (f"http://user:{SECRET}@127.0.0.1:9/x-{{000..001}}.tar", (2, 75)),  # 2 where a user name is refused
    (f"{CLOSED}/x-{{000..001}}.tar?sig={SECRET}", (75,)),
    (f"{CLOSED}/x-{{000..001}}.tar?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={SECRET}&X-Amz-Signature={SECRET}",
     (75,)),
    (f"{CLOSED}/x-{{000..001}}.tar?token={SECRET}", (75,)),
    (f"[{CLOSED}/x-000.tar?sig={SECRET},{CLOSED}/x-001.tar?sig={SECRET}]", (75,)),
    *[(f"{CLOSED}/x-{{000..001}}.tar?v=2&{name}={SECRET}", (75,))
      for name in ("api-key", "x-api-key", "X_API_KEY", "apiKey", "jwt", "pw", "passphrase", "client-secret")],
    (f"http://me@corp.com:{SECRET}@127.0.0.1:9/x-{{000..001}}.tar", (2, 75)),  # urlsplit: the password holds '@'
    (f"http://ghp_{SECRET}@127.0.0.1:9/x-{{000..001}}.tar", (2, 75)),  # a token as the user name
])
def test_an_unreachable_url_never_shows_its_secret(url, codes, tmp_path, capsys):
    code, out, err = cli([*TINY, f"stream.urls={url}", f"run.dir={tmp_path / 'run'}"], capsys)
    assert code in codes and "bmb-stream: error: " in err, err
    assert SECRET not in out + err
    files_without(tmp_path / "run", SECRET)
    if code == 75:  # the command needs the real URL: said so
        assert "a URL holds a secret where the command shows <redacted>: put the real one back" in err


@pytest.mark.parametrize("name", ["api-key", "X-Api-Key", "jwt", "pw", "passphrase"])
def test_a_missing_shard_is_named_without_the_secret_of_its_url(name, web_folder, tmp_path, capsys):
    line = one_line([*TINY, f"stream.urls={web_folder}/missing-{{000000..000001}}.tar?{name}={SECRET}",
                     f"run.dir={tmp_path / 'run'}"], capsys)
    assert "missing-000000.tar" in line and SECRET not in line


def test_an_s3_endpoint_with_a_password_holding_at_signs_never_shows_it(tmp_path, capsys, caplog):
    """Nor do the retry warnings (printed to stderr), which quote the endpoint as the S3 client gives it."""
    caplog.set_level(logging.WARNING, logger="bmb_stream")
    code, out, err = cli([*TINY, "stream.urls=s3://b/x-{000..001}.tar", f"run.dir={tmp_path / 'run'}",
                          f"storage.s3.endpoint_url=http://me@corp.com:{SECRET}@127.0.0.1:9",
                          "storage.s3.access_key_id=AKIDEXAMPLE", "storage.s3.secret_access_key=wJalrXUtnFEMI"], capsys)
    assert code == 75 and "retrying in" in caplog.text and SECRET not in out + err + caplog.text, err
    assert "storage.s3.endpoint_url=http://<redacted>@127.0.0.1:9" in err


def test_only_experience_checkpoints_left_still_resume(tmp_path, capsys):
    """A run whose last.pt was moved aside continues from its newest experience checkpoint: the command
    printed when the storage is down says resume=auto."""
    base, server = serve(stream_folder(tmp_path / "web", manifest=good_manifest()))
    args = [*TINY, f"run.dir={tmp_path / 'run'}", f"stream.urls={base}/stream-{{000000..000001}}.tar",
            f"stream.labeled_urls={base}/labeled-000000.tar", f"stream.test_urls={base}/test-000000.tar"]
    try:
        assert cli(args, capsys)[0] == 0
    finally:
        stop(server)
    (tmp_path / "run" / "checkpoints" / "last.pt").unlink()
    assert list((tmp_path / "run" / "checkpoints").glob("experience-*.pt"))
    code, out, err = cli([*args, "resume=true"], capsys)
    assert code == 75, err
    command = shlex.split(next(line for line in err.splitlines() if line.startswith("resume with: "))[13:])
    assert command[-2:] == [f"run.dir={tmp_path / 'run'}", "resume=auto"]


def test_storage_down_at_start_up_prints_a_command_that_is_accepted(tmp_path, capsys):
    """Before any checkpoint there is nothing to resume: the command (resume=auto) starts the run again,
    with run.dir quoted for the shell and for Hydra, credentials left out and named."""
    run_dir = tmp_path / "é ñ-run"
    args = [*TINY, f"stream.urls={CLOSED}/x-{{000..001}}.tar", f"run.dir={run_dir}"]
    keys = [f"storage.s3.access_key_id={SECRET}-id", f"storage.s3.secret_access_key={SECRET}"]
    code, out, err = cli([*args, *keys], capsys)
    lines = err.splitlines()
    assert code == 75 and SECRET not in err and lines[0].startswith("bmb-stream: error: ") and len(lines) == 3, err
    assert lines[2] == ("credentials left out (storage.s3.access_key_id, storage.s3.secret_access_key): give them "
                        "again, or through the AWS_* variables")
    command = shlex.split(lines[1].removeprefix("resume with: "))
    assert command == ["bmb-stream", *args, "resume=auto"]
    code, out, err = cli(command[1:], capsys)
    assert code == 75 and "resume with: " in err  # accepted: the storage is still down


@pytest.mark.parametrize("credential", [
    f"storage.s3.secret_access_key={SECRET}",
    f"storage.s3.access_key_id={SECRET}",
    f"storage.s3.session_token={SECRET}",
    f"+storage.s3.secret_access_key={SECRET}",
    f"storage.s3.secret_access_key='{SECRET}'",
    f"storage.s3={{access_key_id: a, secret_access_key: {SECRET}}}",
])
def test_the_command_after_a_stop_leaves_credentials_out_and_says_so(credential, tmp_path):
    """What SIGTERM prints once a checkpoint is written: the same run, resume=auto, no credential."""
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"")
    argv = ["--mode", "stream", "stream.urls=data/s/stream-{000000..000009}.tar", credential, "seed=3"]
    lines = resume_hint(argv, str(tmp_path)).splitlines()
    assert SECRET not in "\n".join(lines) and len(lines) == 2
    assert lines[1].startswith("credentials left out (") and "AWS_* variables" in lines[1]
    command = shlex.split(lines[0].removeprefix("resume with: "))
    assert command == ["bmb-stream", "--mode", "stream", "stream.urls=data/s/stream-{000000..000009}.tar", "seed=3",
                       f"run.dir={tmp_path}", "resume=auto"]


@pytest.mark.parametrize("run_dir, urls", [
    ("/tmp/x/éñ-run", "/data/ü ß/stream-{000000..000009}.tar"),
    ("runs/new run", "[/data/é/a.tar,/data/é/b.tar]"),
    ("runs/日本語", "http://h/s/stream-000000.tar?v=1&part=2"),
    ("runs/it's #1", "/data/a\"b/stream-000000.tar"),
])
def test_the_printed_command_parses_back_with_non_ascii_spaces_and_urls(run_dir, urls):
    argv = ["--mode", "stream", f"stream.urls={urls}"]
    command = shlex.split(resume_hint(argv, run_dir).splitlines()[0].removeprefix("resume with: "))
    cfg = compose(parse_args(command[1:]))  # Hydra's parser accepts every argument
    assert cfg.run.dir == run_dir and cfg.resume == "auto"  # no run there: resume=auto starts it
    assert (list(cfg.stream.urls) if urls.startswith("[") else cfg.stream.urls) == \
        (urls[1:-1].split(",") if urls.startswith("[") else urls)


@pytest.mark.parametrize("args, key", [
    ([f"stream.urls=http://u:{SECRET}@h/a.tar,http://u:{SECRET}@h/b.tar"], "stream.urls"),
    ([f"stream.urls=http://u:{SECRET}@h/${{oc.env:BMB_TEST_UNSET}}/x.tar"], "stream.urls"),
    ([f"storage.s3.secret_access_key={SECRET}", "storage.s3.connect_timeout_s=${oc.env:BMB_TEST_UNSET}"],
     "storage.s3.connect_timeout_s"),
    ([f"storage.s3={{access_key_id: AKIDEXAMPLE, secret_access_key: [{SECRET}]}}"],
     "storage.s3.secret_access_key=<redacted>: must be a string or null"),
    ([f"storage.s3.secret_access_key={{a:{SECRET}}}"], "storage.s3.secret_access_key=<redacted>: must be a string"),
    ([f"storage.s3.secret_access_key=[{SECRET}, x]"], "storage.s3.secret_access_key=<redacted>: must be a string"),
    ([f"storage.s3={{access_key_id: AKIDEXAMPLE, session_token: {{k: {SECRET}}}}}"],
     "storage.s3.session_token=<redacted>: must be a string or null"),
    ([f"stream.test_urls=http://h/t.tar?X-Amz-Signature={SECRET}", "stream.urls=${oc.env:BMB_TEST_UNSET}"],
     "stream.urls"),
])
def test_a_bad_value_beside_a_secret_is_one_line_without_it(args, key, capsys, monkeypatch):
    monkeypatch.delenv("BMB_TEST_UNSET", raising=False)
    line = one_line(args, capsys)
    assert SECRET not in line and line.startswith(key)


@pytest.mark.parametrize("args", [
    ["storage.s3.secret_access_key=[Q]"],
    ["storage.s3.session_token={k:Q}"],
    ["storage.s3.secret_access_key=Q,J"],  # Hydra reads two values
    ["storage.s3.secret_access_key={Q"],  # Hydra cannot read it
    ["seed=1", "storage.s3={access_key_id: AKIDEXAMPLE, secret_access_key: [Q]}"],
])
def test_a_short_secret_is_never_shown_either(args, capsys):
    line = one_line(args, capsys)
    assert line.startswith("storage.s3.") and "Q" not in line and "J" not in line


# --- config values -----------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["seed=${oc.env:BMB_TEST_UNSET}"], "seed=${oc.env:BMB_TEST_UNSET}: cannot resolve the interpolation: the "
     "environment variable BMB_TEST_UNSET is not set; set it, or give a default: ${oc.env:BMB_TEST_UNSET,VALUE}"),
    (["run.dir=/tmp/${oc.env:BMB_TEST_UNSET}/run"], "run.dir=/tmp/${oc.env:BMB_TEST_UNSET}/run: cannot resolve"),
    (["stream.urls=[a.tar,${oc.env:BMB_TEST_UNSET}]"], "stream.urls[1]=${oc.env:BMB_TEST_UNSET}: cannot resolve"),
    (["run.dir=${no.such}"], "run.dir=${no.such}: cannot resolve the interpolation: no.such is no key of this "
     "configuration"),
    (["run.dir=${nope:x}"], "run.dir=${nope:x}: cannot resolve the interpolation: no resolver is named nope"),
    (["run.dir=${stream.urlz}"], "run.dir=${stream.urlz}: cannot resolve the interpolation: stream.urlz is no key of "
     "this configuration (did you mean stream.urls?)"),
    (["seed=${oc.env:BMB_TEST_SET}"], "seed=${oc.env:BMB_TEST_SET}: cannot resolve the interpolation: what it gives "
     "(not shown: it may be a secret) is not an integer >= 0 and below 2^63"),
    (["run.dir=${foo"], "run.dir=${foo: not a valid interpolation (no viable alternative at input '${foo')"),
    (["--mode", "offline", "train.steps=${train.eval_every}", "train.eval_every=${train.steps}"],
     "train.steps=${train.eval_every}: cannot resolve the interpolation: the interpolation refers back to itself"),
    (["--mode", "offline", "experiment=cifar10_lt_r100", "run.dir=${dataset.root}"],
     "run.dir=${dataset.root}: cannot resolve the interpolation: it refers to a key that has no value"),
])
def test_an_interpolation_that_does_not_resolve_is_one_line(args, message, capsys, monkeypatch):
    monkeypatch.delenv("BMB_TEST_UNSET", raising=False)
    monkeypatch.setenv("BMB_TEST_SET", SECRET)
    line = one_line(args, capsys)
    assert line.startswith(message) and SECRET not in line


@pytest.mark.parametrize("args, message", [
    (["stream.urls=${oc.select:nope.x}"], "stream.urls=${oc.select:nope.x}: the interpolation gives null; refer to a "
     "key that has a value, or write stream.urls=null for none"),
    (["stream.labeled_urls=${oc.select:stream.nope}"],
     "stream.labeled_urls=${oc.select:stream.nope}: the interpolation gives null"),
    (["stream.urls=[a.tar,${oc.select:nope.x}]"], "stream.urls[1]=${oc.select:nope.x}: the interpolation gives null"),
    (["dataset.root=${oc.select:nope}"], "dataset.root=${oc.select:nope}: the interpolation gives null"),
    (["stream.urls=${oc.env:BMB_TEST_UNSET,null}", "stream.recipe=cifar10_lt_r100_stream"],  # null as its default
     "experiment=demo dataset=fashion_mnist_lt in stream mode without stream.urls would train on stream.recipe="
     "cifar10_lt_r100_stream"),
])
def test_an_override_that_an_interpolation_turns_into_null_is_refused(args, message, tmp_path, capsys, monkeypatch):
    """null means "none" (no shards: the default simulated stream): a value given on the command line
    must not become it unseen."""
    monkeypatch.delenv("BMB_TEST_UNSET", raising=False)
    line = one_line(["--mode", "stream", "progress=false", f"run.dir={tmp_path / 'run'}", *args], capsys)
    assert line.startswith(message)
    assert not (tmp_path / "run").exists()


URLS_TYPE = "must be a URL, a brace pattern or a folder (a string), a list of them, or null"


@pytest.mark.parametrize("value, message", [
    ("stream.urls=5", f"stream.urls=5: {URLS_TYPE}"),
    ("stream.test_urls=5", f"stream.test_urls=5: {URLS_TYPE}"),
    ("stream.labeled_urls=true", f"stream.labeled_urls=true: {URLS_TYPE}"),
    ("stream.test_urls=${seed}", f"stream.test_urls=${{seed}}: {URLS_TYPE}"),
    ("stream.urls=[a.tar,7]", f"stream.urls=[a.tar, 7]: {URLS_TYPE}"),
    ("stream.labeled_urls={a: b}", f"stream.labeled_urls={{'a': 'b'}}: {URLS_TYPE}"),
    ('stream.urls=${oc.decode:"[1"}', 'stream.urls=${oc.decode:"[1"}: not a valid interpolation'),
])
def test_a_url_key_of_the_wrong_type_is_one_line(value, message, tmp_path, capsys):
    line = one_line(["--mode", "stream", "progress=false", f"run.dir={tmp_path / 'run'}", value], capsys)
    assert line.startswith(message)
    assert not (tmp_path / "run").exists()


MEAN = "must be a list of three numbers, each finite and in [0, 1] (fractions of the pixel range)"
STD = "must be a list of three numbers, each finite and in (0, 1] (fractions of the pixel range)"


@pytest.mark.parametrize("value, message", [
    ("dataset.std=[0,0.5,0.5]", f"dataset.std=[0, 0.5, 0.5]: {STD}"),
    ("dataset.std=[0.3,-0.1,0.3]", f"dataset.std=[0.3, -0.1, 0.3]: {STD}"),
    ("dataset.std=[inf,0.3,0.3]", f"dataset.std=[inf, 0.3, 0.3]: {STD}"),
    ("dataset.std=[nan,0.3,0.3]", f"dataset.std=[nan, 0.3, 0.3]: {STD}"),
    ("dataset.std=[2,0.3,0.3]", f"dataset.std=[2, 0.3, 0.3]: {STD}"),
    ("dataset.mean=[0.5,-inf,0.5]", f"dataset.mean=[0.5, -inf, 0.5]: {MEAN}"),
    ("dataset.mean=[inf,0,0]", f"dataset.mean=[inf, 0, 0]: {MEAN}"),
    ("dataset.mean=[1e308,0,0]", f"dataset.mean=[1e+308, 0, 0]: {MEAN}"),
    ("dataset.mean=[1.5,0.5,0.5]", f"dataset.mean=[1.5, 0.5, 0.5]: {MEAN}"),
    ("dataset.mean=[0.5,0.5]", f"dataset.mean=[0.5, 0.5]: {MEAN}"),
    *[(f"seed={n}", f"seed={n}: must be an integer >= 0 and below 2^63") for n in (2 ** 63, 2 ** 64, 2 ** 100)],
])
def test_a_normalisation_off_the_pixel_range_or_a_seed_out_of_range_is_one_line(value, message, tmp_path, capsys):
    args = [*TINY, f"stream.urls={tmp_path / 'none'}", f"run.dir={tmp_path / 'run'}", value]
    assert one_line(args, capsys) == message
    assert not (tmp_path / "run").exists()


# --- the command line --------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--mode", "offline", "dataset.root=/tmp/dätä-none"], "dataset.root=/tmp/dätä-none: folder not found"),
    (["--mode", "offline", "dataset=cifar10_lt", "dataset.root=/tmp/ü ß-none"],
     "dataset.root=/tmp/ü ß-none: folder not found"),
    (["shards", "dataset=cifar10_lt", "dataset.root=/tmp/dätä-none", "out=/tmp/none"],
     "dataset.root=/tmp/dätä-none: folder not found"),
    (["dätaset.root=/tmp"], "dätaset.root: no such configuration key (did you mean dataset.root?)"),
    (["stream.urls=a.tar,b.tar"], "stream.urls=a.tar,b.tar: several values where one is expected; add -m to run one "
     "job per value (a sweep), or write a list in brackets, quoted for the shell: 'stream.urls=[a.tar,b.tar]'"),
    ([os.fsdecode(b"run.dir=/tmp/r\xe5n")], r"run.dir=/tmp/r\xe5n: the folder's name is not valid UTF-8"),
])
def test_non_ascii_values_get_the_advice_of_their_key(args, message, capsys):
    assert one_line(args, capsys).startswith(message)


@pytest.mark.parametrize("urls", ["{folder}/stream-{{000000..000001}}.tar", "{folder}",
                                  "[{folder}/stream-000000.tar,{folder}/stream-000001.tar]"])
def test_a_non_ascii_stream_folder_and_run_dir_are_read_as_given(urls, tmp_path, capsys):
    folder = stream_folder(tmp_path / "flux ü", manifest=good_manifest())
    run_dir = tmp_path / "éñ run"
    code, out, err = cli([*TINY, f"stream.urls={urls.format(folder=folder)}", f"run.dir={run_dir}"], capsys)
    assert code == 0, err
    assert (run_dir / "summary.json").exists() and f"run directory: {run_dir}" in out


def test_non_ascii_under_the_c_locale_is_one_line(tmp_path):
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    proc = subprocess.run([sys.executable, "-m", "bmb_stream", "--mode", "offline", f"dataset.root={tmp_path}/dätä"],
                          cwd=ROOT, env=env, capture_output=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == b""
    assert proc.stderr.decode() == f"bmb-stream: error: dataset.root={tmp_path}/dätä: folder not found " \
                                   f"(apt-get install dataset-fashion-mnist)\n"
