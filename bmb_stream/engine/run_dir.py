"""The run directory (a public contract): config.yaml, eval.jsonl, summary.json, logs,
checkpoints/ and plots/."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from omegaconf import OmegaConf


def _clean(value):
    """JSON has no NaN: a class absent from the test set reads null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "checkpoints").mkdir(exist_ok=True)

    @property
    def last_checkpoint(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    def write_config(self, cfg) -> None:
        from bmb_stream.config import redacted

        self._write_text("config.yaml", OmegaConf.to_yaml(redacted(cfg), resolve=True))

    def rewrite_evals(self, history: list[dict]) -> None:
        """eval.jsonl from the history (after a resume, evaluations past the checkpoint are dropped)."""
        self._write_text("eval.jsonl", "".join(json.dumps(_clean(r)) + "\n" for r in history))

    def append_eval(self, record: dict) -> None:
        with open(self.path / "eval.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(_clean(record)) + "\n")

    def write_summary(self, summary: dict) -> None:
        self._write_text("summary.json", json.dumps(_clean(summary), indent=2) + "\n")

    def _write_text(self, name: str, text: str) -> None:
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.path / name)
