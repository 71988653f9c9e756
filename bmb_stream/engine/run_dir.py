"""The run directory (a public contract): config.yaml, eval.jsonl, summary.json, logs,
checkpoints/ and plots/. Opening one checks it before any work: a new run never overwrites an earlier
one, and a resumed run continues the same experiment."""

from __future__ import annotations

import json
import math
from pathlib import Path

from omegaconf import OmegaConf

from bmb_stream.atomic import WriteFailed, write_failure, write_text
from bmb_stream.config import ConfigError, redacted
from bmb_stream.engine.checkpoint import CheckpointError

# What may change when a run is resumed: how it runs, how long, what is logged; never what it learns from
# or how. Prefixes end with a dot.
RESUMABLE_CHANGES = ("resume", "progress", "run.dir", "device", "train.num_workers", "train.log_every",
                     "train.steps", "train.eval_every", "stream.num_workers", "stream.cache_dir",
                     "stream.keep_checkpoints", "stream.on_shard_error", "stream.max_experiences",
                     "stream.eval_every", "eval.batch_size", "eval.headline", "storage.")
RESULT_FILES = ("eval.jsonl", "summary.json", "checkpoints/last.pt")  # what a run has that is worth keeping


def _clean(value):
    """JSON has no NaN: a class absent from the test set reads null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def experiment_changes(stored: dict, cfg) -> list[str]:
    """Keys whose values differ between a stored config and this one and change the experiment."""
    old, new = _flat(stored), _flat(OmegaConf.to_container(redacted(cfg), resolve=True))
    # a key the stored config lacks was added since the run began; its default keeps the old behaviour
    changed = [k for k in sorted(old.keys()) if old[k] != new.get(k, "<absent>")]
    return [f"{k}: {old.get(k, '<absent>')} -> {new.get(k, '<absent>')}" for k in changed
            if not any(k == allowed or (allowed.endswith(".") and k.startswith(allowed)) for allowed in RESUMABLE_CHANGES)]


class RunDir:
    writes = True  # False on the other ranks of a data-parallel run: rank 0 alone writes the run directory

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)
            probe = self.path / "checkpoints" / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise ConfigError(f"run.dir={self.path}: cannot write there ({e.strerror or e}); choose another run.dir") from None

    @classmethod
    def follower(cls, path: str | Path) -> "RunDir":
        """The run directory as a rank other than 0 sees it: read (the checkpoint to resume from), never written."""
        run = cls.__new__(cls)
        run.path, run.writes = Path(path), False
        return run

    @classmethod
    def open(cls, cfg) -> "RunDir":
        """The run directory of this config, checked before any data is read."""
        path = Path(cfg.run.dir)
        found = [name for name in RESULT_FILES if (path / name).exists() and (path / name).stat().st_size > 0]
        if not cfg.resume:  # a run that stopped before any result (only config.yaml) may be started again
            if found:
                raise ConfigError(f"run.dir={path} already holds a run ({', '.join(found)}): add resume=true to "
                                  f"continue it, or choose another run.dir")
            return cls(path)
        if not (path / "config.yaml").is_file():
            raise ConfigError(f"resume=true: run.dir={path} holds no run ({'no config.yaml' if path.is_dir() else 'no such folder'}); "
                              f"give the run.dir of the run to continue, or drop resume=true to start one")
        try:
            stored = OmegaConf.to_container(OmegaConf.load(path / "config.yaml"))
        except Exception as e:  # noqa: BLE001 - a hand-edited or truncated file
            raise ConfigError(f"resume=true: {path / 'config.yaml'} cannot be read ({str(e).splitlines()[0]})") from None
        changes = experiment_changes(stored, cfg)
        if changes:
            shown = "; ".join(changes[:6]) + ("; ..." if len(changes) > 6 else "")
            raise ConfigError(f"resume=true: this configuration differs from the run in {path} where it changes the "
                              f"experiment ({shown}); resume with the values of {path / 'config.yaml'}, or start "
                              f"another run.dir")
        run = cls(path)
        if not run.last_checkpoint.exists():
            print(f"resume=true: {path} has no checkpoint yet; the run starts from the beginning")
        return run

    @property
    def last_checkpoint(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    def write_config(self, cfg) -> None:
        self._write_text("config.yaml", OmegaConf.to_yaml(redacted(cfg), resolve=True))

    def rewrite_evals(self, history: list[dict]) -> None:
        """eval.jsonl from the history (after a resume, evaluations past the checkpoint are dropped)."""
        self._write_text("eval.jsonl", "".join(json.dumps(_clean(r)) + "\n" for r in history))

    def append_eval(self, record: dict) -> None:
        if not self.writes:
            return
        try:
            with open(self.path / "eval.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(_clean(record)) + "\n")
        except OSError as e:
            raise CheckpointError(f"could not write {self.path / 'eval.jsonl'}: {write_failure(self.path / 'eval.jsonl', e)}") from None

    def write_summary(self, summary: dict) -> None:
        self._write_text("summary.json", json.dumps(_clean(summary), indent=2) + "\n")

    def _write_text(self, name: str, text: str) -> None:
        if not self.writes:
            return
        try:
            write_text(self.path / name, text)
        except WriteFailed as e:
            raise CheckpointError(str(e)) from None
