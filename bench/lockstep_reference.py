"""Lockstep check against the authors' BMB code: both codes train from the same initial weights on
the same batches and augmented views, step by step, and every quantity of a step is compared.

The authors' code is not part of this project: point --reference at the `BMB` folder of a checkout of
`wujianP/ImbalancedSSL` (commit 8eff1ff; ../shared/docs/reference-run.md, or README "Fidelity").
Their modules are imported from there unchanged and run on the CPU: `.cuda()` is the identity, their
tqdm bar is silenced, and loguru / tensorboardX, which only their logging uses, get stand-ins when
they are not installed. Their settings are the fidelity check's: CIFAR-10 gamma 100, "adaweight+tcp"
script, one process (so the candidate all-gather is the identity), the bank fed the weak view's
features (their `--tcp_ablate_feat --tcp_use_weak` path: the same computation as their main path,
which crashes on an unassigned variable used only for logging).

Per step, both codes get the same labeled batch and the same weak and two strong views (made by this
package's loaders with `dataset.randaugment=reference`, normalised once, fed to both as floats).
The bank's random choices (admissions, evictions, draws) are the one thing the two codes cannot share,
so they are taken from the authors' code and imposed on ours; what decides them is compared instead:
the candidates (features and pseudo-labels), the admission probabilities and the draw probabilities.

Compared at every step: the five loss terms, the weak views' pseudo-labels and confidence mask, the
per-sample class weights (labeled and unlabeled), Nhat, the bank's candidates and probabilities, every
parameter's gradient, and after the step the parameters, the batch-norm statistics and the EMA model.

By default the authors' state is copied into ours after each comparison, so that each step is compared
from identical states and float round-off cannot accumulate; --free lets both codes run on, which
shows how fast round-off grows through training. From initial weights the balanced head is not 95%
sure of an image for about 100 steps, so the bank stays nearly empty: --pretrain N trains ours alone
first (with its own random choices), and the lockstep starts from that state, copied into their code
(weights, statistics, EMA model, Adam's moments, Nhat, the bank); --bank-start N fills our bank first
with N unlabeled images' features and true classes, as many of each class, so that every class is in
the bank and admissions and evictions follow the rebalancing rule from the first step.

    python bench/lockstep_reference.py --reference PATH/ImbalancedSSL/BMB [--steps 200] [--tau 0.95]
                                       [--pretrain 0] [--bank-start 0] [--free] [--seed 0] [--every 10]
                                       [--out FILE.jsonl] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bmb_stream.algorithms import Batch
from bmb_stream.config import compose, typed
from bmb_stream.datasets import build_split
from bmb_stream.engine.batches import endless_batches
from bmb_stream.engine.learner import Learner
from bmb_stream.method.bank import MemoryBank, draw_probabilities, put_probabilities

# Their CIFAR-10 gamma-100 "select/adaweight+tcp/best-lr0.002" settings (reference-run.md), one process.
REFERENCE_ARGS = [
    "--tcp_pool_size", "256", "--tcp_get_num", "128", "--tcp_distribution_type", "pd_select",
    "--tcp_sample_fun_type", "poly_inv", "--tcp_balance_power", "2", "--tcp_sample_power", "1",
    "--tcp_put_type", "inpool", "--tcp_remove_type", "inpool", "--ada_weight_type", "pd_select",
    "--sample_fun_type", "poly_inv", "--sample_power", "1.5", "--model", "wideresnet", "--dataset", "cifar10",
    "--warmup_epochs", "0", "--labeled_batch_size", "64", "--unlabeled_batch_size", "64", "--lr", "0.002",
    "--lr_scheduler_type", "none", "--optim_type", "adam", "--pd_distribution_estimate_nepoch", "999",
    "--tcp_ablate_feat", "--tcp_use_weak", "--epochs", "500", "--val-iteration", "1", "--writer_log_class_stride", "1",
]
# Ours at the same settings: the fidelity check's (bench/fidelity_wrn.py).
OURS = ["mode=offline", "experiment=fmnist_lt_r100", "method=bmb", "dataset.split_shuffle=false",
        "dataset.randaugment=reference", "train.ema_warmup=false", "progress=false", "train.num_workers=0"]
# In their WideResNet the first block of groups 2 and 3 applies bn1 to its input and then reads the input
# itself (conv1 and the shortcut take x): that batch norm's output is unused, but its running statistics
# move. Ours does not compute it, so its statistics stay at their initial values. No output depends on them.
DEAD_BN = ("block2.layer.0.bn1.", "block3.layer.0.bn1.")
TERMS = {"loss_l": "L_base", "loss_u": "U_base", "loss_l_bal": "L_abc", "loss_u_bal": "U_abc", "loss_mb": "tcp"}


def import_reference(folder: Path) -> types.SimpleNamespace:
    """The authors' modules, importable on a CPU without their logging packages."""
    if not (folder / "engine" / "train_engine_fix.py").is_file():
        sys.exit(f"error: {folder} is not the BMB folder of a wujianP/ImbalancedSSL checkout "
                 f"(no engine/train_engine_fix.py there)")
    for name, attrs in {"loguru": {"logger": None}, "tensorboardX": {"SummaryWriter": object}}.items():
        try:
            __import__(name)
        except ImportError:  # only their loggers use these
            sys.modules[name] = types.ModuleType(name)
            sys.modules[name].__dict__.update(attrs)
    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self
    torch.cuda.memory_allocated = lambda *a, **k: 0
    sys.path.insert(0, str(folder))
    import engine.train_engine_fix as train_engine
    import utils.argparse as their_args
    import utils.misc as misc
    import utils.tcp as tcp
    from model.wideresnetwithABC import WideResNet
    train_engine.tqdm = lambda iterable, **_: iterable
    return types.SimpleNamespace(train_engine=train_engine, misc=misc, tcp=tcp, WideResNet=WideResNet,
                                 get_args=their_args.get_args)


