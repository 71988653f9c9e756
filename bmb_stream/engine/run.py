"""The run skeleton both modes share: device, seed, run directory, resume, learner, evaluator, timers,
progress bar, stop flag and summary. A mode fills in its phases (`prepare`, `train`) and what its
checkpoint and summary add; `execute` runs them in order:

    open the run directory -> prepare (data, learner, evaluator) -> resume -> write config.yaml
    -> train (until done or stopped) -> summary.json and plots (or a stop message)

Under torchrun every rank runs the skeleton; rank 0 decides the run directory and alone writes to it
(config, eval.jsonl, checkpoints, summary, plots, loggers); every rank evaluates its part of the test set.
"""

from __future__ import annotations

import abc
import time
from typing import Callable

import torch
from omegaconf import DictConfig, OmegaConf

from bmb_stream import distributed
from bmb_stream.config import typed
from bmb_stream.config_schema import Config
from bmb_stream.distributed import resolve_device
from bmb_stream.engine.batches import per_rank_batches
from bmb_stream.engine.checkpoint import CHECKPOINT_FORMAT, check_layout, copy_atomic, load_checkpoint, save_atomic
from bmb_stream.engine.learner import Learner
from bmb_stream.engine.loggers import RunLoggers, StepScalars
from bmb_stream.engine.progress import Bar, PlainLines, progress
from bmb_stream.engine.provenance import provenance
from bmb_stream.engine.run_dir import RunDir
from bmb_stream.engine.stops import StopFlag
from bmb_stream.errors import CheckpointError, ConfigError
from bmb_stream.evaluation.evaluator import Evaluator
from bmb_stream.evaluation.monitor import StreamMonitor
from bmb_stream.evaluation.plots import write_plots
from bmb_stream.evaluation.summary import summarize
from bmb_stream.redaction import redacted


