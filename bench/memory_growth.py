"""Resident memory over a long stream: the process's RSS after 50 and after 500 experiences, side by
side in one run, with a plot of every evaluation's figure.

    python bench/memory_growth.py [--experiences 500] [--out bench/results/memory]

A stream run in this process (`bmb_stream.cli.main`, stream mode, the small CNN of the demo's kind at
batch 16) over `--experiences` hand-written shards of 16 PNGs each (3 classes), one shard per
experience, evaluated after every experience on a 12-image test set, with the default checkpoint
policy. `rss_mb` of each line of eval.jsonl is the RSS after that evaluation; the figure compares
the mean of evaluations 41-50 with the mean of the last ten (the goal: within 5%), and fits a line
over the second half of the run (MB per 100 experiences). The plot goes to `--out`/rss.png.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import time
from pathlib import Path

import numpy as np
import webdataset as wds
from machine import print_header
from PIL import Image

from bmb_stream.cli import main as bmb_stream


def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_tar(path: Path, samples: list[tuple[str, dict]]) -> None:
    with wds.TarWriter(str(path)) as sink:
        for key, fields in samples:
            sink.write({"__key__": key, **fields})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiences", type=int, default=500)
    ap.add_argument("--out", default="bench/results/memory")
    args = ap.parse_args()
    print_header()
    out = Path(args.out)
    shards = out / "shards"
    shutil.rmtree(out, ignore_errors=True)
    shards.mkdir(parents=True)
    n = args.experiences
    for i in range(n):
        write_tar(shards / f"u-{i:04d}.tar", [(f"u{i}-{j}", {"png": png(60 * (j % 3) + i % 7), "gt.cls": str(j % 3).encode()})
                                             for j in range(16)])
    write_tar(shards / "lab.tar", [(f"l{j}", {"png": png(60 * (j % 3)), "cls": str(j % 3).encode()}) for j in range(12)])
    write_tar(shards / "test.tar", [(f"t{j}", {"png": png(60 * (j % 3) + 5), "cls": str(j % 3).encode()})
                                    for j in range(12)])
    t = time.time()
    with open(out / "run.log", "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        code = bmb_stream([f"stream.urls={shards}/u-{{0000..{n - 1:04d}}}.tar", f"stream.labeled_urls={shards}/lab.tar",
                           f"stream.test_urls={shards}/test.tar", "dataset.num_classes=3", f"run.dir={out / 'run'}",
                           "model=small_cnn", "train.batch_labeled=16", "train.batch_unlabeled=16", "method.tau=0.3",
                           "method.bank.capacity=64", "method.bank.draw=32", "stream.num_workers=0",
                           "stream.shards_per_experience=1", "stream.eval_every=1", "progress=false"])
    if code != 0:
        raise SystemExit(f"the stream run failed (exit {code}); its output: {out / 'run.log'}")
    rss = np.array([json.loads(line)["rss_mb"] for line in (out / "run" / "eval.jsonl").read_text().splitlines()])
    early, late = rss[40:50].mean(), rss[-10:].mean()
    half = np.arange(len(rss) // 2, len(rss))
    slope = np.polyfit(half + 1, rss[half], 1)[0] * 100
    print(f"{n} experiences in {time.time() - t:.0f} s; RSS after experiences 41-50: {early:.1f} MB, after the last ten: "
          f"{late:.1f} MB; ratio {late / early:.3f}; over the second half {slope:+.2f} MB per 100 experiences; "
          f"min {rss.min():.1f}, max {rss.max():.1f} MB")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(np.arange(1, len(rss) + 1), rss)
    ax.set_xlabel("experience")
    ax.set_ylabel("RSS after its evaluation (MB)")
    ax.set_title(f"bmb-stream stream mode, {n} experiences")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "rss.png", dpi=120)
    shutil.rmtree(shards)
    print(f"plot: {out / 'rss.png'}")


if __name__ == "__main__":
    main()
