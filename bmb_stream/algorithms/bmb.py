"""BMB (Peng et al., "Rethinking Re-Sampling in Imbalanced Semi-Supervised Learning": the balanced
memory bank; ../shared/docs/bmb-method.md states it). FixMatch's step on the standard head trains the
representation; a balanced head learns from class-weighted labeled and pseudo-labeled terms and from
a memory bank of past features, kept class-rebalanced, drawn by the online pseudo-label estimate Nhat.
The math is method/ (bank.py, weights.py, losses.py); this file holds BMB's config, state and step.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch

from bmb_stream import distributed
from bmb_stream.algorithms.base import Batch, StepOutput, active, forward_all, on_host
from bmb_stream.algorithms.fixmatch import FixMatch, FixMatchConfig, fixmatch_losses
from bmb_stream.config_checks import NON_NEGATIVE, POSITIVE, choice, integer, key, number
from bmb_stream.method.bank import MemoryBank
from bmb_stream.method.losses import labeled_loss, pseudo_labels, soft_pseudo_label_loss
from bmb_stream.method.weights import COUNT_RULES, ESTIMATE_KINDS, PseudoLabelEstimate, class_weights

EVAL_HEADS = ("std", "bal")
BANK_FEATURES = ("strong", "weak")
UNLABELED_SOURCES = ("estimate", "labeled")


@dataclass
class BankConfig:
    enabled: bool = True
    capacity: int = key(POSITIVE, 256)  # P
    draw: int = key(POSITIVE, 128)  # K entries drawn per step
    beta_put: float = key(NON_NEGATIVE, 2.0)
    beta_get: float = key(NON_NEGATIVE, 1.0)
    count_floor: float = key(number(0, open_low=True), 0.001)  # class counts are floored here in the put probabilities
    # reference: floored counts, so one class absent from the bank gates every other class's rho ~0 |
    # present: min over the classes in the bank, absent ones rho = 1 (and in the draws, a class Nhat has
    # not counted weighs as the rarest counted)
    count_rule: str = key(choice(*COUNT_RULES), "reference")
    labeled: bool = False  # true: the labeled images' features and labels are candidates too (ours, not the reference)
    features: str = key(choice(*BANK_FEATURES), "strong")  # strong: both strong views' features; weak: the weak view's
    reset_after_warmup: bool = False


@dataclass
class WeightsConfig:
    enabled: bool = True
    alpha: float = key(NON_NEGATIVE, 1.5)
    # estimate (Nhat) | labeled (assume the unlabeled set looks like the labeled one)
    unlabeled_source: str = key(choice(*UNLABELED_SOURCES), "estimate")
    # reference: a class with no confident pseudo-label weighs 1 and every other ~0 | present: weights
    # relative to the rarest class counted; uncounted ones weigh 1
    count_rule: str = key(choice(*COUNT_RULES), "reference")


@dataclass
class EstimateConfig:
    kind: str = key(choice(*ESTIMATE_KINDS), "cumulative")  # cumulative (reference) | ema (follows drift)
    momentum: float = key(number(0, 1, open_high=True), 0.99)  # ema only
    threshold: bool = True  # count only confident pseudo-labels


@dataclass
class BMBConfig(FixMatchConfig):
    name: str = "bmb"
    eval_head: str = key(choice(*EVAL_HEADS), "bal")  # bal: predictions come from the balanced head
    lambda_mb: float = key(NON_NEGATIVE, 1.0)
    bank_warmup: int | None = key(integer(0, nullable=True), None)  # steps before the bank term starts (null: warmup)
    bank: BankConfig = field(default_factory=BankConfig)
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    estimate: EstimateConfig = field(default_factory=EstimateConfig)


@dataclass
class StepContext:
    """What BMB's step reads besides the batch: schedule position, class weights, bank and settings."""

    step: int
    cfg: BMBConfig
    labeled_weights: torch.Tensor | None = None
    unlabeled_weights: torch.Tensor | None = None
    bank: MemoryBank | None = None
    nhat: torch.Tensor | None = None  # pseudo-label estimate for the bank's draw (None: uniform)
    # every rank's rows of some tensors, in rank order (data-parallel runs feed the bank the candidates
    # of all ranks; with one process this returns its inputs)
    gather: Callable[..., tuple[torch.Tensor, ...]] = lambda *tensors: tensors
    offset: int = 0  # where this rank's unlabeled images start in the gathered batch


