"""The run's loggers: every number a run reports reaches its readers through `RunLoggers`.

- each evaluation: a line in log.txt, a row in csv/eval_results.csv, scalars in tensorboard/ (under their
  own names: balanced_acc, bwt, ...);
- every `train.log_every` steps, the training scalars (`StepScalars`: each loss term the algorithm reports,
  learning rate, mask rates, pseudo-label accuracy, bank size and purity, img/s, data wait, GPU memory):
  a line in steps.jsonl and scalars in tensorboard/ under train/;
- with `wandb.enabled=true`, both also to Weights & Biases (the `wandb` extra), under the same names.

Nothing is opened before the first write, so that a run refused before it trains leaves its folder as it
was. A resumed run first drops what was logged after its checkpoint's step (TensorBoard's purge_step,
steps.jsonl's later lines), so that every step is logged once; W&B keeps the steps it already has.
"""

from __future__ import annotations

import csv
import json
import secrets
from pathlib import Path

import torch

from bmb_stream.errors import WriteFailed
from bmb_stream.storage.atomic import write_failure, write_text

# the continual-learning metrics of stream mode (evaluation/continual.py)
CONTINUAL_SCALARS = ("forgetting", "stream_forgetting", "average_accuracy", "bwt", "fwt", "prior_accuracy",
                     "prequential_accuracy")
CSV_COLUMNS = ("step", "top1_acc", "balanced_acc", "raw_top1_acc", "raw_balanced_acc", "test_loss",
               "many_acc", "medium_acc", "few_acc", "forgetting", "plain_balanced_acc", *CONTINUAL_SCALARS[1:])
EVAL_SCALARS = ("top1_acc", "balanced_acc", "raw_top1_acc", "raw_balanced_acc", "test_loss", "plain_balanced_acc",
                "bank_purity", *CONTINUAL_SCALARS)
TRAIN_PREFIX = "train/"  # the step scalars' names in TensorBoard and W&B


