"""The learner: what every algorithm shares (model, EMA model, optimizer and schedule, precision,
data parallelism, random state, step counter) and the algorithm (bmb_stream/algorithms/), with one
`train_step` and one `state_dict` for all of it."""

from __future__ import annotations

import math
import random
from contextlib import nullcontext

import torch

from bmb_stream import distributed
from bmb_stream.algorithms import Batch, Setup, build_algorithm
from bmb_stream.config_schema import OPTIMIZERS, SCHEDULES, Config, Optim
from bmb_stream.datasets.transforms import DeviceNormalize, device_strong_augment
from bmb_stream.engine.ema import ModelEMA
from bmb_stream.errors import TrainingDiverged
from bmb_stream.models import build_model
from bmb_stream.models.exported import load_pretrained
from bmb_stream.models.heads import Predictor
from bmb_stream.models.registry import model_options


def lr_factor(step: int, total_steps: int, schedule: str) -> float:
    """constant; cosine annealing to 0 (0.5 (1 + cos(pi t / T))); or FixMatch's cos(7 pi t / 16 T)."""
    t = min(step, total_steps) / max(1, total_steps)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "fixmatch_cosine":
        return math.cos(7.0 * math.pi * t / 16.0)
    raise ValueError(f"unknown lr schedule {schedule!r}; accepted: {', '.join(SCHEDULES)}")


def build_optimizer(cfg: Optim, params) -> torch.optim.Optimizer:
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.name!r}; accepted: {', '.join(OPTIMIZERS)}")


