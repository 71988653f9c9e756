"""Data-parallel scaling on the CPU: 1 rank against 2 ranks (torchrun, gloo), the same per-rank batch,
one thread per rank, side by side in one run; and what the collectives cost per step.

    python bench/dist_scaling.py [--steps 200] [--model small_cnn] [--batch 32]

Each configuration is an offline BMB run on real Fashion-MNIST-LT (`experiment=fmnist_lt_r100`,
labeled in the bank so that the bank path gathers every step), evaluated once at its end (not timed).
Columns: training images per second over all ranks (from the run's own timer), the ratio to one rank
(2.0 is perfect scaling), and per step the time in bmb-stream's own collectives (bank candidates,
Nhat counts, batch-norm buffers, the stop agreement; with 2 ranks it includes waiting for the slower
rank) and in one all-reduce of a gradient-sized buffer (what
DistributedDataParallel sends per step; it overlaps the backward pass in a step).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(out: Path, overrides: list[str]) -> None:
    """One rank: the run, with bmb-stream's collectives timed."""
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    from bmb_stream.config import compose
    from bmb_stream import distributed
    from bmb_stream.engine.offline import OfflineRun

    import torch.distributed as dist

    spent = {"s": 0.0, "calls": 0}
    for name in ("all_gather", "all_reduce", "all_gather_object", "broadcast_object_list"):  # as bmb-stream calls them
        original = getattr(dist, name)

        def timed(*args, _original=original, **kw):
            t = time.perf_counter()
            try:
                return _original(*args, **kw)
            finally:
                spent["s"] += time.perf_counter() - t
                spent["calls"] += 1
        setattr(dist, name, timed)
    run = OfflineRun(compose(overrides))
    summary = run.execute()
    own = dict(spent)  # over the run: its steps, and its one evaluation and checkpoint
    gradient = torch.cat([p.detach().flatten() for p in run.learner.model.parameters()])
    t = time.perf_counter()
    for _ in range(20):
        distributed.sum_all(gradient)
    all_reduce_ms = (time.perf_counter() - t) / 20 * 1e3 if distributed.world_size() > 1 else 0.0
    if distributed.is_main():
        steps = summary["steps"]
        (out / "result.json").write_text(json.dumps({
            "images_per_s": summary["train_images_per_s"], "steps": steps,
            "own_collectives_ms": own["s"] / steps * 1e3, "own_collectives": own["calls"] / steps,
            "gradient_all_reduce_ms": all_reduce_ms,
            "gradient_mb": gradient.numel() * 4 / 2**20}))
    distributed.shutdown()


def configuration(ranks: int, args, scratch: Path) -> dict:
    out = scratch / f"ranks{ranks}"
    out.mkdir()
    overrides = ["mode=offline", "experiment=fmnist_lt_r100", f"model={args.model}", "method.bank.labeled=true",
                 f"train.steps={args.steps}", f"train.eval_every={args.steps}", f"train.batch_labeled={args.batch}",
                 f"train.batch_unlabeled={args.batch}", "train.global_batch=false",  # the same per-rank batch
                 "train.num_workers=0", "progress=false",
                 f"run.dir={out / 'run'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
               str(Path(__file__).resolve()), "--worker", str(out), *overrides]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{ranks} rank(s) failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return json.loads((out / "result.json").read_text())


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        return worker(Path(sys.argv[2]), sys.argv[3:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--model", default="small_cnn")
    ap.add_argument("--batch", type=int, default=32, help="labeled and unlabeled images per rank")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from machine import print_header

    print_header()
    print(f"offline BMB, {args.model}, {args.batch} labeled + {args.batch} unlabeled x 3 views per rank, "
          f"{args.steps} steps, 1 thread per rank, gloo")
    with tempfile.TemporaryDirectory() as scratch:
        results = {ranks: configuration(ranks, args, Path(scratch)) for ranks in (1, 2)}
    base = results[1]["images_per_s"]
    print(f"{'ranks':>5} {'images/s':>9} {'x 1 rank':>9} {'own collectives/step':>21} {'their ms/step':>14} "
          f"{'gradient all-reduce ms':>23}")
    for ranks, r in results.items():
        print(f"{ranks:>5} {r['images_per_s']:>9.0f} {r['images_per_s'] / base:>9.2f} {r['own_collectives']:>21.1f} "
              f"{r['own_collectives_ms']:>14.2f} {r['gradient_all_reduce_ms']:>23.2f}")
    print(f"gradient: {results[1]['gradient_mb']:.2f} MB per step")


if __name__ == "__main__":
    main()
