"""Stream mode: unlabeled images arrive as WebDataset shards, one experience (a group of shards) at
a time; the learner's state persists across experiences, is evaluated with Avalanche after each
and checkpointed atomically at every boundary.

Exactness: everything random in experience k (augmentations, the labeled sampler, DataLoader worker
seeds) is seeded from (seed, k), and the learner's own generators are in its checkpoint, so a run
resumed from any checkpoint replays exactly what an uninterrupted run does. A checkpoint taken
mid-experience (on SIGINT/SIGTERM) records how many batches were consumed; the resumed run reads
and augments those batches again without training on them, which replays the random streams too.
"""

from __future__ import annotations

import math
import time
from collections import Counter

import numpy as np
import psutil
import torch
import webdataset as wds
from omegaconf import OmegaConf
from tqdm import tqdm

from bmb_stream.config import ConfigError, redacted
from bmb_stream.data.errors import ShardError, StorageUnavailable
from bmb_stream.data.stream import EncodedImages, LabeledPool, PreparedImages, make_unlabeled_batches
from bmb_stream.data.stream_source import StreamSource, prepare_stream
from bmb_stream.data.transforms import MultiView, build_views
from bmb_stream.engine.checkpoint import load_checkpoint, save_atomic
from bmb_stream.engine.learner import Learner
from bmb_stream.engine.offline import build_summary, method_state
from bmb_stream.engine.run_dir import RunDir
from bmb_stream.engine.runtime import StopFlag, endless_batches, ignore_interrupts, resolve_device
from bmb_stream.evaluation.evaluator import Evaluator
from bmb_stream.evaluation.monitor import StreamMonitor
from bmb_stream.evaluation.plots import write_plots
from bmb_stream.method.steps import Batch


def derived_seed(seed: int, experience: int, purpose: int) -> int:
    """A seed for one purpose in one experience, independent of everything that came before."""
    return int(np.random.SeedSequence([seed, experience, purpose]).generate_state(1)[0])


def experience_batches(shards: list[str], views, batch_size: int, workers: int, passes: int, seed: int, k: int,
                       on_error: str = "fail", skipped_before: dict[int, frozenset] | None = None,
                       num_classes: int | None = None):
    """The unlabeled batches of experience k: `passes` reads of its shards, each with its own seeds;
    each batch says its pass. `skipped_before[p]`: shards skipped in pass p before a checkpoint, skipped
    again without reading when the experience is replayed."""
    for p in range(passes):
        batches = make_unlabeled_batches(shards, views, batch_size, on_error, (skipped_before or {}).get(p, frozenset()),
                                         num_classes=num_classes)
        loader = wds.WebLoader(batches, batch_size=None, num_workers=min(workers, len(shards)),
                               worker_init_fn=ignore_interrupts, generator=torch.Generator().manual_seed(derived_seed(seed, k, 2 + p)))
        for batch in loader:
            batch["pass"] = p
            yield batch


def stream_steps(source: StreamSource, batch_size: int, workers: int, passes: int) -> int | None:
    """Training steps in the whole stream, from the manifest's sample counts (None where a shard's count
    is unknown): each DataLoader worker reads every `workers`-th shard of an experience and batches
    what it reads, ending on a partial batch."""
    total = 0
    for shards in source.experiences:
        sizes = [source.size_of(url) for url in shards]
        if None in sizes:
            return None
        n = max(1, min(workers, len(shards)))
        total += passes * sum(math.ceil(sum(sizes[w::n]) / batch_size) for w in range(n))
    return total