def random_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_random_state(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    random.setstate((3, tuple(rng["python"]), None))
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


class Learner:
    def __init__(self, cfg: Config, num_classes: int, labeled_per_class: list[int], device: torch.device,
                 total_steps: int | None = None):
        """`total_steps`: the horizon of the learning-rate schedule (offline: train.steps; stream: the
        stream's length in steps). `cfg`: the schema's objects (`bmb_stream.config.typed`)."""
        self.cfg = cfg
        self.device = device
        self.num_classes = num_classes
        channels_last = cfg.train.channels_last
        self.model = build_model(cfg.model.name, num_classes, **model_options(cfg.model))
        if cfg.model.pretrained:  # before the EMA copy, and before rank 0's weights are broadcast
            loaded = load_pretrained(self.model, cfg.model.pretrained)
            if distributed.is_main():
                print(f"model.pretrained: {loaded}")
        self.model.to(device)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        # the loaders' uint8 batches become normalised float inputs on the device
        self.input = DeviceNormalize(cfg.dataset.mean, cfg.dataset.std, device, channels_last)
        # dataset.augment_on=device: the strong views come cropped and flipped; RandAugment and Cutout run here
        self.strong_augment = (device_strong_augment(cfg.dataset.image_size, cfg.dataset.mean, cfg.dataset.randaugment)
                               if cfg.dataset.augment_on == "device" else None)
        # what a step trains through; in a data-parallel run it starts every rank from rank 0's weights
        self.parallel_model = distributed.data_parallel(self.model, device)
        self.ema = ModelEMA(self.model, cfg.train.ema_decay, cfg.train.ema_warmup) if cfg.train.ema_decay > 0 else None
        if cfg.train.compile:  # after the EMA copy, which stays eager; parameter names are unchanged
            self.model.backbone.compile()
        self.optimizer = build_optimizer(cfg.optim, self.model.parameters())
        total = cfg.train.steps if total_steps is None else total_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda t: lr_factor(t, total, cfg.optim.schedule))
        self.algorithm = build_algorithm(cfg.method, Setup(
            num_classes, torch.tensor(labeled_per_class, dtype=torch.float32), self.model.feature_dim, device,
            seed=cfg.seed, total_steps=total))
        self.step = 0
        self.samples_seen = 0  # unlabeled images consumed (labeled ones for the supervised baseline)
        self.last_extras: dict = {}
        # a loss seen NaN or infinite since the last check: kept on the device, read by `check_finite` (every
        # train.log_every steps, at evaluations and checkpoints), so that the step never waits for it
        self.nonfinite_loss = torch.zeros((), dtype=torch.bool, device=device)
        self.checked_step = 0

    @property
    def needs_unlabeled(self) -> bool:
        return self.algorithm.needs_unlabeled

    def on_device(self, batch: Batch) -> Batch:
        """The batch as a step takes it: images normalised on the device, labels there too; with
        dataset.augment_on=device, the strong views' RandAugment and Cutout applied there first."""
        strong = (batch.u_strong1, batch.u_strong2)
        if self.strong_augment is not None and batch.u_strong1 is not None and batch.u_strong1.dtype == torch.uint8:
            strong = tuple(self.strong_augment(v.to(self.device, non_blocking=True)) for v in strong)
        views = (batch.u_weak, *strong)
        return Batch(self.input(batch.x_labeled), batch.y_labeled.to(self.device, non_blocking=True),
                     *(self.input(v) if v is not None else None for v in views))

    def train_step(self, batch: Batch) -> dict[str, torch.Tensor | float]:
        """One optimizer step on a batch of uint8 images (or normalised float ones), on any device;
        returns the loss terms as detached tensors on the device (formatting or float() reads them: do
        it every train.log_every steps, not at every step) and the lr."""
        batch = self.on_device(batch)
        # bfloat16 autocast on the GPU, and on CPUs (fast where they have bf16 instructions: bench/gpu_step.py)
        amp = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.cfg.train.amp else nullcontext()
        with amp:
            out = self.algorithm.step(self.parallel_model, batch, self.step)
        self.nonfinite_loss |= ~torch.isfinite(out.loss.detach())
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.optimizer.step()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        distributed.average_buffers(self.model)
        if self.ema is not None:
            self.ema.update(self.model)
        if self.cfg.optim.wd_shrink:  # the reference's decoupled decay, after the EMA: w <- w * (1 - c * lr)
            self.shrink(1.0 - self.cfg.optim.wd_shrink * lr)
        self.algorithm.after_step(out)
        self.step += 1
        images = len(batch.u_weak) if batch.u_weak is not None else len(batch.x_labeled)
        self.samples_seen += distributed.world_size() * images  # every rank's
        # pseudo-labels (of every rank's batch, in rank order) and bank writes of this step, for monitoring
        self.last_extras = dict(out.extras)
        if "pseudo_labels" in out.extras:
            self.last_extras["pseudo_labels"], self.last_extras["mask"] = distributed.gather_together(
                out.extras["pseudo_labels"], out.extras["mask"])
        return {**out.terms, "loss": out.loss.detach(), "lr": lr}

    @torch.no_grad()
    def shrink(self, factor: float) -> None:
        """Scale the weights (with optim.wd_shrink_buffers, as the reference does, also the floating-point
        buffers: batch-norm running means and variances)."""
        if self.cfg.optim.wd_shrink_buffers:
            tensors = [t for t in self.model.state_dict().values() if t.is_floating_point()]
        else:
            tensors = list(self.model.parameters())
        torch._foreach_mul_(tensors, factor)

    def state_is_finite(self) -> bool:
        """Whether every float tensor of the model and its EMA (weights and batch-norm statistics) is finite."""
        models = [self.model] + ([self.ema.module] if self.ema is not None else [])
        flags = [torch.isfinite(t).all() for m in models for t in m.state_dict().values() if t.is_floating_point()]
        return bool(torch.stack(flags).all()) if flags else True

    def check_finite(self, weights: bool = False) -> None:
        """Raise TrainingDiverged where a loss since the last check (on any rank) was NaN or infinite, or,
        with `weights`, where a weight or batch-norm statistic of the model or its EMA is (every rank calls
        it at the same step)."""
        bad = bool(self.nonfinite_loss)
        what = "the loss"
        if weights and not bad:
            bad, what = not self.state_is_finite(), "the weights"
        if distributed.any_rank(bad):
            since = f"between steps {self.checked_step} and {self.step}" if self.step > self.checked_step + 1 \
                else f"at step {self.step}"
            raise TrainingDiverged(
                f"training diverged: {what} became NaN or infinite {since}, and no checkpoint is written from "
                f"diverged weights. Lower optim.lr, check dataset.mean and dataset.std, or turn train.amp off, then "
                f"start a new run.dir")
        self.checked_step = self.step

    def evaluated_model(self) -> Predictor:
        """The model evaluation reports: the EMA model when there is one, with the algorithm's test-time
        rule (and without it, where it has one)."""
        return Predictor(self.ema.module if self.ema is not None else self.model, self.algorithm.test_logits, self.input)

    def raw_model(self) -> Predictor:
        return Predictor(self.model, self.algorithm.test_logits, self.input)

    # --- persistence -------------------------------------------------------------------------
    def _own_random_state(self, state: dict) -> dict | None:
        """This rank's random state in a checkpoint: its own where the checkpoint has one per rank of the
        same world size; rank 0's on rank 0; None (reseeded from the step) on another rank otherwise."""
        ranks = state.get("rank_rng")
        if ranks is not None and len(ranks) == distributed.world_size():
            return ranks[distributed.rank()]
        return state["rng"] if distributed.is_main() else None

    def state_dict(self) -> dict:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "samples_seen": self.samples_seen,
            "rng": random_state(),
        }
        if distributed.world_size() > 1:  # each rank's own augmentation stream, for an exact resume
            state["rank_rng"] = distributed.gather_objects(state["rng"])
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        state["algorithm"] = self.algorithm.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = self.checked_step = int(state["step"])
        self.samples_seen = int(state["samples_seen"])
        rng = self._own_random_state(state)
        if rng is not None:
            set_random_state(rng)
        else:  # resumed at another world size: this rank's augmentation continues from a fresh seed
            torch.manual_seed(distributed.rank_seed(self.cfg.seed + self.step))
            random.seed(distributed.rank_seed(self.cfg.seed + self.step))
        if self.ema is not None:
            if "ema" not in state:
                raise ValueError("checkpoint has no ema state but the configuration uses one")
            self.ema.load_state_dict(state["ema"])
        # checkpoints written before algorithms were classes keep the algorithm's state beside the learner's
        self.algorithm.load_state_dict(state.get("algorithm", state))
