"""One training-step function per algorithm. Each takes the model, a batch and the method's state,
and returns the total loss with every term visible; the learner does backward and the updates.

Shared conventions: one forward pass over [x_L, u_w, u_s1, u_s2] so batch norm sees all four
chunks; pseudo-labels come from the detached weak view; unlabeled means divide by 2 * B_U.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from bmb_stream.method.bank import MemoryBank
from bmb_stream.method.losses import hard_pseudo_label_loss, labeled_loss, pseudo_labels, soft_pseudo_label_loss


@dataclass
class Batch:
    x_labeled: torch.Tensor
    y_labeled: torch.Tensor
    u_weak: torch.Tensor | None = None
    u_strong1: torch.Tensor | None = None
    u_strong2: torch.Tensor | None = None


@dataclass
class StepContext:
    """What a step reads besides the batch: schedule position, class weights, bank and settings."""

    step: int
    cfg: object                       # the `method` config group
    labeled_weights: torch.Tensor | None = None
    unlabeled_weights: torch.Tensor | None = None
    bank: MemoryBank | None = None
    nhat: torch.Tensor | None = None  # pseudo-label estimate for the bank's draw (None: uniform)
    # every rank's rows of some tensors, in rank order (data-parallel runs feed the bank the candidates
    # of all ranks; with one process this returns its inputs)
    gather: Callable[..., tuple[torch.Tensor, ...]] = lambda *tensors: tensors
    offset: int = 0  # where this rank's unlabeled images start in the gathered batch


@dataclass
class StepOutput:
    loss: torch.Tensor
    terms: dict[str, torch.Tensor]  # detached, on the device: read only when logged (a read waits for the device)
    confident_counts: torch.Tensor | None = None  # per-class counts behind Nhat, after the step
    extras: dict = field(default_factory=dict)


def _forward_all(model, batch: Batch):
    b, u = len(batch.x_labeled), len(batch.u_weak)
    feats = model(torch.cat([batch.x_labeled, batch.u_weak, batch.u_strong1, batch.u_strong2]))
    f_l, f_w, f_s1, f_s2 = feats.split([b, u, u, u])
    return f_l, f_w, torch.cat([f_s1, f_s2])


def _active(step: int, start) -> float:
    return 1.0 if step >= (start or 0) else 0.0


def on_host(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Small integer or boolean tensors copied to the CPU in one transfer: a step's one wait for the
    device (each separate .cpu(), nonzero or boolean index would be another)."""
    flat = torch.cat([t.reshape(-1).long() for t in tensors]).cpu()
    return [part.view(t.shape).to(t.dtype) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


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
    if cfg.bank.get("labeled", False):
        labeled_feats, labeled_labels = gather(f_l, batch.y_labeled)
        feats = torch.cat([labeled_feats, feats])
        labels = torch.cat([labeled_labels, labels])
        mask = torch.cat([torch.ones_like(labeled_labels, dtype=torch.bool), mask])
        origin = torch.cat([torch.full((len(labeled_labels),), -1, dtype=torch.long), origin])
    return BankOffer(feats, labels, mask, origin)


def supervised_step(model, batch: Batch, ctx: StepContext) -> StepOutput:
    loss = labeled_loss(model.head_std(model(batch.x_labeled)), batch.y_labeled)
    return StepOutput(loss, {"loss_l": loss.detach()})


def fixmatch_losses(head, f_l, y_l, f_w, f_s, tau: float):
    """FixMatch's terms for one head: the labeled CE, and the CE of both strong views against the weak
    view's confident argmax; also the pseudo-labels and their mask."""
    loss_l = labeled_loss(head(f_l), y_l)
    _, yhat, mask = pseudo_labels(head(f_w), tau)
    loss_u = hard_pseudo_label_loss(head(f_s), yhat.repeat(2), mask.repeat(2))
    return loss_l, loss_u, yhat, mask


def fixmatch_step(model, batch: Batch, ctx: StepContext) -> StepOutput:
    cfg = ctx.cfg
    f_l, f_w, f_s = _forward_all(model, batch)
    loss_l, loss_u, yhat, mask = fixmatch_losses(model.head_std, f_l, batch.y_labeled, f_w, f_s, cfg.tau)
    loss = loss_l + _active(ctx.step, cfg.warmup) * cfg.lambda_u * loss_u
    return StepOutput(loss, {"loss_l": loss_l.detach(), "loss_u": loss_u.detach(), "mask": mask.float().mean()},
                      extras={"pseudo_labels": yhat, "mask": mask})


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
    f_l, f_w, f_s = _forward_all(model, batch)
    loss_l_std, loss_u_std, _, _ = fixmatch_losses(model.head_std, f_l, batch.y_labeled, f_w, f_s, cfg.tau)
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
            + _active(ctx.step, cfg.warmup) * cfg.lambda_u * (loss_u_std + loss_u_bal)
            + _active(ctx.step, cfg.bank_warmup if cfg.bank_warmup is not None else cfg.warmup) * cfg.lambda_mb * loss_mb)
    terms = {"loss_l": loss_l_std.detach(), "loss_l_bal": loss_l_bal.detach(), "loss_u": loss_u_std.detach(),
             "loss_u_bal": loss_u_bal.detach(), "loss_mb": loss_mb.detach(), "mask": mask_bal.float().mean(),
             "bank_in": torch.tensor(float(len(extras.get("bank_write", ((),))[0])))}
    return StepOutput(loss, terms, confident_counts=counts, extras=extras)


STEP_FUNCTIONS: dict[str, Callable[..., StepOutput]] = {
    "supervised": supervised_step,
    "fixmatch": fixmatch_step,
    "bmb": bmb_step,
}