class Feeder:
    """Their loaders' stand-in: `.next()` gives the batch of the current step, in their tuple layout."""

    def __init__(self):
        self.item = None

    def __iter__(self):
        return self

    def next(self):
        return self.item

    __next__ = next


class Recorder:
    """What the authors' step computed, captured by wrapping their functions (not editing them)."""

    def __init__(self, ref, engine):
        self.ref, self.engine = ref, engine
        self.semi_loss = ref.misc.SemiLoss()
        engine.semi_loss = self.record_semi_loss
        process_tcp, put, get = engine.process_tcp, engine.tcp.put_samples, engine.tcp.get_samples
        engine.process_tcp = lambda **kw: self.keep("tcp", process_tcp(**kw))
        engine.tcp.put_samples = lambda **kw: self.keep("put", self.in_phase("put", put, kw))
        engine.tcp.get_samples = lambda **kw: self.keep("get", self.in_phase("get", get, kw))
        self.get_index = ref.tcp.get_index
        ref.tcp.get_index = self.record_get_index
        self.step = {}

    def keep(self, key, value):
        self.step[key] = value
        return value

    def record_semi_loss(self, **kw):
        out = self.semi_loss(**kw)
        self.step.setdefault("semi_loss", []).append({**kw, "out": out})
        return out

    def in_phase(self, phase, fn, kw):
        self.step[f"{phase}_args"] = kw
        self.phase = phase
        if phase != "put":
            return fn(**kw)
        bernoulli = torch.bernoulli

        def record(probs, *a, **k):
            self.step["put_probs"] = probs.clone()
            self.step["put_mask"] = bernoulli(probs, *a, **k)
            return self.step["put_mask"]

        torch.bernoulli = record
        try:
            return fn(**kw)
        finally:
            torch.bernoulli = bernoulli

    def record_get_index(self, probs, get_num):
        index = self.get_index(probs.clone(), get_num)
        self.step.setdefault(f"{self.phase}_index", []).append((probs.clone(), index.clone()))
        return index


