"""What the step scalars cost: the training step with a log point every 10 steps (`train.log_every=10`:
the loss terms read, monitoring counts, steps.jsonl, TensorBoard, a plain line) against the same run
with none (`train.log_every` past the run's end), side by side, interleaved repeats; and, timed inside
the logged runs, the share of a step spent in the step scalars' own code.

    python bench/step_logging.py [--steps 150] [--warmup 20] [--repeats 4] [--every 10]

Each run: offline BMB on Fashion-MNIST-LT (`experiment=demo` settings, small CNN, CPU), `--steps`
steps and one evaluation at the end. A step's time is read by a step hook (the wall time between the
hook calls of steps `--warmup` and `--steps`, divided by the steps between), so the data set's
preparation and the evaluation are left out. The two arms alternate (A B A B ...); printed: each arm's
median step time and its range, and the ratio of the medians, with the range of the ratios of
neighbouring pairs. The whole-step ratio needs a quiet machine (its spread is the machine's noise); the
timed share does not. The no-log arm still sums the loss terms at every step (StepScalars.add): the timed
share counts that too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
import warnings

from machine import print_header

warnings.filterwarnings("ignore", message="no QP solver found")

from bmb_stream.config import compose  # noqa: E402
from bmb_stream.engine.offline import OfflineRun  # noqa: E402


def timed(obj, name: str, spent: list) -> None:
    """Wrap obj.name so that the seconds spent in it add up in spent[0]."""
    inner = getattr(obj, name)

    def wrapper(*args, **kw):
        t = time.perf_counter()
        try:
            return inner(*args, **kw)
        finally:
            spent[0] += time.perf_counter() - t

    setattr(obj, name, wrapper)


def step_time(steps: int, warmup: int, log_every: int) -> tuple[float, float]:
    """Seconds per training step of one run, and of those the seconds in the step scalars' own code
    (StepScalars.add at every step, Run.log_step at each log point)."""
    times: dict[int, float] = {}
    spent = [0.0]
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = compose(["mode=offline", "experiment=demo", "method=bmb", f"train.steps={steps}",
                       f"train.eval_every={steps}", f"train.log_every={log_every}", "progress=false",
                       f"run.dir={run_dir}/run"])
        run = OfflineRun(cfg)
        run.step_hooks.append(lambda r: times.__setitem__(r.learner.step, time.perf_counter()))
        timed(run.step_scalars, "add", spent)
        timed(run, "log_step", spent)
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            run.execute()
    return (times[steps] - times[warmup]) / (steps - warmup), spent[0] / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--every", type=int, default=10)
    args = ap.parse_args()
    print_header()
    never = 10 * args.steps  # no log point in the run
    logged, bare, own = [], [], []
    for i in range(args.repeats):
        for arm, times, every in ((f"log_every={args.every}", logged, args.every), ("no log points", bare, never)):
            seconds, logging = step_time(args.steps, args.warmup, every)
            times.append(seconds)
            if every == args.every:
                own.append(logging / seconds)
            print(f"repeat {i + 1}, {arm}: {1000 * seconds:.1f} ms a step", flush=True)
    ratios = [a / b for a, b in zip(logged, bare)]
    print(f"\n{args.steps} steps ({args.warmup} warm-up), {args.repeats} interleaved repeats, medians (range):")
    print("| arm | ms a step |\n|---|---|")
    for arm, times in ((f"log_every={args.every}", logged), ("no log points", bare)):
        print(f"| {arm} | {1000 * statistics.median(times):.1f} ({1000 * min(times):.1f}-{1000 * max(times):.1f}) |")
    print(f"ratio of the medians {statistics.median(logged) / statistics.median(bare):.3f}; "
          f"ratios of neighbouring pairs {min(ratios):.3f}-{max(ratios):.3f} (goal: under 1.02)")
    print(f"time in the step scalars' own code (StepScalars.add every step, Run.log_step every {args.every}), "
          f"timed inside the logged runs: {100 * statistics.median(own):.2f}% of a step "
          f"(range {100 * min(own):.2f}-{100 * max(own):.2f}%)")


if __name__ == "__main__":
    main()
