"""The `bmb-stream` command: `bmb-stream [--mode offline] [KEY=VALUE ...]` (Hydra overrides)."""

from __future__ import annotations

import os
import sys
import warnings

from bmb_stream.config import GROUPS, ConfigError, compose, group_options

EXAMPLES = """examples:
  bmb-stream                                           the default job (a short run on Fashion-MNIST-LT)
  bmb-stream --mode offline experiment=fmnist_lt_r100 model=small_cnn train.steps=3000
  bmb-stream --mode offline experiment=cifar10_lt_r100 dataset.root=/data/cifar
  bmb-stream experiment=cifar10_lt_r100 method=fixmatch dataset.root=/data/cifar seed=1
  bmb-stream experiment=demo method.bank.enabled=false      an ablation: BMB without the bank
  bmb-stream experiment=demo run.dir=runs/a resume=true     continue a stopped run"""


def usage() -> str:
    lines = ["usage: bmb-stream [--mode offline] [KEY=VALUE ...]", "",
             "Long-tailed semi-supervised learning with a Balanced Memory Bank (BMB).",
             "KEY=VALUE pairs are Hydra overrides of the configuration (configs/config.yaml).", "",
             "modes:", "  offline   a fixed long-tailed split, a fixed number of steps (the published protocols)", "",
             "config groups (choose with GROUP=OPTION):"]
    try:
        lines += [f"  {g:<11}{', '.join(group_options(g))}" for g in GROUPS]
    except ConfigError as e:
        lines.append(f"  ({e})")
    lines += ["", "common keys: seed, device (auto/cpu/cuda), run.dir, resume, train.steps, train.eval_every,",
              "  train.batch_labeled, train.batch_unlabeled, train.ema_decay, train.ema_warmup, train.num_workers,",
              "  dataset.root, method.tau, method.bank.*, method.weights.*, method.estimate.*", "", EXAMPLES]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> list[str]:
    """Hydra overrides from the command line; `--mode X` becomes `mode=X`."""
    overrides, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--mode":
            if i + 1 >= len(argv):
                raise ConfigError("--mode needs a value: offline")
            overrides.append(f"mode={argv[i + 1]}")
            i += 2
            continue
        if arg.startswith("--mode="):
            overrides.append(f"mode={arg.split('=', 1)[1]}")
        elif arg.startswith("-"):
            raise ConfigError(f"unknown option {arg}; see bmb-stream --help")
        elif "=" not in arg:
            raise ConfigError(f"{arg!r} is not a KEY=VALUE override; see bmb-stream --help")
        else:
            overrides.append(arg)
        i += 1
    return overrides


def print_headline(summary: dict, run_dir: str) -> None:
    s = summary
    head = s["headline"]
    print(f"\n{s['method']} on {s['dataset']} ({s['model']}), {s['steps']} steps, {s['wall_s']:.0f} s, "
          f"{s['train_images_per_s']:.0f} train images/s")
    print(f"{'statistic':<16}{'balanced':>10}{'online':>10}{'many':>8}{'medium':>8}{'few':>8}")
    for stat in ("final", "best", "mean_last_20", "median_last_20"):
        r = s[stat]
        cells = [r.get(k) for k in ("balanced_acc", "raw_balanced_acc", "many_acc", "medium_acc", "few_acc")]
        fmt = [f"{100 * v:.1f}" if v is not None else "-" for v in cells]
        print(f"{stat:<16}{fmt[0]:>10}{fmt[1]:>10}{fmt[2]:>8}{fmt[3]:>8}{fmt[4]:>8}")
    print(f"headline ({head['statistic']}): balanced accuracy {100 * head['balanced_acc']:.2f}%")
    print(f"run directory: {run_dir}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(usage())
        return 0
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    try:
        cfg = compose(parse_args(argv))
    except ConfigError as e:
        print(f"bmb-stream: error: {e}", file=sys.stderr)
        return 2
    warnings.filterwarnings("ignore", message="no QP solver found")
    from bmb_stream.data.sources import DataNotFound
    from bmb_stream.engine.checkpoint import CheckpointError
    from bmb_stream.engine.offline import run_offline

    try:
        summary = run_offline(cfg)
    except (DataNotFound, CheckpointError) as e:
        print(f"bmb-stream: error: {e}", file=sys.stderr)
        return 2
    if summary:
        print_headline(summary, cfg.run.dir)
    return 0