class ImposedBank(MemoryBank):
    """Our bank, computing its own admission and draw probabilities, but taking the authors' random
    outcome: after `put` it holds exactly their pool; `draw` returns their draw."""

    outcome: dict = {}
    seen: dict = {}

    def put(self, features, labels):
        rho = put_probabilities(self.class_counts(), self.beta_put, self.count_floor, self.count_rule)
        self.seen = {"features": features.detach().clone(), "labels": labels.clone(), "put_probs": rho[labels.long()]}
        pool = self.outcome["pool"]
        self.fill = len(pool[1])
        self.features[: self.fill] = pool[0]
        self.labels[: self.fill] = pool[1]
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty

    def draw(self, k, nhat):
        if min(k, self.fill) == 0:
            return None
        self.seen["draw_probs"] = draw_probabilities(nhat.cpu(), self.labels[: self.fill], self.beta_get,
                                                     self.count_floor, self.count_rule)
        return self.outcome["drawn"]


def their_engine(ref, tau: float, labeled_per_class: list[int], record: bool = True):
    """The authors' training engine at the fidelity settings, fed through two `Feeder`s; with `record`,
    what each step computes is kept in `.recorder.step`."""
    argv, sys.argv = sys.argv, ["ABCfix.py", *REFERENCE_ARGS, "--tau", str(tau)]
    try:
        args = ref.get_args()
    finally:
        sys.argv = argv
    args.distributed, args.tcp_sync_input = False, False
    model, ema_model = ref.WideResNet(num_classes=10), ref.WideResNet(num_classes=10)
    for p in ema_model.parameters():
        p.detach_()
    labeled, unlabeled = Feeder(), Feeder()
    optimizer = ref.misc.get_optimizer(args, model)
    ema = ref.misc.WeightEMA(model, ema_model, lr=args.lr, alpha=args.ema_decay)
    engine = ref.train_engine.TrainEngine(
        args=args, labeled_loader=labeled, unlabeled_loader=unlabeled, model=nn.DataParallel(model),
        optimizer=optimizer, ema_optimizer=ema, semi_loss=None, sample_num_per_class={"labeled": labeled_per_class},
        num_class=10)
    if not record:
        engine.semi_loss = ref.misc.SemiLoss()
    return types.SimpleNamespace(model=model, ema_model=ema_model, optimizer=optimizer, engine=engine,
                                 labeled=labeled, unlabeled=unlabeled,
                                 recorder=Recorder(ref, engine) if record else None)


def copy_state(src: nn.Module, dst: nn.Module) -> None:
    """Load `src`'s state into `dst` by position (the two WRN-28-2 list their tensors in the same order)."""
    with torch.no_grad():
        for a, b in zip(src.state_dict().values(), dst.state_dict().values(), strict=True):
            b.copy_(a)


def copy_optimizer(src: torch.optim.Optimizer, dst: torch.optim.Optimizer, src_params, dst_params) -> None:
    for p, q in zip(src_params, dst_params, strict=True):
        if p in src.state:
            dst.state[q] = {k: v.clone() for k, v in src.state[p].items()}


def max_diff(a, b) -> float:
    a, b = torch.as_tensor(a).detach().double(), torch.as_tensor(b).detach().double()
    if a.numel() == b.numel() == 1:  # a loss: their zeros(1) against our scalar
        a, b = a.reshape(()), b.reshape(())
    if a.shape != b.shape:
        return float("inf")
    return float((a - b).abs().max()) if a.numel() else 0.0


def state_diffs(theirs: nn.Module, ours: nn.Module) -> dict[str, float]:
    """Largest absolute difference of the parameters; largest relative difference of the batch-norm
    statistics, element by element (|a - b| / (|a| + 0.001 max |a|): a running mean near 0 has no scale)."""
    params, stats = 0.0, 0.0
    for (name, a), b in zip(theirs.state_dict().items(), ours.state_dict().values(), strict=True):
        if not a.is_floating_point():
            continue
        if name.startswith(DEAD_BN):
            continue
        if "running" in name:
            a, b = a.double(), b.double()
            stats = max(stats, float(((a - b).abs() / (a.abs() + 1e-3 * a.abs().max() + 1e-30)).max()))
        else:
            params = max(params, max_diff(a, b))
    return {"params": params, "bn_stats_rel": stats}