def _shown(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _csv_with_header(path: Path) -> int:
    """Make `path` a CSV with CSV_COLUMNS as its header, keeping an older run's rows under the columns they
    have (a column added since stays empty in them); returns how many rows it holds."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    if rows and tuple(rows[0]) == CSV_COLUMNS:
        return len(rows) - 1
    old = [dict(zip(rows[0], row)) for row in rows[1:]] if rows else []
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        writer.writerows([[row.get(c, "") for c in CSV_COLUMNS] for row in old])
    return len(old)


def _numeric(values: dict) -> dict:
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class StepScalars:
    """The training scalars of the steps since the last log point. `add` keeps the loss terms on the device
    (summing them waits for nothing); `read` turns them into floats, the only wait, once per log point."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor | float] = {}
        self.steps, self.images, self.seconds, self.waited = 0, 0, 0.0, 0.0

    def add(self, terms: dict, images: int, seconds: float, waited_s: float) -> None:
        """One step: its loss terms (the lr is read at the log point), its images (all ranks'), its
        seconds from asking for its batch to the end of the step, and of those the wait for the batch.
        Evaluations and checkpoints between steps are not counted."""
        for name, value in terms.items():
            if name != "lr":
                self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.steps += 1
        self.images += images
        self.seconds += seconds
        self.waited += waited_s

    def read(self) -> dict:
        """Each term's mean over the steps since the last read, img/s and the fraction of the time spent
        waiting for data; then start afresh."""
        seconds = max(self.seconds, 1e-9)
        values = {name: float(total) / self.steps for name, total in self.sums.items()} if self.steps else {}
        values |= {"img_per_s": self.images / seconds, "data_wait": min(self.waited / seconds, 1.0)}
        self.reset()
        return values


class RunLoggers:
    """log.txt, csv/, steps.jsonl, tensorboard/ and W&B of one run. `enabled=False` (ranks other than 0 of a
    data-parallel run, an evaluator used alone) writes nothing."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, wandb_cfg=None, config: dict | None = None):
        """`wandb_cfg`: the config's `wandb` group (None: no W&B); `config`: the run's config, as W&B shows it."""
        self.path, self.enabled = Path(run_dir), enabled
        self.wandb_cfg, self.config = wandb_cfg, config
        self.start_step = 0  # a resumed run's step: what was logged after it is dropped at the first write
        self.evaluations = 0
        self._tensorboard = None
        self._wandb = None

    def resume_at(self, step: int) -> None:
        self.start_step = step

    def _open(self) -> None:
        if self._tensorboard is not None:
            return
        from torch.utils.tensorboard import SummaryWriter

        (self.path / "csv").mkdir(parents=True, exist_ok=True)
        (self.path / "log.txt").touch()
        (self.path / "csv" / "eval_results.csv").touch()
        self.evaluations = _csv_with_header(self.path / "csv" / "eval_results.csv")  # a resumed run goes on counting
        steps = self.path / "steps.jsonl"
        if self.start_step and steps.exists():  # lines written after the checkpoint the run resumed from
            kept = [line for line in steps.read_text(encoding="utf-8").splitlines(keepends=True)
                    if line.endswith("\n") and json.loads(line).get("step", 0) <= self.start_step]
            write_text(steps, "".join(kept))
        # events from step start_step + 1 on, written before the stop, are hidden from TensorBoard
        self._tensorboard = SummaryWriter(str(self.path / "tensorboard"), purge_step=self.start_step + 1 if self.start_step else None)
        if self.wandb_cfg is not None and self.wandb_cfg.enabled:
            self._wandb = open_wandb(self.path, self.wandb_cfg, self.config)

    def evaluation(self, record: dict, step: int | None = None) -> None:
        """One evaluation, filed under `step` (None: the evaluation's index)."""
        if not self.enabled:
            return
        self._open()
        n = self.evaluations if step is None else step
        values = [_shown(record.get(k)) for k in CSV_COLUMNS[1:]]
        self._append("log.txt", f"step {n}: " + ", ".join(f"{k} {v or '-'}" for k, v in zip(CSV_COLUMNS[1:], values))
                     + "\n")
        try:
            with open(self.path / "csv" / "eval_results.csv", "a", encoding="utf-8", newline="") as f:
                csv.writer(f).writerow([n, *values])
        except OSError as e:
            raise WriteFailed(self.path / "csv" / "eval_results.csv", write_failure(self.path / "csv", e)) from None
        self.scalars({k: record.get(k) for k in EVAL_SCALARS}, n)
        self.evaluations += 1

    def steps(self, values: dict, step: int) -> None:
        """The training scalars of log point `step`: steps.jsonl, and train/<name> in TensorBoard and W&B."""
        if not self.enabled:
            return
        self._open()
        values = _numeric(values)
        self._append("steps.jsonl", json.dumps({"step": step, **values}) + "\n")
        self.scalars({TRAIN_PREFIX + k: v for k, v in values.items()}, step)

    def scalars(self, values: dict, step: int) -> None:
        """Numeric values into TensorBoard and W&B under their names; others (None, lists) are skipped."""
        if not self.enabled:
            return
        self._open()
        values = _numeric(values)
        for name, value in values.items():
            self._tensorboard.add_scalar(name, value, step)
        if self._wandb is not None and values:
            self._wandb.log(values, step=step)

    def _append(self, name: str, text: str) -> None:
        try:
            with open(self.path / name, "a", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            raise WriteFailed(self.path / name, write_failure(self.path / name, e)) from None

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.flush()
            self._tensorboard.close()
            self._tensorboard = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def open_wandb(run_dir: Path, cfg, config: dict | None):
    """A W&B run for this run folder: its files under run_dir/wandb/, and one W&B run id per folder (kept in
    wandb/run-id), so that a resumed run continues the same W&B run."""
    try:
        import wandb
    except ImportError:
        from bmb_stream.errors import ConfigError

        raise ConfigError("wandb.enabled=true needs the wandb package: pip install 'bmb-stream[wandb]'") from None
    folder = run_dir / "wandb"
    folder.mkdir(exist_ok=True)
    id_file = folder / "run-id"
    run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(6)
    write_text(id_file, run_id + "\n")
    return wandb.init(project=cfg.project, entity=cfg.entity, name=cfg.name or run_dir.name, group=cfg.group,
                      tags=list(cfg.tags), dir=str(run_dir), id=run_id, resume="allow", config=config,
                      mode=cfg.mode, reinit="create_new")