def run_stream(cfg) -> dict:
    device = resolve_device(cfg.device)
    run = RunDir.open(cfg)  # before any data is read: a bad run.dir or resume ends the run at once
    seed = int(cfg.seed)
    torch.manual_seed(seed)
    source = prepare_stream(cfg)
    num_classes = int(cfg.dataset.num_classes)
    run.write_config(cfg)
    seed_images, seed_labels = source.labeled
    labeled_per_class = np.bincount(seed_labels, minlength=num_classes).tolist()
    total_steps = stream_steps(source, int(cfg.train.batch_unlabeled), int(cfg.stream.num_workers),
                               int(cfg.stream.passes))
    if total_steps is None and cfg.optim.schedule != "constant":
        raise ConfigError(f"optim.schedule={cfg.optim.schedule} needs the stream's length in steps, and no manifest "
                          f"beside the shards gives every shard's sample count: use optim.schedule=constant")
    learner = Learner(cfg, num_classes, labeled_per_class, device, total_steps=total_steps or 1)
    pool = LabeledPool(int(cfg.stream.labeled_pool), num_classes, seed)
    monitor = StreamMonitor(num_classes, learner.bank.capacity if learner.bank is not None else 0)
    views = build_views(int(cfg.dataset.image_size), cfg.dataset.mean, cfg.dataset.std, resize=True,
                        randaugment=cfg.dataset.randaugment)
    test_set = EncodedImages(source.test[0], source.test[1], views["test"])
    if int(cfg.dataset.image_size) <= 64:  # small images: decode and normalise the test set once
        test_set = PreparedImages(test_set)
    evaluator = Evaluator(test_set, num_classes, labeled_per_class,
                          run.path, device, batch_size=int(cfg.eval.batch_size),
                          many_threshold=int(cfg.dataset.many_threshold), few_threshold=int(cfg.dataset.few_threshold),
                          segments=source.segments)
    history: list[dict] = []
    position = {"experience": 0, "batches": 0}
    skipped: list[dict] = []  # shards and samples left out under stream.on_shard_error=skip
    unlabeled_seen = np.zeros(num_classes, dtype=np.int64)  # true classes of the stream so far, where known
    if cfg.resume and run.last_checkpoint.exists():
        state = load_checkpoint(run.last_checkpoint)
        learner.load_state_dict(state["learner"])
        pool.load_state_dict(state["labeled_pool"])
        monitor.load_state_dict(state["monitor"])
        evaluator.load_state_dict(state["evaluator"])
        history, position = list(state["history"]), dict(state["position"])
        unlabeled_seen = state["unlabeled_seen"].numpy().copy()
        skipped = list(state.get("skipped", []))
        print(f"resumed from {run.last_checkpoint}: experience {position['experience']}, "
              f"batch {position['batches']}, step {learner.step}")
    run.rewrite_evals(history)

    def checkpoint(experience: int, batches: int) -> None:
        state = {"learner": learner.state_dict(), "labeled_pool": pool.state_dict(), "monitor": monitor.state_dict(),
                 "evaluator": evaluator.state_dict(), "history": history, "unlabeled_seen": torch.from_numpy(unlabeled_seen), "skipped": skipped,
                 "position": {"experience": experience, "batches": batches}, "config": OmegaConf.to_yaml(redacted(cfg))}
        save_atomic(state, run.last_checkpoint)
        keep = int(cfg.stream.keep_checkpoints)
        if keep > 0 and batches == 0:  # also keep the last few experience boundaries
            save_atomic(state, run.path / "checkpoints" / f"experience-{experience:06d}.pt")
            for old in sorted((run.path / "checkpoints").glob("experience-*.pt"))[:-keep]:
                old.unlink()

    workers = int(cfg.stream.num_workers)
    on_error = str(cfg.stream.on_shard_error)
    b_l, b_u = int(cfg.train.batch_labeled), int(cfg.train.batch_unlabeled)
    unlabeled_views = MultiView(views["weak"], views["strong"], views["strong"])
    start_wall = time.time() - (history[-1]["wall_s"] if history else 0.0)
    train_time, train_images = 0.0, 0
    n_exp = len(source.experiences)
    bar = tqdm(total=total_steps, initial=learner.step, desc=f"{cfg.method.name} stream", unit="step",
               dynamic_ncols=True, disable=not cfg.progress)
    with StopFlag() as stop:
        for k in range(position["experience"], n_exp):
            skip = position["batches"] if k == position["experience"] else 0
            torch.manual_seed(derived_seed(seed, k, 0))  # augmentations in the main process
            labeled_set = EncodedImages(seed_images + list(pool.images), np.concatenate([seed_labels, pool.labels]).astype(np.int64),
                                        views["weak"])
            labeled_batches = endless_batches(labeled_set, b_l, derived_seed(seed, k, 1), workers)
            shards = source.experiences[k]
            if skip == 0 and k % int(cfg.stream.eval_every) == 0:  # counts cover the experiences since the last evaluation
                monitor.reset_counts()
            batches = 0
            read = Counter()  # samples read per shard, checked against the manifest at the end
            joining = []  # labeled stream samples join the pool at the end of the experience, so that the
            # labeled set stays what it was at the experience's start (and a mid-experience resume sees the same)
            skipped_here: set[str] = set()
            skipped_before = {}  # a mid-experience resume skips again what the interrupted run skipped
            for entry in (s for s in skipped if s["experience"] == k and skip > 0):
                skipped_before[entry["pass"]] = skipped_before.get(entry["pass"], frozenset()) | {entry["url"]}
            try:
                unlabeled = experience_batches(shards, unlabeled_views, b_u, workers, int(cfg.stream.passes), seed, k,
                                               on_error, skipped_before, num_classes)
                for ub in unlabeled:
                    t = time.time()
                    batches += 1
                    for url, error in ub["skipped"]:
                        if url in skipped_here:  # met again in a later pass
                            continue
                        skipped_here.add(url)
                        if batches > skip:  # a replayed batch's skips were counted before the checkpoint
                            skipped.append({"experience": k, "pass": ub["pass"], "url": url, "error": error})
                            bar.write(f"skipped: {error}")
                    if ub["u_weak"] is None:  # nothing but skips
                        continue
                    x_l, y_l = next(labeled_batches)
                    if ub["pass"] == 0:  # a labeled stream sample joins the pool once, not once per pass
                        joining += ub["labeled_images"]
                    read.update(ub["urls"])
                    if batches <= skip:  # resuming mid-experience: replay the data, not the training
                        continue
                    truth = torch.where(ub["cls"] >= 0, ub["cls"], ub["gt"])  # -1 where the class is unknown
                    np.add.at(unlabeled_seen, truth[truth >= 0].numpy(), 1)
                    batch = Batch(x_l.to(device), y_l.to(device), ub["u_weak"].to(device),
                                  ub["u_strong1"].to(device), ub["u_strong2"].to(device))
                    terms = learner.train_step(batch)
                    monitor.observe(learner.last_extras, truth)
                    train_time += time.time() - t
                    train_images += len(x_l) + len(ub["u_weak"])
                    bar.update(1)
                    if learner.step % int(cfg.train.log_every) == 0:
                        bar.set_postfix({"exp": f"{k + 1}/{n_exp}", "loss": f"{terms['loss']:.3g}",
                                         "img/s": f"{train_images / max(train_time, 1e-9):.0f}"})
                    if stop.raised is not None:
                        break
            except StorageUnavailable as e:  # keep what was learned; the run resumes once storage is back
                # the batches trained on so far (at least those of the checkpoint it resumed from, if the
                # fault came while replaying them); the one that failed is read again
                checkpoint(k, max(batches, skip))
                bar.close()
                evaluator.close()
                raise StorageUnavailable(f"{e}\nstopped in experience {k} with a checkpoint; resume when the storage "
                                         f"is back") from None
            except RuntimeError as e:  # SIGTERM to the process group also ended the DataLoader workers
                if not stop.stopping(e):
                    raise
                batches = max(batches, skip)
            if stop.raised is not None:
                checkpoint(k, batches)
                break
            if batches == 0:
                raise ShardError(f"experience {k} ({', '.join(shards)}) yielded no samples")
            for url, error in source.short_shards(shards, read, int(cfg.stream.passes), skipped_here):
                if on_error != "skip":
                    raise ShardError(error)
                skipped.append({"experience": k, "pass": None, "url": url, "error": error})
                bar.write(f"skipped: {error}")
            for image, label in joining:
                pool.add(image, label)
            if (k + 1) % int(cfg.stream.eval_every) == 0 or k == n_exp - 1:
                trained = [i for i, start in enumerate(source.segment_start) if start <= k] if source.segments else None
                record = {"experience": k, "step": learner.step, "samples_seen": learner.samples_seen,
                          **evaluator.evaluate(learner, trained), **method_state(learner), **monitor.report(learner.bank),
                          "labeled_pool": len(pool.labels), "skipped_shards": len(skipped), "rss_mb": psutil.Process().memory_info().rss / 2**20,
                          "wall_s": time.time() - start_wall}
                history.append(record)
                run.append_eval(record)
                evaluator.log_scalars({"forgetting": record.get("forgetting"), "bank_purity": record.get("bank_purity")},
                                      learner.step)
                bar.write(f"experience {k}: balanced acc {record['balanced_acc']:.4f} "
                          f"(online {record['raw_balanced_acc']:.4f})"
                          + (f", bank purity {record['bank_purity']:.2f}" if record.get("bank_purity") is not None else ""))
            checkpoint(k + 1, 0)
    bar.close()
    evaluator.close()
    if stop.raised is not None:
        return {"stopped": f"stopped by {stop.raised} in experience {k}; checkpoint {run.last_checkpoint}"}
    data = {"labeled_per_class": labeled_per_class, "unlabeled_per_class": unlabeled_seen.tolist(),
            "test_per_class": np.bincount(source.test[1], minlength=num_classes).tolist(),
            "labeled_pool_per_class": pool.class_counts()}
    summary = build_summary(cfg, learner, history, time.time() - start_wall, train_images / max(train_time, 1e-9), data)
    summary["experiences"] = n_exp
    summary["evaluations"] = len(history)
    summary["skipped_shards"] = skipped
    run.write_summary(summary)
    write_plots(history, run.path / "plots", source.class_names, x_key="samples_seen")
    return summary