def grad_diff(theirs: nn.Module, ours: nn.Module) -> float:
    """max over parameter tensors of |g_ours - g_theirs| / |g_theirs| (norms); tensors without gradient skipped."""
    worst = 0.0
    for p, q in zip(theirs.parameters(), ours.parameters(), strict=True):
        if p.grad is None or q.grad is None or float(p.grad.norm()) == 0:
            continue
        worst = max(worst, float((p.grad - q.grad).norm() / p.grad.norm()))
    return worst


def step_both(t, batch, y_u, them, learner, bank: ImposedBank) -> dict:
    """One step of each code on the same batch; the comparison of what each computed."""
    x_l, y_l, u_w, u_s1, u_s2 = batch
    them.labeled.item = (x_l, y_l, None)
    them.unlabeled.item = ((u_w, u_s1, u_s2), y_u, None)
    rec = them.recorder
    rec.step = {}
    nhat_theirs = them.engine.pseudo_distribution_meters["select_pseudo_num_per_class_abc"].avg.clone()
    them.engine.train_one_epoch_fix(epoch=1)  # not 0: epoch 0 resets their Nhat meters, which hold ours
    got = rec.step
    tcp = them.engine.tcp
    drawn_feats, drawn_labels, n_drawn = got["get"]
    bank.outcome = {"pool": (tcp.feature_pool[: tcp.sample_num].clone(), tcp.label_pool[: tcp.sample_num].long()),
                    "drawn": (drawn_feats.clone(), drawn_labels.long())}
    bank.seen = {}
    algorithm = learner.algorithm
    nhat_ours = algorithm.estimate.value()
    lw, uw = algorithm.class_weights()
    terms = learner.train_step(Batch(x_l, y_l, u_w, u_s1, u_s2))
    base, abc = got["semi_loss"]
    b = len(u_w)
    their_terms = {"L_base": base["out"][0], "U_base": base["out"][1], "L_abc": abc["out"][0],
                   "U_abc": abc["out"][1], "tcp": got["tcp"][0]}
    their_yhat = abc["targets_U"][:b].argmax(1)
    their_mask = abc["mask_U_by_threshold"][:b].bool()
    row = {"step": t + 1, "loss": {ours: max_diff(terms[ours], their_terms[name]) for ours, name in TERMS.items()},
           "pseudo_label_disagree": int((learner.last_extras["pseudo_labels"] != their_yhat).sum()),
           "mask_disagree": int((learner.last_extras["mask"] != their_mask).sum()),
           "weights_l": max_diff(lw[y_l], abc["mask_L_for_balance"]),
           "weights_u": max_diff(uw[their_yhat], abc["mask_U_for_balance"][:b]),
           "nhat": max_diff(nhat_ours if nhat_ours is not None else torch.zeros(10), nhat_theirs),
           "mask_rate": float(their_mask.float().mean()), "bank": tcp.sample_num, "drawn": n_drawn}
    put_args = got["put_args"]
    seen = bank.seen
    row["candidates"] = len(put_args["input_labels"])
    if "labels" in seen:
        row["candidate_labels_equal"] = bool(torch.equal(seen["labels"], put_args["input_labels"].long()))
        row["candidate_features"] = max_diff(seen["features"], put_args["input_features"])
        if "put_probs" in got:
            row["put_probs"] = max_diff(seen["put_probs"], got["put_probs"])
        if "draw_probs" in seen and got.get("get_index"):
            row["draw_probs"] = max_diff(seen["draw_probs"], torch.as_tensor(got["get_index"][-1][0]).float()
                                         / float(got["get_index"][-1][0].sum()))
    evictions = got.get("put_index", [])
    row["admitted"] = int(got["put_mask"].sum()) if "put_mask" in got else 0
    row["evicted"] = sum(len(idx) for _, idx in evictions)
    row["eviction_repeats"] = sum(len(idx) - len(torch.unique(idx)) for _, idx in evictions)
    row["grad"] = grad_diff(them.model, learner.model)
    row.update({f"model_{k}": v for k, v in state_diffs(them.model, learner.model).items()})
    row.update({f"ema_{k}": v for k, v in state_diffs(them.ema_model, learner.ema.module).items()})
    return row


