"""Offline mode: a fixed long-tailed split, a fixed number of steps, evaluation every
`train.eval_every` steps (the published protocols)."""

from __future__ import annotations

import time

import torch
from tqdm import tqdm

from bmb_stream.data import build_split
from bmb_stream.engine.checkpoint import load_checkpoint, save_atomic
from bmb_stream.engine.learner import Learner
from bmb_stream.engine.run_dir import RunDir
from bmb_stream.engine.runtime import StopFlag, endless_batches, resolve_device
from bmb_stream.evaluation.evaluator import Evaluator
from bmb_stream.evaluation.plots import write_plots
from bmb_stream.evaluation.summary import summarize
from bmb_stream.method.steps import Batch


def run_offline(cfg) -> dict:
    device = resolve_device(cfg.device)
    run = RunDir.open(cfg)  # before any data is read: a bad run.dir or resume ends the run at once
    torch.manual_seed(int(cfg.seed))
    split = build_split(cfg.dataset, seed=int(cfg.seed), progress=bool(cfg.progress))
    run.write_config(cfg)
    learner = Learner(cfg, split.num_classes, split.labeled_per_class, device)
    history: list[dict] = []
    if cfg.resume and run.last_checkpoint.exists():
        state = load_checkpoint(run.last_checkpoint)  # on the CPU: RNG states must stay there
        learner.load_state_dict(state["learner"])
        history = list(state["history"])
        print(f"resumed from {run.last_checkpoint} at step {learner.step}")
    run.rewrite_evals(history)
    train = cfg.train
    evaluator = Evaluator(split.test, split.num_classes, split.labeled_per_class, run.path, device,
                          batch_size=int(cfg.eval.batch_size), many_threshold=int(cfg.dataset.many_threshold),
                          few_threshold=int(cfg.dataset.few_threshold))
    # the data order after a resume continues from a generator reseeded with the step reached
    data_seed = int(cfg.seed) * 1_000_003 + learner.step
    labeled = endless_batches(split.labeled, int(train.batch_labeled), data_seed, int(train.num_workers))
    unlabeled = (endless_batches(split.unlabeled, int(train.batch_unlabeled), data_seed + 1, int(train.num_workers))
                 if learner.needs_unlabeled else None)
    steps = int(train.steps)
    start_wall = time.time() - (history[-1]["wall_s"] if history else 0.0)
    train_time, train_images = 0.0, 0
    bar = tqdm(total=steps, initial=learner.step, desc=f"{cfg.method.name} offline", unit="step",
               dynamic_ncols=True, disable=not cfg.progress)
    with StopFlag() as stop:
        while learner.step < steps and stop.raised is None:
            t = time.time()
            try:
                x_l, y_l = next(labeled)
                unlabeled_views = next(unlabeled)[0] if unlabeled is not None else None  # true labels unused
            except RuntimeError as e:  # SIGTERM to the process group also ended the DataLoader workers
                if stop.stopping(e):
                    break
                raise
            batch = Batch(x_l.to(device, non_blocking=True), y_l.to(device, non_blocking=True))
            if unlabeled_views is not None:
                u_w, u_s1, u_s2 = unlabeled_views
                batch.u_weak, batch.u_strong1, batch.u_strong2 = (v.to(device, non_blocking=True) for v in (u_w, u_s1, u_s2))
            terms = learner.train_step(batch)
            train_time += time.time() - t
            train_images += len(x_l) + (len(batch.u_weak) if batch.u_weak is not None else 0)
            bar.update(1)
            if learner.step % int(train.log_every) == 0 or learner.step == steps:
                shown = {k: f"{terms[k]:.3g}" for k in ("loss", "loss_u", "loss_mb", "mask") if k in terms}
                bar.set_postfix(shown | {"img/s": f"{train_images / max(train_time, 1e-9):.0f}"})
            if learner.step % int(train.eval_every) == 0 or learner.step == steps:
                record = {"step": learner.step, "samples_seen": learner.samples_seen, **evaluator.evaluate(learner),
                          **method_state(learner), "wall_s": time.time() - start_wall}
                history.append(record)
                run.append_eval(record)
                bar.write(f"step {learner.step}: balanced acc {record['balanced_acc']:.4f} "
                          f"(online weights {record['raw_balanced_acc']:.4f})")
                save_atomic({"learner": learner.state_dict(), "history": history}, run.last_checkpoint)
    bar.close()
    evaluator.close()
    if stop.raised is not None:
        save_atomic({"learner": learner.state_dict(), "history": history}, run.last_checkpoint)
        return {"stopped": f"stopped by {stop.raised} at step {learner.step}; checkpoint {run.last_checkpoint}"}
    data = {"labeled_per_class": split.labeled_per_class, "unlabeled_per_class": split.unlabeled_per_class,
            "test_per_class": split.test_per_class}
    summary = build_summary(cfg, learner, history, time.time() - start_wall, train_images / max(train_time, 1e-9), data)
    run.write_summary(summary)
    write_plots(history, run.path / "plots", split.class_names)
    return summary


def method_state(learner: Learner) -> dict:
    """The bank's composition and the unlabeled class weights, for each evaluation record."""
    out = {}
    if learner.bank is not None:
        out["bank_class_counts"] = learner.bank.class_counts().tolist()
    if learner.estimate is not None:
        _, unlabeled_w = learner.class_weights()
        out["class_weights"] = None if unlabeled_w is None else unlabeled_w.tolist()
    return out


def build_summary(cfg, learner: Learner, history: list[dict], wall_s: float, images_per_s: float, data: dict) -> dict:
    stats = summarize(history)
    statistic = cfg.eval.headline
    return {
        "mode": cfg.mode, "method": cfg.method.name, "dataset": cfg.dataset.name, "model": cfg.model.name,
        "experiment": cfg.get("experiment_name"), "seed": int(cfg.seed), "steps": learner.step,
        "samples_seen": learner.samples_seen, "wall_s": wall_s, "train_images_per_s": images_per_s,
        "device": str(learner.device), **stats,
        "headline": {"statistic": statistic, "balanced_acc": stats[statistic]["balanced_acc"]},
        "bank_class_counts": history[-1].get("bank_class_counts"),
        "bank_capacity": learner.bank.capacity if learner.bank is not None else None,
        "bank_purity": history[-1].get("bank_purity"),  # stream mode, where the stream carries the true classes
        "bank_labeled": history[-1].get("bank_labeled"),
        "data": data,
    }