@dataclass
class BankOffer:
    """This step's bank candidates from every rank, before the confidence filter: features on the
    device; labels and mask, read on the host; origin (the unlabeled sample's index in the gathered
    batch, for monitoring bank purity; -1 for a labeled image, whose label is its true class)."""

    features: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor
    origin: torch.Tensor

    def chosen(self, labels: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The candidates that pass the mask, given the host's copy of labels and mask."""
        rows = torch.nonzero(mask).flatten()
        return self.features[rows.to(self.features.device, non_blocking=True)], labels[rows], self.origin[rows]


def _bank_offer(cfg, batch: Batch, f_l, f_w, f_s, strong_logits_bal, yhat_bal, mask_bal, gather, offset=0) -> BankOffer:
    """Unlabeled candidates are `head_bal` predictions on the weak view or on both strong views
    (`bank.features`), offered where confident; with `bank.labeled`, the labeled images' features and
    labels come first, always offered. Each rank sends all its rows with their mask (`gather`), filtered
    after the gather, so the candidates of 2 ranks of 32 images are those of 1 rank of 64, in the same
    order; `offset`: where this rank's unlabeled images start in the gathered batch.
    """
    if cfg.bank.features == "strong":
        _, labels, mask = pseudo_labels(strong_logits_bal, cfg.tau)
        feats = f_s
    else:
        feats, labels, mask = f_w, yhat_bal, mask_bal
    origin = torch.arange(len(labels)) % len(batch.u_weak) + offset
    feats, labels, mask, origin = gather(feats, labels, mask, origin)
    if cfg.bank.labeled:
        labeled_feats, labeled_labels = gather(f_l, batch.y_labeled)
        feats = torch.cat([labeled_feats, feats])
        labels = torch.cat([labeled_labels, labels])
        mask = torch.cat([torch.ones_like(labeled_labels, dtype=torch.bool), mask])
        origin = torch.cat([torch.full((len(labeled_labels),), -1, dtype=torch.long), origin])
    return BankOffer(feats, labels, mask, origin)


def bank_loss(model, ctx: StepContext, candidates) -> tuple[torch.Tensor, tuple]:
    """Enqueue this step's candidates (features on the device, labels and origin on the host), then
    draw a rebalanced set from the bank and return head_bal's CE on it (0 while the bank is empty) and
    the (slots, origin) written."""
    feats, labels, origin = candidates
    slots, sources = ctx.bank.put(feats, labels)
    nhat = ctx.nhat if ctx.nhat is not None else torch.ones(ctx.bank.num_classes)
    drawn = ctx.bank.draw(ctx.cfg.bank.draw, nhat)
    device = feats.device
    if drawn is None:
        return torch.zeros((), device=device), (slots, origin[sources])
    drawn_feats, drawn_labels = drawn
    return (labeled_loss(model.head_bal(drawn_feats.to(device)), drawn_labels.to(device, non_blocking=True)),
            (slots, origin[sources]))


def bmb_step(model, batch: Batch, ctx: StepContext) -> StepOutput:
    """FixMatch's step on the standard head (it trains the representation), plus the balanced head:
    class-weighted labeled CE, class-weighted soft pseudo-labels, and the memory bank's CE."""
    cfg = ctx.cfg
    f_l, f_w, f_s = forward_all(model, batch)
    loss_l_std, loss_u_std, _, mask_std = fixmatch_losses(model.head_std, f_l, batch.y_labeled, f_w, f_s, cfg.tau)
    loss_l_bal = labeled_loss(model.head_bal(f_l), batch.y_labeled, ctx.labeled_weights)
    p_bal, yhat_bal, mask_bal = pseudo_labels(model.head_bal(f_w), cfg.tau)
    strong_logits_bal = model.head_bal(f_s)
    loss_u_bal = soft_pseudo_label_loss(strong_logits_bal, p_bal.repeat(2, 1), mask_bal.repeat(2), ctx.unlabeled_weights)
    # Nhat counts confident balanced-head predictions (or all of them, without the threshold)
    counted = mask_bal if cfg.estimate.threshold else torch.ones_like(mask_bal)
    counts = torch.zeros(model.num_classes, dtype=torch.long, device=f_l.device).index_add_(0, yhat_bal, counted.long())
    offer = None
    if ctx.bank is not None:
        offer = _bank_offer(cfg, batch, f_l, f_w, f_s, strong_logits_bal, yhat_bal, mask_bal, ctx.gather, ctx.offset)
    # what the bank and the monitoring need on the host, in one transfer
    yhat_bal, mask_bal, counts, *offered = on_host(yhat_bal, mask_bal, counts,
                                                   *((offer.labels, offer.mask) if offer is not None else ()))
    loss_mb = torch.zeros((), device=f_l.device)
    extras = {"pseudo_labels": yhat_bal, "mask": mask_bal}
    if offer is not None:
        loss_mb, extras["bank_write"] = bank_loss(model, ctx, offer.chosen(*offered))
    loss = (loss_l_std + loss_l_bal
            + active(ctx.step, cfg.warmup) * cfg.lambda_u * (loss_u_std + loss_u_bal)
            + active(ctx.step, cfg.bank_warmup if cfg.bank_warmup is not None else cfg.warmup) * cfg.lambda_mb * loss_mb)
    terms = {"loss_l": loss_l_std.detach(), "loss_l_bal": loss_l_bal.detach(), "loss_u": loss_u_std.detach(),
             "loss_u_bal": loss_u_bal.detach(), "loss_mb": loss_mb.detach(), "mask": mask_bal.float().mean(),
             "mask_std": mask_std.float().mean(),
             "bank_in": torch.tensor(float(len(extras.get("bank_write", ((),))[0])))}
    return StepOutput(loss, terms, extras={**extras, "confident_counts": counts})


class BMB(FixMatch):
    """BMB's state: Nhat, the memory bank, and the class weights both give."""

    name = "bmb"
    Config = BMBConfig
    test_rule = "the balanced head"

    def __init__(self, cfg: BMBConfig, setup):
        super().__init__(cfg, setup)
        self.labeled_counts = setup.labeled_counts.float()
        self.estimate = PseudoLabelEstimate(setup.num_classes, cfg.estimate.kind, cfg.estimate.momentum)
        self.bank = None
        if cfg.bank.enabled:
            b = cfg.bank
            self.bank = MemoryBank(b.capacity, setup.feature_dim, setup.num_classes, beta_put=b.beta_put,
                                   beta_get=b.beta_get, count_floor=b.count_floor, count_rule=b.count_rule,
                                   seed=setup.seed, device=setup.device)

    def pseudo_label_stat(self) -> torch.Tensor | None:
        """Nhat, or the labeled counts where the config says the unlabeled set is assumed alike."""
        if self.cfg.weights.unlabeled_source == "labeled":
            return self.labeled_counts
        return self.estimate.value()

    def class_weights(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The labeled and the unlabeled class weights (None, None with the weights off)."""
        w = self.cfg.weights
        if not w.enabled:
            return None, None
        return (class_weights(self.labeled_counts, w.alpha, self.setup.num_classes, rule=w.count_rule),
                class_weights(self.pseudo_label_stat(), w.alpha, self.setup.num_classes, rule=w.count_rule))

    def step(self, model, batch: Batch, step: int) -> StepOutput:
        if step == self.cfg.warmup and step > 0:  # Nhat (and optionally the bank) restart when the warm-up ends
            self.estimate.reset()
            if self.bank is not None and self.cfg.bank.reset_after_warmup:
                self.bank.reset()
        labeled_w, unlabeled_w = self.class_weights()
        # the bank's draw always follows Nhat, whatever the unlabeled weights use
        ctx = StepContext(step, self.cfg, labeled_w, unlabeled_w, self.bank, self.estimate.value(),
                          distributed.gather_together,
                          distributed.rows_before(len(batch.u_weak)) if self.bank is not None else 0)
        return bmb_step(model, batch, ctx)

    def after_step(self, out: StepOutput) -> None:
        # step t+1 sees statistics up to step t, of every rank's batch
        self.estimate.update(distributed.sum_all(out.extras["confident_counts"]))

    def test_logits(self, classifier, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = classifier(x)
        return {"rule": classifier.head(self.cfg.eval_head)(features), "plain": classifier.head_std(features)}

    @classmethod
    def exported_head(cls, cfg, classifier, example):
        return copy.deepcopy(classifier.head(cfg.eval_head))

    def record(self) -> dict:
        """The bank's composition and the unlabeled class weights."""
        out = {}
        if self.bank is not None:
            out["bank_class_counts"] = self.bank.class_counts().tolist()
        _, unlabeled_w = self.class_weights()
        out["class_weights"] = None if unlabeled_w is None else unlabeled_w.tolist()
        return out

    def state_dict(self) -> dict:
        return {"estimate": self.estimate.state_dict(), **({"bank": self.bank.state_dict()} if self.bank is not None else {})}

    def load_state_dict(self, state: dict) -> None:
        if self.bank is not None:
            if "bank" not in state:
                raise ValueError("checkpoint has no bank state but the configuration uses one")
            self.bank.load_state_dict(state["bank"])
        self.estimate.load_state_dict(state["estimate"])