def resync(them, learner) -> None:
    """Our state := theirs (weights, statistics, EMA, Adam's moments, Nhat)."""
    copy_state(them.model, learner.model)
    copy_state(them.ema_model, learner.ema.module)
    copy_optimizer(them.optimizer, learner.optimizer, list(them.model.parameters()), list(learner.model.parameters()))
    meter = them.engine.pseudo_distribution_meters["select_pseudo_num_per_class_abc"]
    learner.algorithm.estimate.total = meter.sum.double().clone()
    learner.algorithm.estimate.steps = int(meter.count)


def fill_bank(learner, bank: MemoryBank, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Our bank starts with these images' features under the initial weights (eval mode, so that no
    batch-norm statistic moves), with their true classes."""
    model = learner.model
    model.eval()
    with torch.no_grad():
        feats = model(images)
    model.train()
    n = len(labels)
    bank.features[:n], bank.labels[:n], bank.fill = feats, labels, n


def share_state(learner, bank: ImposedBank, them) -> None:
    """The authors' code starts from our state: weights, batch-norm statistics, EMA model, Adam's
    moments, Nhat and the bank's entries (copied into `bank`, which imposes their choices from now on)."""
    copy_state(learner.model, them.model)
    copy_state(learner.ema.module, them.ema_model)
    copy_optimizer(learner.optimizer, them.optimizer, list(learner.model.parameters()), list(them.model.parameters()))
    estimate = learner.algorithm.estimate
    meter = them.engine.pseudo_distribution_meters["select_pseudo_num_per_class_abc"]
    meter.sum, meter.count = estimate.total.float().clone(), estimate.steps
    meter.avg = meter.sum / max(1, meter.count)
    ours, n = learner.algorithm.bank, learner.algorithm.bank.fill
    bank.features[:n], bank.labels[:n], bank.fill = ours.features[:n], ours.labels[:n], n
    tcp = them.engine.tcp
    tcp.feature_pool[:n], tcp.label_pool[:n], tcp.sample_num = ours.features[:n].clone(), ours.labels[:n].float(), n
    learner.algorithm.bank = bank


