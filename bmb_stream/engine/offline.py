"""Offline mode: a fixed long-tailed split, a fixed number of steps, evaluation every
`train.eval_every` steps (the published protocols)."""

from __future__ import annotations

import time

from bmb_stream import distributed
from bmb_stream.algorithms import Batch
from bmb_stream.datasets import build_split
from bmb_stream.engine.batches import endless_batches
from bmb_stream.engine.learner import Learner
from bmb_stream.engine.run import Run
from bmb_stream.engine.stops import WORKER_DEATH, StopFlag
from bmb_stream.evaluation.evaluator import Evaluator
from bmb_stream.evaluation.monitor import StreamMonitor


class OfflineRun(Run):
    def prepare(self) -> None:
        cfg = self.cfg
        self.split = split = build_split(cfg.dataset, seed=self.seed, progress=cfg.progress and distributed.is_main())
        self.learner = Learner(cfg, split.num_classes, split.labeled_per_class, self.device)
        self.evaluator = Evaluator(split.test, split.num_classes, split.labeled_per_class, self.device,
                                   batch_size=cfg.eval.batch_size, many_threshold=cfg.dataset.many_threshold,
                                   few_threshold=cfg.dataset.few_threshold)
        # the protocols' unlabeled images have known classes: pseudo-label precision and bank purity
        bank = self.learner.algorithm.bank
        self.monitor = StreamMonitor(split.num_classes, bank.capacity if bank is not None else 0)

    def total_steps(self) -> int:
        return self.cfg.train.steps

    def train(self, stop: StopFlag) -> None:
        train, learner, pin = self.cfg.train, self.learner, self.device.type == "cuda"  # pinned: copied without waiting
        # the data order after a resume continues from a generator reseeded with the step reached
        data_seed = self.seed * 1_000_003 + learner.step
        labeled = endless_batches(self.split.labeled, self.batch_labeled, data_seed, train.num_workers, pin)
        unlabeled = (endless_batches(self.split.unlabeled, self.batch_unlabeled, data_seed + 1,
                                     train.num_workers, pin) if learner.needs_unlabeled else None)
        steps = self.total_steps()
        while learner.step < steps and not stop.should_stop():
            t = time.time()
            try:
                x_l, y_l = next(labeled)
                unlabeled_views, y_u = next(unlabeled) if unlabeled is not None else (None, None)
            except WORKER_DEATH as e:  # SIGTERM to the process group also ended the DataLoader workers
                if stop.stopping(e):
                    break
                raise
            fetched = time.time()
            batch = Batch(x_l, y_l, *(unlabeled_views or ()))
            terms = learner.train_step(batch)
            if y_u is not None:  # read by monitoring only, never by a training step
                self.monitor.observe(learner.last_extras, distributed.gather_rows(y_u))
            self.trained(len(x_l) + (len(batch.u_weak) if batch.u_weak is not None else 0), t, terms, fetched - t)
            if learner.step % train.eval_every == 0 or learner.step == steps:
                record = self.evaluate(after=self.monitor.report(learner.algorithm.bank))
                self.monitor.reset_counts()  # precision and recall over each evaluation period
                if record is not None:  # rank 0
                    self.bar.write(f"step {learner.step}: balanced acc {record['balanced_acc']:.4f} "
                                   f"(raw weights {record['raw_balanced_acc']:.4f})")
                self.save_checkpoint()
                self.keep_if_best()
        if stop.should_stop():  # a signal (on any rank) during the last step, or a loader ended by one
            self.save_checkpoint()

    def checkpoint_state(self) -> dict:
        return {"monitor": self.monitor.state_dict()}

    def load_state(self, state: dict) -> None:
        if "monitor" in state:  # checkpoints written before offline runs were monitored have none
            self.monitor.load_state_dict(state["monitor"])

    def summary_data(self) -> dict:
        split = self.split
        return {"labeled_per_class": split.labeled_per_class, "unlabeled_per_class": split.unlabeled_per_class,
                "test_per_class": split.test_per_class, "class_names": list(split.class_names)}

    def plot_options(self) -> dict:
        return {"class_names": self.split.class_names}


def run_offline(cfg, command: list[str] | None = None) -> dict:
    """`command`: the command line's arguments, for provenance.json (None: started from Python)."""
    return OfflineRun(cfg, command).execute()
