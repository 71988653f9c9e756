"""Stream mode: unlabeled images arrive as WebDataset shards, one experience (a group of shards) at
a time; the learner's state persists across experiences, is evaluated with Avalanche after each
and checkpointed atomically at every boundary.

Exactness: everything random in experience k (augmentations, the labeled sampler, DataLoader worker
seeds) is seeded from (seed, k), and the learner's own generators are in its checkpoint, so a run
resumed from any checkpoint replays exactly what an uninterrupted run does. A checkpoint taken
mid-experience (on SIGINT/SIGTERM) records how many batches were consumed; the resumed run reads
and augments those batches again without training on them, which replays the random streams too.
A stop signal that arrives while the loop waits for a batch ends the wait at once: a shard read from
a server that stalls may block for as long as the storage's timeouts and retries allow.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import psutil
import torch

from bmb_stream import distributed
from bmb_stream.algorithms import Batch
from bmb_stream.datasets.transforms import build_views
from bmb_stream.distributed import rank_share
from bmb_stream.engine.batches import derived_seed, endless_batches, experience_batches, stream_steps
from bmb_stream.engine.labeled_pool import LabeledPool
from bmb_stream.engine.learner import Learner
from bmb_stream.engine.run import Run
from bmb_stream.engine.skipped_shards import SkippedShards
from bmb_stream.engine.stops import WORKER_DEATH, ReadInterrupted, StopFlag
from bmb_stream.engine.stream_source import prepare_stream
from bmb_stream.errors import ConfigError, ShardError, StorageUnavailable
from bmb_stream.evaluation.continual import KEYS as CONTINUAL_KEYS
from bmb_stream.evaluation.continual import continual_metrics
from bmb_stream.evaluation.evaluator import Evaluator
from bmb_stream.evaluation.monitor import StreamMonitor
from bmb_stream.redaction import redact_text
from bmb_stream.shards.reading import EncodedImages, handler_for


@dataclass
class ExperienceProgress:
    """What one rank read of an experience, handed from training it to what comes after it."""

    consumed: int = 0  # batches read, replayed ones included
    position: int = 0  # batches to count as done in a checkpoint: the consumed ones, less one in hand
    untrained: int = 0  # batches read after another rank's share ended the experience
    read: Counter = field(default_factory=Counter)  # samples read per shard, checked against the manifest
    # labeled stream samples met; they join the pool after the experience, so that the labeled set stays
    # what it was at the experience's start (and a mid-experience resume sees the same)
    joining: list = field(default_factory=list)


class StreamRun(Run):
    """The stream's phases: prepare the stream; per experience, before it (seeds, the labeled set),
    train on it (its unlabeled batches, replaying those of a mid-experience checkpoint without
    training), after it (shards read in full, the labeled pool, evaluation, checkpoint)."""

    def prepare(self) -> None:
        cfg = self.cfg
        self.source = source = prepare_stream(cfg)
        ranks = distributed.world_size()
        for k, shards in enumerate(source.experiences):
            if len(shards) < ranks:  # a rank without shards would end every experience at once
                raise ConfigError(f"experience {k} has {len(shards)} shard(s) for {ranks} ranks, and each rank reads its "
                                  f"own shards: give stream.shards_per_experience={ranks} or more, or run fewer ranks")
        self.num_classes = num_classes = cfg.dataset.num_classes
        self.seed_images, self.seed_labels = source.labeled
        self.labeled_per_class = np.bincount(self.seed_labels, minlength=num_classes).tolist()
        self.steps = stream_steps(source, self.batch_unlabeled, cfg.stream.num_workers,
                                  cfg.stream.passes)
        if self.steps is None and cfg.optim.schedule != "constant":
            raise ConfigError(f"optim.schedule={cfg.optim.schedule} needs the stream's length in steps, and no manifest "
                              f"beside the shards gives every shard's sample count: use optim.schedule=constant")
        self.learner = Learner(cfg, num_classes, self.labeled_per_class, self.device, total_steps=self.steps or 1)
        if self.steps is None and self.learner.algorithm.needs_horizon:
            raise ConfigError(f"method={cfg.method.name} schedules by the fraction of the run done, and no manifest "
                              f"beside the shards gives every shard's sample count, so the stream's length is unknown: "
                              f"give the shards a manifest (bmb-stream simulate and bmb-stream shards write one), or another method")
        self.pool = LabeledPool(cfg.stream.labeled_pool, num_classes, self.seed)
        self.on_shard_error = handler_for(cfg.stream.on_shard_error)  # in the readers, and for short shards
        self.monitor = StreamMonitor(num_classes, self.learner.algorithm.bank.capacity if self.learner.algorithm.bank is not None else 0)
        self.views = build_views(cfg.dataset.image_size, cfg.dataset.mean, resize=True,
                                 randaugment=cfg.dataset.randaugment, augment_on=cfg.dataset.augment_on)
        test_set = EncodedImages(source.test[0], source.test[1], self.views["test"])  # the evaluator reads it once
        self.evaluator = Evaluator(test_set, num_classes, self.labeled_per_class, self.device,
                                   batch_size=cfg.eval.batch_size, many_threshold=cfg.dataset.many_threshold,
                                   few_threshold=cfg.dataset.few_threshold, segments=source.segments)
        self.position = {"experience": 0, "batches": 0}
        self.skipped = SkippedShards()
        self.unlabeled_seen = np.zeros(num_classes, dtype=np.int64)  # true classes of the stream so far, where known
        self.initial_acc = None  # per-class test accuracy before training (forward transfer's baseline)
        self.untrained = 0  # batches read but not trained on: a rank's share longer than another's

    def total_steps(self) -> int | None:
        return self.steps

    def checkpoint_state(self) -> dict:
        self.skipped.share()
        return {"untrained_batches": self.untrained, "labeled_pool": self.pool.state_dict(),
                "monitor": self.monitor.state_dict(),
                "evaluator": self.evaluator.state_dict(),
                "unlabeled_seen": torch.from_numpy(self.unlabeled_seen), "initial_class_acc": self.initial_acc,
                "skipped": self.skipped.entries, "position": dict(self.position)}

    def load_state(self, state: dict) -> None:
        self.pool.load_state_dict(state["labeled_pool"])
        self.monitor.load_state_dict(state["monitor"])
        self.evaluator.load_state_dict(state["evaluator"])
        self.position = dict(state["position"])
        rank_batches = self.position.pop("rank_batches", None)
        if rank_batches is not None and any(rank_batches):
            if len(rank_batches) != distributed.world_size():
                raise ConfigError(f"resume=true: the checkpoint was taken in the middle of experience "
                                  f"{self.position['experience']} by {len(rank_batches)} ranks, and resumes only on as "
                                  f"many; a checkpoint at an experience boundary resumes on any number")
            self.position["batches"] = rank_batches[distributed.rank()]
        self.unlabeled_seen = state["unlabeled_seen"].numpy().copy()
        self.initial_acc = state.get("initial_class_acc")  # absent in checkpoints written before forward transfer
        self.skipped = SkippedShards(state.get("skipped", []))
        self.untrained = int(state.get("untrained_batches", 0))

    def resumed_message(self) -> str:
        return (f"resumed from {self.run_dir.resume_from}: experience {self.position['experience']}, "
                f"batch {self.position['batches']}, step {self.learner.step}")

    def stopped_message(self, stop: StopFlag) -> str:
        return (f"stopped by {stop.raised or 'a signal to another rank'} in experience {self.position['experience']}; "
                f"checkpoint {self.run_dir.last_checkpoint}")

    def checkpoint(self, experience: int, batches: int) -> None:
        """`batches`: those this rank consumed in `experience` (0 at its start); the checkpoint holds every rank's."""
        rank_batches = distributed.gather_objects(batches)
        self.position = {"experience": experience, "batches": batches}
        if len(rank_batches) > 1:
            self.position["rank_batches"] = rank_batches
        self.save_checkpoint()
        self.position.pop("rank_batches", None)
        keep = self.cfg.stream.keep_checkpoints
        if keep > 0 and not any(rank_batches):  # also keep the last few experience boundaries
            folder = self.run_dir.path / "checkpoints"
            self.save_checkpoint(folder / f"experience-{experience:06d}.pt")
            for old in sorted(folder.glob("experience-*.pt"))[:-keep] if distributed.is_main() else []:
                old.unlink()

    def train(self, stop: StopFlag) -> None:
        if self.learner.step == 0 and self.source.histograms is not None and self.initial_acc is None:
            # the initial model's accuracy on each experience's prior: the baseline of forward transfer
            initial = self.evaluator.evaluate_models({"model": self.learner.evaluated_model()})
            self.initial_acc = initial["model"]["per_class_acc"]
        for k in range(self.position["experience"], len(self.source.experiences)):
            replay = self.position["batches"] if k == self.position["experience"] else 0
            progress = self.train_experience(k, replay, stop)
            if stop.should_stop():
                self.checkpoint(k, progress.position)
                return
            self.after_experience(k, progress)

    def before_experience(self, k: int, replay: int):
        """Seeds and the labeled set of experience k."""
        torch.manual_seed(distributed.rank_seed(derived_seed(self.seed, k, 0)))  # augmentations in the main process
        labeled_set = EncodedImages(self.seed_images + list(self.pool.images),
                                    np.concatenate([self.seed_labels, self.pool.labels]).astype(np.int64), self.views["weak"])
        labeled_batches = endless_batches(labeled_set, self.batch_labeled, derived_seed(self.seed, k, 1),
                                          self.cfg.stream.num_workers, pin_memory=self.device.type == "cuda")
        if replay == 0 and k % self.cfg.stream.eval_every == 0:  # counts cover the experiences since the last evaluation
            self.monitor.reset_counts()
        return labeled_batches

    def trainable_batches(self, k: int, replay: int, labeled_batches, progress: ExperienceProgress):
        """This rank's batches of experience k to train on, each with its labeled batch: those after the
        first `replay` (read and augmented again, not trained on: a mid-experience resume), and none that
        holds only skips. Counts what it reads in `progress`."""
        cfg = self.cfg
        for ub in experience_batches(self.source.experiences[k], self.views["unlabeled"], self.batch_unlabeled, cfg.stream.num_workers,
                                     cfg.stream.passes, self.seed, k, self.on_shard_error, self.num_classes,
                                     pin_memory=self.device.type == "cuda", test_samples=self.source.test_samples):
            progress.consumed += 1
            replayed = progress.consumed <= replay
            self.note_skips(k, ub, replayed=replayed)
            if ub["u_weak"] is None:  # nothing but skips
                continue
            x_l, y_l = next(labeled_batches)
            if ub["pass"] == 0:  # a labeled stream sample joins the pool once, not once per pass
                progress.joining += ub["labeled_images"]
            progress.read.update(ub["urls"])
            if not replayed:
                yield ub, x_l, y_l

    def train_experience(self, k: int, replay: int, stop: StopFlag) -> ExperienceProgress:
        """Train on experience k; returns what this rank read, and its position for a checkpoint.
        The ranks agree before each step: the experience ends for all when one rank's share is done (the
        others read theirs to the end without training on it), and an outage or a stop on one rank stops all."""
        learner = self.learner
        labeled_batches = self.before_experience(k, replay)
        self.skipped.start_experience()
        progress = ExperienceProgress()
        trainable = self.trainable_batches(k, replay, labeled_batches, progress)
        self.where = f"{k + 1}/{len(self.source.experiences)}"
        while True:
            asked = time.time()
            got, outage, dying = None, None, False
            try:
                got = next(trainable, None)
            except StorageUnavailable as e:
                outage = e
            except WORKER_DEATH as e:  # SIGTERM to the process group also ended the DataLoader workers
                if not stop.stopping(e):
                    raise
                dying = True
            except ReadInterrupted:  # a stop while a read was blocked: no batch in hand, none half counted
                dying = True
            have, outages, dead = distributed.count_ranks(got is not None, outage is not None, dying)
            trained = max(progress.consumed - (got is not None), replay)  # a batch in hand is read, not trained on
            if outages:
                self.storage_stop(k, trained, outage)
            if dead:
                stop.agreed = True
                progress.position = trained
                return progress
            if have < distributed.world_size():  # a rank's share is done, and so is the experience
                progress.untrained = (got is not None) + sum(1 for _ in trainable)
                progress.position = progress.consumed
                return progress
            t = time.time()
            ub, x_l, y_l = got
            truth = distributed.gather_rows(torch.where(ub["cls"] >= 0, ub["cls"], ub["gt"]))  # -1: class unknown
            np.add.at(self.unlabeled_seen, truth[truth >= 0].numpy(), 1)
            terms = learner.train_step(Batch(x_l, y_l, ub["u_weak"], ub["u_strong1"], ub["u_strong2"]))
            self.monitor.observe(learner.last_extras, truth, first_read_of=k if ub["pass"] == 0 else None)
            self.trained(len(x_l) + len(ub["u_weak"]), asked, terms, waited_s=t - asked)
            if stop.should_stop():
                progress.position = progress.consumed
                return progress

    def storage_stop(self, k: int, trained: int, outage: StorageUnavailable | None) -> None:
        """Storage unreachable past its retry budget (on some rank): keep what was learned in a checkpoint
        of the batches trained on (the failed one is read again on resume) and stop every rank."""
        message = next(m for m in distributed.gather_objects(outage and str(outage)) if m is not None)
        self.checkpoint(k, trained)
        self.close()
        raise StorageUnavailable(f"{message}\nstopped in experience {k} with a checkpoint; resume when the storage "
                                 f"is back") from None

    def note_skips(self, k: int, ub: dict, replayed: bool) -> None:
        """Shards a batch reports skipped (stream.on_shard_error=skip), each counted once per experience."""
        for url, error in ub["skipped"]:
            if self.skipped.note(k, ub["pass"], url, error, replayed):
                self.bar.write(f"skipped: {redact_text(error)}")

    def after_experience(self, k: int, progress: ExperienceProgress) -> None:
        """Every shard read in full (or skipped), labeled samples into the pool, evaluation, checkpoint."""
        cfg, source = self.cfg, self.source
        shards = source.experiences[k]
        if not distributed.any_rank(progress.position > 0):
            raise ShardError(f"experience {k} ({', '.join(shards)}) yielded no samples")
        for url, error in source.short_shards(rank_share(shards), progress.read, cfg.stream.passes, self.skipped.in_experience):
            marker = self.on_shard_error(ShardError(error), url)  # under fail, the error ends the run
            if self.skipped.note(k, None, url, marker["error"]):
                self.bar.write(f"skipped: {redact_text(error)}")
        for joined in distributed.gather_objects(progress.joining):  # every rank's, in rank order
            for image, label in joined:
                self.pool.add(image, label)
        untrained = int(distributed.sum_all(torch.tensor(progress.untrained)))
        self.untrained += untrained
        if untrained and distributed.is_main():
            self.bar.write(f"experience {k}: {untrained} batch(es) read but not trained on (the ranks' shares of its "
                           f"shards differ in length; shards of equal size avoid it)")
        evaluated = (k + 1) % cfg.stream.eval_every == 0 or k == len(source.experiences) - 1
        if evaluated:
            self.skipped.share()
            trained = [i for i, start in enumerate(source.segment_start) if start <= k] if source.segments else None
            record = self.evaluate(
                before={"experience": k},
                after={**self.monitor.report(self.learner.algorithm.bank), "labeled_pool": len(self.pool.labels),
                       "skipped_shards": len(self.skipped.entries), "untrained_batches": self.untrained,
                       "rss_mb": psutil.Process().memory_info().rss / 2**20},
                trained_segments=trained, extra=lambda record: self.continual(k, record))
            if record is not None:  # rank 0 reports
                self.report(k, record)
        self.checkpoint(k + 1, 0)
        if evaluated:
            self.keep_if_best()

    def continual(self, k: int, record: dict) -> dict:
        """The continual-learning metrics after experience k (evaluation/continual.py), and the prequential
        accuracy of each experience so far (None where its images' classes are unknown)."""
        rows = [r["per_class_acc"] for r in self.history] + [record["per_class_acc"]]
        trained = [r["experience"] for r in self.history] + [k]
        metrics = continual_metrics(rows, trained, self.source.histograms, self.initial_acc)
        since = trained[-2] + 1 if len(trained) > 1 else 0  # the experiences trained since the previous evaluation
        return {**metrics, "prequential_accuracy": self.monitor.prequential(range(since, k + 1))}

    def report(self, k: int, record: dict) -> None:
        """An evaluation's line."""
        purity = record.get("bank_purity")
        self.bar.write(f"experience {k}: balanced acc {record['balanced_acc']:.4f} (raw {record['raw_balanced_acc']:.4f})"
                       + (f", bank purity {purity:.2f}" if purity is not None else ""))

    def summary_data(self) -> dict:
        return {"labeled_per_class": self.labeled_per_class, "unlabeled_per_class": self.unlabeled_seen.tolist(),
                "test_per_class": np.bincount(self.source.test[1], minlength=self.num_classes).tolist(),
                "labeled_pool_per_class": self.pool.class_counts(), "class_names": list(self.source.class_names)}

    def finish_summary(self, summary: dict) -> None:
        summary["experiences"] = len(self.source.experiences)
        summary["evaluations"] = len(self.history)
        last = self.history[-1]
        # the continual-learning metrics after the last experience; the class x evaluation accuracies, and the
        # experience each row of the accuracy matrices was evaluated after
        summary.update({key: last.get(key) for key in (*CONTINUAL_KEYS, "stream_forgetting")})
        summary["accuracy_matrix"] = [r.get("experience_accuracy") for r in self.history]
        summary["class_accuracy_matrix"] = [r["per_class_acc"] for r in self.history]
        # per experience, where the records give it over the experiences since the previous evaluation
        summary["prequential_accuracy"] = [self.monitor.prequential([k]) for k in range(last["experience"] + 1)]
        summary["evaluated_after_experience"] = [r["experience"] for r in self.history]
        summary["skipped_shards"] = self.skipped.entries
        summary["untrained_batches"] = self.untrained

    def plot_options(self) -> dict:
        return {"class_names": self.source.class_names, "x_key": "samples_seen", "priors": self.source.histograms}


def run_stream(cfg, command: list[str] | None = None) -> dict:
    """`command`: the command line's arguments, for provenance.json (None: started from Python)."""
    return StreamRun(cfg, command).execute()