def summarize(rows: list[dict]) -> dict:
    """The worst value of each compared quantity over all steps."""
    worst = {}
    for row in rows:
        for k, v in row.items():
            if k in ("step", "bank", "drawn", "mask_rate", "candidates", "admitted", "evicted"):
                continue
            for key, value in (v.items() if isinstance(v, dict) else [(k, v)]):
                key = f"loss {key}" if isinstance(v, dict) else key
                if isinstance(value, bool):
                    worst[key] = worst.get(key, True) and value
                else:
                    worst[key] = max(worst.get(key, 0), value)
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", required=True, type=Path, help="the BMB folder of a wujianP/ImbalancedSSL checkout")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--tau", type=float, default=0.95, help="confidence threshold of both codes")
    ap.add_argument("--free", action="store_true", help="never copy the authors' state into ours")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bank-start", type=int, default=0,
                    help="start our bank with this many entries, as many per class (unlabeled images' features, true classes)")
    ap.add_argument("--pretrain", type=int, default=0,
                    help="train ours alone this many steps first; the authors' code then starts from our state")
    ap.add_argument("--every", type=int, default=10, help="print a row every this many steps")
    ap.add_argument("--out", type=Path, default=Path("bench/results/lockstep.jsonl"))
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra overrides of our config")
    args = ap.parse_args()
    ref = import_reference(args.reference.resolve())
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    cfg = typed(compose([*OURS, f"seed={args.seed}", f"method.tau={args.tau}", *args.set]))
    split = build_split(cfg.dataset, seed=args.seed)
    learner = Learner(cfg, split.num_classes, split.labeled_per_class, torch.device("cpu"))
    own = learner.algorithm.bank  # drawing its own random choices, until the lockstep begins
    labeled = endless_batches(split.labeled, 64, args.seed, 0)
    unlabeled = endless_batches(split.unlabeled, 64, args.seed + 1, 0)
    if args.bank_start:  # as many of each class, so that every class is in the bank and the gate is open
        targets = np.asarray(split.unlabeled.targets)
        per_class = args.bank_start // split.num_classes
        picks = np.concatenate([np.flatnonzero(targets == c)[:per_class] for c in range(split.num_classes)])
        images = torch.stack([split.unlabeled[int(i)][0][0] for i in picks])  # the weak views
        fill_bank(learner, own, learner.input(images), torch.as_tensor(targets[picks]))
    for t in range(args.pretrain):  # ours alone, so that the lockstep starts where every part of a step acts
        x_l, y_l = next(labeled)
        (u_w, u_s1, u_s2), _ = next(unlabeled)
        learner.train_step(Batch(x_l, y_l, u_w, u_s1, u_s2))
        if (t + 1) % 50 == 0:
            print(f"pretraining ours: step {t + 1} of {args.pretrain}, bank {own.fill}", flush=True)
    bank = ImposedBank(own.capacity, own.features.shape[1], own.num_classes, beta_put=own.beta_put,
                       beta_get=own.beta_get, count_floor=own.count_floor, count_rule=own.count_rule)
    them = their_engine(ref, args.tau, list(split.labeled_per_class))
    share_state(learner, bank, them)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"lockstep, {'free' if args.free else 'resync'}, tau {args.tau}, seed {args.seed}, {args.steps} steps, "
          f"from our state after {args.pretrain} steps alone, the bank holding {bank.fill} entries")
    print(f"{'step':>5} {'max loss diff':>13} {'grad rel':>9} {'params':>9} {'bn rel':>9} {'ema':>9} "
          f"{'yhat!=':>6} {'bank':>5} {'drawn':>5} {'put p':>9} {'draw p':>9}")
    with open(args.out, "w") as log:
        for t in range(args.steps):
            x_l, y_l = next(labeled)
            (u_w, u_s1, u_s2), y_u = next(unlabeled)
            norm = learner.input
            batch = (norm(x_l), y_l, norm(u_w), norm(u_s1), norm(u_s2))
            row = step_both(t, batch, y_u, them, learner, bank)
            rows.append(row)
            log.write(json.dumps(row) + "\n")
            if not args.free:
                resync(them, learner)
            if (t + 1) % args.every == 0 or t == 0:
                print(f"{row['step']:>5} {max(row['loss'].values()):>13.2e} {row['grad']:>9.2e} "
                      f"{row['model_params']:>9.2e} {row['model_bn_stats_rel']:>9.2e} {row['ema_params']:>9.2e} "
                      f"{row['pseudo_label_disagree']:>6} {row['bank']:>5} {row['drawn']:>5} "
                      f"{row.get('put_probs', float('nan')):>9.2e} {row.get('draw_probs', float('nan')):>9.2e}",
                      flush=True)
    print("worst over all steps:")
    for key, value in summarize(rows).items():
        print(f"  {key:<28} {value if isinstance(value, bool) else f'{value:.3g}'}")
    exercised = {key: sum(r.get(key, 0) > 0 for r in rows) for key in ("candidates", "admitted", "evicted", "drawn")}
    print("steps that exercised the bank: " + ", ".join(f"{n} with {key}" for key, n in exercised.items())
          + f"; {sum(r.get('admitted', 0) for r in rows)} admissions, {sum(r.get('evicted', 0) for r in rows)} evictions")
    print(f"eviction draws that repeated a slot: {sum(r['eviction_repeats'] for r in rows)} "
          f"(theirs draws victims with replacement; ours without)")


if __name__ == "__main__":
    main()
