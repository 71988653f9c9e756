"""Stream mode against offline mode at the same number of unlabeled images seen, on real
Fashion-MNIST-LT (gamma 100 seed set / labeled split, small CNN, BMB, each mode's defaults).

Stream: the fmnist_lt_stationary recipe (20 shards of 500 images, gamma 100), read `--passes` times
per experience. Offline: the gamma-100 split (the labeled images plus M1 = 3000 gamma-100 unlabeled ones) for as many
steps as the stream took. Both evaluate on the whole 10,000-image test set.

    python bench/stream_vs_offline.py [--passes 2] [--seed 0] [--out bench/results/stream_vs_offline]

Runs under --out are reused when finished and resumed when started (bench/common.py).
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="no QP solver found")

from bmb_stream.engine.offline import run_offline  # noqa: E402
from bmb_stream.engine.stream_loop import run_stream  # noqa: E402
from common import train_unless_finished  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/stream_vs_offline")
    args = ap.parse_args()
    out = Path(args.out)
    common = [f"seed={args.seed}", "progress=false", "experiment=demo"]
    stream_dir = out / "stream"
    train_unless_finished(stream_dir, ["mode=stream", *common, "stream.recipe=fmnist_lt_stationary",
                                       f"stream.passes={args.passes}", "stream.eval_every=5"], run_stream)
    stream = json.loads((stream_dir / "summary.json").read_text())
    steps = stream["steps"]
    offline_dir = out / "offline"
    train_unless_finished(offline_dir, ["mode=offline", *common, f"train.steps={steps}",
                                        f"train.eval_every={steps // 4}"], run_offline)
    offline = json.loads((offline_dir / "summary.json").read_text())
    print(f"BMB, small CNN, Fashion-MNIST-LT gamma 100, seed {args.seed}: final evaluation (EMA model), %")
    print(f"{'mode':<9}{'unlabeled seen':>16}{'steps':>7}{'balanced':>10}{'raw':>8}{'many':>7}{'medium':>8}{'few':>6}{'wall s':>8}")
    for name, s in (("stream", stream), ("offline", offline)):
        f = s["final"]
        cells = [100 * f[k] for k in ("balanced_acc", "raw_balanced_acc", "many_acc", "medium_acc", "few_acc")]
        print(f"{name:<9}{s['samples_seen']:>16}{s['steps']:>7}{cells[0]:>10.1f}{cells[1]:>8.1f}{cells[2]:>7.1f}"
              f"{cells[3]:>8.1f}{cells[4]:>6.1f}{s['wall_s']:>8.0f}")


if __name__ == "__main__":
    main()
