"""The command line as a user types it: --mode parsing, brace patterns passed to Hydra, and the
printed resume command, which must give the same arguments back when pasted into a shell."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess

import pytest

from bmb_stream.cli import main, resume_command
from bmb_stream.cli_args import parse_args
from bmb_stream.config import compose
from bmb_stream.errors import ConfigError
from tests.helpers import cli_error

BRACES = "stream.urls=data/s/stream-{000000..000019}.tar"


def test_mode_as_two_words_and_with_equals():
    assert parse_args(["--mode", "stream"]) == ["mode=stream"]
    assert parse_args(["--mode=offline"]) == ["mode=offline"]
    assert parse_args(["seed=3", "--mode", "offline", "train.steps=5"]) == ["seed=3", "mode=offline", "train.steps=5"]


def test_mode_reaches_the_config():
    assert compose(parse_args(["--mode=offline"])).mode == "offline"
    assert compose(parse_args(["--mode", "stream", BRACES])).mode == "stream"


def test_a_brace_pattern_is_quoted_for_hydra_and_arrives_unchanged():
    overrides = parse_args([BRACES])
    assert overrides == ['stream.urls="data/s/stream-{000000..000019}.tar"']
    cfg = compose(["mode=stream", *overrides])
    assert cfg.stream.urls == "data/s/stream-{000000..000019}.tar"


def test_values_without_braces_or_already_quoted_pass_through():
    assert parse_args(["seed=1", "stream.urls=data/s/stream-000000.tar"]) == ["seed=1", "stream.urls=data/s/stream-000000.tar"]
    assert parse_args(["stream.urls='a/{0..1}.tar'"]) == ["stream.urls='a/{0..1}.tar'"]


def test_missing_mode_value_raises_a_config_error():
    with pytest.raises(ConfigError, match="--mode needs a value"):
        parse_args(["seed=1", "--mode"])


@pytest.mark.parametrize("argv", [["--mode", "bogus"], ["--mode=bogus"]])
def test_unknown_mode_is_one_line_exit_2_naming_the_modes(argv, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "bmb-stream: error: mode=bogus: unknown option; accepted: offline, stream\n"


def test_a_value_of_the_wrong_type_is_one_line_exit_2(capsys):
    assert main(["train.steps=abc"]) == 2
    assert capsys.readouterr().err == "bmb-stream: error: train.steps=abc: must be a positive integer\n"


def test_mode_without_a_value_is_one_line_exit_2(capsys):
    assert cli_error(["--mode"], capsys).startswith("bmb-stream: error: --mode needs a value")


ARGV = ["--mode", "stream", BRACES, "run.dir=runs/old", "seed=3", "resume=false"]
EXPECTED = ["bmb-stream", "--mode", "stream", BRACES, "seed=3", "run.dir=runs/new run", "resume=auto"]


def test_resume_command_splits_back_into_the_same_arguments():
    command = resume_command(ARGV, "runs/new run")
    assert "{000000..000019}" in command
    assert shlex.split(command) == EXPECTED  # the old run.dir and resume= replaced by the new ones, at the end


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_resume_command_pasted_into_bash_gives_the_same_arguments():
    def bash_words(line: str) -> list[str]:
        out = subprocess.run(["bash", "-c", "printf '%s\\0' " + line], capture_output=True, check=True).stdout
        return out.decode().split("\0")[:-1]

    command = resume_command(ARGV, "runs/new run")
    assert command.startswith("bmb-stream ")
    assert bash_words(command[len("bmb-stream "):]) == EXPECTED[1:]
    # without the quoting bash would expand the pattern into 20 words
    assert len([w for w in bash_words(BRACES) if w.startswith("stream.urls=")]) == 20


def test_help_lists_every_key_of_the_schema_with_what_it_accepts_and_its_default(capsys):
    from bmb_stream.config_schema import known_keys

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    keys = out.split("\nkeys: ")[1].split("\nexamples:")[0]
    listed = {line.split()[0] for line in keys.splitlines()[3:] if line.startswith("  ")}
    groups = ("method.name", "model.name", "dataset.name")  # chosen as method=..., not set
    assert listed == set(known_keys()) - set(groups)
    assert re.search(r"\n  train\.steps +a positive integer; default 1000; offline mode\n", out)
    assert re.search(r"\n  method\.abc_tau +in \(0, 1\]; default 0\.95; both modes \(abc\)\n", out)
    assert re.search(r"\n  resume +true, false or auto; default false; both modes\n", out)


def test_config_dir_composes_a_users_own_experiment_file(tmp_path, capsys):
    (tmp_path / "mine" / "experiment").mkdir(parents=True)
    (tmp_path / "mine" / "experiment" / "short.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /mode: offline\nexperiment_name: short\ntrain:\n  steps: 7\n")
    assert main(["--config-dir", str(tmp_path / "mine"), "experiment=short", "--cfg", "job"]) == 0
    out = capsys.readouterr().out
    assert "experiment_name: short" in out and "  steps: 7" in out and "mode: offline" in out
    assert main([f"--config-dir={tmp_path / 'none'}", "experiment=short"]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["experiment=short"]) == 2  # without it, the file is not found

