"""What the training benchmarks share: one policy for the run folders they train into, so that an
interrupted benchmark continues where it stopped. (The header every benchmark prints is machine.py's.)

A finished run (summary.json) is reused, not trained again; a started one (config.yaml or a
checkpoint) is resumed (resume=true); any other is trained from the start. Delete a run folder to
train that run again."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from bmb_stream.config import compose


def run_folder(out: str | Path, variant: str, seed: int) -> Path:
    """A variant's run folder at a seed, named so that Hydra reads it as one value ("bmb, bank off" ->
    bmb-bank_off-seed0)."""
    return Path(out) / f"{variant.replace(', ', '-').replace(' ', '_')}-seed{seed}"


def finished(run_dir: Path) -> bool:
    return (Path(run_dir) / "summary.json").is_file()


def started(run_dir: Path) -> bool:
    run_dir = Path(run_dir)
    return (run_dir / "config.yaml").is_file() or any((run_dir / "checkpoints").glob("*.pt"))


def train_unless_finished(run_dir: Path, overrides: list[str], run: Callable) -> None:
    """Train the run of `overrides` into `run_dir` with `run` (run_offline, run_stream, or a function
    of the config), unless it is finished; resumed if it was started. A run stopped by a signal ends
    the benchmark: the next call resumes it."""
    if finished(run_dir):
        return
    resume = str(started(run_dir)).lower()
    result = run(compose([*overrides, f"run.dir={run_dir}", f"resume={resume}"]))
    if "stopped" in result:
        raise SystemExit(f"stopped: {run_dir} resumes where it stopped on the next call")