class Run(abc.ABC):
    learner: Learner
    evaluator: Evaluator
    monitor: StreamMonitor  # what the unlabeled images' known classes tell (pseudo-label accuracy, bank purity)

    def __init__(self, cfg: DictConfig | Config, command: list[str] | None = None):
        self.cfg = cfg = typed(cfg)
        self.command = command  # the command line's arguments (provenance.json)
        self.device = distributed.local_device(resolve_device(cfg.device))
        distributed.init(self.device)
        # each rank's batches (train.global_batch: its share of the run's), refused before the folder is touched
        self.batch_labeled, self.batch_unlabeled = per_rank_batches(cfg.train)
        cfg.run.dir = distributed.from_main(cfg.run.dir)  # a default run.dir's timestamp is rank 0's
        self.run_dir = open_run_dir(cfg)  # before any data is read: a bad run.dir or resume ends the run at once
        self.loggers = RunLoggers(self.run_dir.path, enabled=distributed.is_main(), wandb_cfg=cfg.wandb,
                                  config=OmegaConf.to_container(redacted(cfg), resolve=True) if cfg.wandb.enabled else None)
        self.step_scalars = StepScalars()
        self.seed = cfg.seed
        torch.manual_seed(distributed.rank_seed(self.seed))
        self.history: list[dict] = []
        self.train_time, self.train_images = 0.0, 0
        self.start_wall = time.time()
        self.bar: Bar | PlainLines | None = None
        self.where = ""  # where in its data the run is, shown beside the progress (stream mode: the experience)
        # called with the run after every training step (monitoring, benchmarks); a hook never changes training
        self.step_hooks: list[Callable[[Run], None]] = []

    # --- what a mode fills in ---------------------------------------------------------------------
    @abc.abstractmethod
    def prepare(self) -> None:
        """Read the data; build the learner and the evaluator."""

    @abc.abstractmethod
    def train(self, stop: StopFlag) -> None:
        """Train until the end of the run or until `stop` is raised (then checkpoint)."""

    @abc.abstractmethod
    def total_steps(self) -> int | None:
        """Steps of the whole run, for the progress bar (None: unknown)."""

    def checkpoint_state(self) -> dict:
        """What the checkpoint holds besides the learner and the history."""
        return {}

    def load_state(self, state: dict) -> None:
        """Restore what `checkpoint_state` saved."""

    def resumed_message(self) -> str:
        return f"resumed from {self.run_dir.resume_from} at step {self.learner.step}"

    def stopped_message(self, stop: StopFlag) -> str:
        return (f"stopped by {stop.raised or 'a signal to another rank'} at step {self.learner.step}; "
                f"checkpoint {self.run_dir.last_checkpoint}")

    @abc.abstractmethod
    def summary_data(self) -> dict:
        """The per-class counts the run used, for summary.json's `data`."""

    def finish_summary(self, summary: dict) -> None:
        """Mode-specific keys of summary.json."""

    def plot_options(self) -> dict:
        return {}

    # --- the skeleton -----------------------------------------------------------------------------
    def execute(self) -> dict:
        try:
            return self._execute()
        finally:
            self.run_dir.release()  # the folder is free for the next run (in this process too)

    def _execute(self) -> dict:
        self.prepare()
        self.resume()  # before anything is written: a checkpoint that cannot be resumed changes no file
        self.run_dir.write_config(self.cfg)
        self.provenance = {**provenance(self.command, self.device),
                           "batch_per_rank": {"labeled": self.batch_labeled, "unlabeled": self.batch_unlabeled}}
        self.run_dir.add_provenance(self.provenance)
        self.run_dir.rewrite_evals(self.history)
        self.start_wall = time.time() - (self.history[-1]["wall_s"] if self.history else 0.0)
        self.loggers.resume_at(self.learner.step)
        self.bar = progress(self.total_steps(), self.learner.step, f"{self.cfg.method.name} {self.cfg.mode}",
                            enabled=self.cfg.progress, disable=not distributed.is_main())
        with StopFlag() as stop:
            self.train(stop)
        self.close()
        if not distributed.is_main():  # rank 0 reports
            return {"rank": distributed.rank()}
        if stop.agreed:
            return {"stopped": self.stopped_message(stop)}
        summary = self.build_summary()
        self.run_dir.write_summary(summary)
        write_plots(self.history, self.run_dir.path / "plots", **self.plot_options())
        return summary

    def resume(self) -> None:
        """Continue from the checkpoint the run directory chose (rank 0 loaded it when checking the folder)."""
        path = self.run_dir.resume_from
        if path is None:
            return
        # on the CPU: RNG states must stay there
        state = self.run_dir.resume_state or check_layout(load_checkpoint(path), path)
        self.run_dir.resume_state = None  # the learner holds it now
        try:
            self.learner.load_state_dict(state["learner"])
            self.history = list(state["history"])
            self.load_state(state)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
            reason = " ".join(str(e).split())[:200] or type(e).__name__
            raise CheckpointError(f"checkpoint {path} was written by another version of bmb-stream or for another "
                                  f"model ({type(e).__name__}: {reason}): it cannot be resumed here; start another "
                                  f"run.dir") from None
        if distributed.any_rank(not self.learner.state_is_finite()):
            raise CheckpointError(f"checkpoint {path} holds NaN or infinite weights: it cannot be resumed; resume from "
                                  f"an earlier one (move it aside: checkpoints/experience-*.pt are kept), or start "
                                  f"another run.dir")
        print(self.resumed_message())

    def save_checkpoint(self, path=None) -> None:
        """Rank 0 writes the checkpoint (every rank calls this at the same step: the learner's state
        gathers every rank's random state)."""
        self.learner.check_finite(weights=True)  # a checkpoint never holds diverged weights
        state = {"format": CHECKPOINT_FORMAT, "learner": self.learner.state_dict(), "history": self.history,
                 **self.checkpoint_state(),
                 # the experiment it continues: a resumed run is checked against it, not against config.yaml alone
                 "config": OmegaConf.to_yaml(redacted(self.cfg), resolve=True)}
        if distributed.is_main():
            save_atomic(state, path or self.run_dir.last_checkpoint)
        distributed.barrier()

    def keep_if_best(self) -> None:
        """With eval.keep_best, after the checkpoint that follows an evaluation: where that evaluation is the
        best so far (the evaluated model's balanced accuracy), checkpoints/best.pt becomes a copy of it."""
        accuracies = [r["balanced_acc"] for r in self.history]
        if not (self.cfg.eval.keep_best and distributed.is_main() and accuracies):
            return
        if len(accuracies) == 1 or accuracies[-1] > max(accuracies[:-1]):
            copy_atomic(self.run_dir.last_checkpoint, self.run_dir.last_checkpoint.with_name("best.pt"))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.loggers.close()

    def trained(self, images: int, started: float, terms: dict, waited_s: float = 0.0) -> None:
        """Count one training step's images (this rank's; all ranks train on as many), time (`started`: when
        it asked for its batch; `waited_s`: how long it waited for it) and loss terms, and advance the bar;
        every train.log_every steps, log the step scalars."""
        seconds = time.time() - started
        self.train_time += seconds
        images *= distributed.world_size()
        self.train_images += images
        self.step_scalars.add(terms, images, seconds, waited_s)
        self.bar.update(1)
        if self.learner.step % self.cfg.train.log_every == 0:
            self.learner.check_finite()
            self.log_step(terms["lr"])
        for hook in self.step_hooks:
            hook(self)

    def log_step(self, lr: float) -> None:
        """The scalars of the steps since the last log point into the loggers and beside the progress."""
        scalars = {**self.step_scalars.read(), "lr": lr,
                   **self.monitor.step_scalars(self.learner.algorithm.bank)}
        if self.device.type == "cuda":  # the peak since the last log point
            scalars["gpu_mem_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
            torch.cuda.reset_peak_memory_stats(self.device)
        self.loggers.steps(scalars, self.learner.step)
        self.bar.show(scalars, self.where)

    def images_per_s(self) -> float:
        return self.train_images / max(self.train_time, 1e-9)

    def evaluate(self, before: dict | None = None, after: dict | None = None,
                 extra: Callable[[dict], dict] | None = None, **kw) -> dict | None:
        """Evaluate the EMA model and the raw weights; append the record to the history and eval.jsonl, and
        log it. `extra`: what the record adds, computed from it (stream mode's continual-learning metrics).
        In a data-parallel run each rank evaluates its part of the test set and gets the whole set's
        numbers; rank 0 writes them and gets the record to report, the others get None."""
        learner = self.learner
        learner.check_finite(weights=True)
        was_training = learner.model.training
        raw = learner.raw_model() if learner.ema is not None else None
        results = self.evaluator.evaluate(learner.evaluated_model(), raw, **kw)
        learner.model.train(was_training)
        record = {**(before or {}), "step": learner.step, "samples_seen": learner.samples_seen, **results,
                  **learner.algorithm.record(), **(after or {})}
        record |= (extra(record) if extra is not None else {}) | {"wall_s": time.time() - self.start_wall}
        self.history.append(record)
        self.run_dir.append_eval(record)
        self.loggers.evaluation(record, learner.step)
        return record if distributed.is_main() else None

    def build_summary(self) -> dict:
        cfg, learner, history = self.cfg, self.learner, self.history
        stats = summarize(history)
        statistic = cfg.eval.headline
        summary = {
            "mode": cfg.mode, "method": cfg.method.name, "dataset": cfg.dataset.name, "model": cfg.model.name,
            "experiment": cfg.experiment_name, "seed": self.seed, "steps": learner.step,
            "samples_seen": learner.samples_seen, "wall_s": time.time() - self.start_wall,
            "train_images_per_s": self.images_per_s(), "device": str(learner.device), **stats,
            "headline": {"statistic": statistic, "balanced_acc": stats[statistic]["balanced_acc"]},
            "bank_class_counts": history[-1].get("bank_class_counts"),
            "test_rule": learner.algorithm.test_rule,  # behind balanced_acc; plain_balanced_acc is without it
            "bank_capacity": learner.algorithm.bank.capacity if learner.algorithm.bank is not None else None,
            "bank_purity": history[-1].get("bank_purity"),  # where the unlabeled images' true classes are known
            "bank_labeled": history[-1].get("bank_labeled"),
            "data": self.summary_data(),
            "version": self.provenance["version"], "commit": self.provenance["commit"],  # provenance.json: the rest
        }
        self.finish_summary(summary)
        return summary


def open_run_dir(cfg: Config) -> RunDir:
    """Rank 0 checks, locks and opens the run directory and chooses the checkpoint to resume from; a
    refusal ends every rank with its message."""
    run_dir, refusal = None, None
    if distributed.is_main():
        try:
            run_dir = RunDir.open(cfg)
        except (ConfigError, CheckpointError) as e:
            refusal = e
    refusal = distributed.from_main(refusal)
    if refusal is not None:
        raise refusal
    resume_from = distributed.from_main(str(run_dir.resume_from) if run_dir and run_dir.resume_from else None)
    return run_dir if run_dir is not None else RunDir.follower(cfg.run.dir, resume_from)

