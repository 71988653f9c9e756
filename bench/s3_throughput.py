"""Reading shards from S3 against local files, and uploading shards against writing them locally,
side by side in one run, on a real S3 server on loopback (`rclone serve s3` with authentication).

Read: the same simulated Fashion-MNIST stream (real images) read from a local folder and from
s3://, in alternating rounds, two ways: raw samples (the I/O path alone) and the training
pipeline (decode + one weak and two strong views, batched in DataLoader workers).
Upload: `bmb-stream shards` of the Fashion-MNIST-LT gamma-100 split to a local folder and to s3://.
Prints images per second and the ratio S3 / local (the median of the rounds).

    python bench/s3_throughput.py [--shards 20] [--per-shard 500] [--workers 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="no QP solver found")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import webdataset as wds  # noqa: E402

from bmb_stream.config import compose, typed  # noqa: E402
from bmb_stream.datasets.transforms import MultiView, build_views  # noqa: E402
from bmb_stream.shards.export import export_split  # noqa: E402
from bmb_stream.shards.reading import make_unlabeled_batches, shard_samples  # noqa: E402
from bmb_stream.simulation.recipes import load_recipe  # noqa: E402
from bmb_stream.simulation.simulate import simulate  # noqa: E402
from bmb_stream.storage.object_store import S3Settings, read_bytes, use_storage  # noqa: E402
from tests.s3_server import S3Server  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def images_per_s(make_loader, workers: int) -> float:
    start, n = time.perf_counter(), 0
    for item in wds.WebLoader(make_loader(), batch_size=None, num_workers=workers):
        n += len(item["u_weak"]) if isinstance(item, dict) and "u_weak" in item else 1
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=20)
    ap.add_argument("--per-shard", type=int, default=500)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bmb-s3-bench-"))
    server = S3Server(work / "s3", log_requests=False, see_files_at_once=False)
    (work / "s3" / "shards").mkdir(parents=True)
    server.start()
    try:
        os.environ.update(server.env())
        use_storage(S3Settings())
        local = work / "local"
        name, recipe = load_recipe("fmnist_lt_stationary", [f"shards={args.shards}", f"samples_per_shard={args.per_shard}"])
        manifest = simulate(name, recipe, local, progress=False)
        simulate(name, recipe, "s3://shards/stream", progress=False)
        read_bytes("s3://shards/stream/manifest.json")  # as a stream run does first, in the main process
        files = [s["file"] for s in manifest["shards"]]  # a long tail runs out of images: fewer shards, maybe
        sources = {"local": [str(local / f) for f in files], "s3": [f"s3://shards/stream/{f}" for f in files]}
        views = build_views(32, [0.286] * 3, resize=True)
        multi = MultiView(views["weak"], views["strong"], views["strong"])
        pipelines = {"raw samples": lambda urls: (lambda: shard_samples(urls)),
                     "decode + 3 views": lambda urls: (lambda: make_unlabeled_batches(urls, multi, 64))}
        total_mb = sum((local / f).stat().st_size for f in files) / 2**20
        n_images = sum(s["samples"] for s in manifest["shards"])
        print(f"{len(files)} shards, {n_images} real Fashion-MNIST images ({total_mb:.0f} MB), "
              f"{args.workers} DataLoader workers, rclone serve s3 on 127.0.0.1, {args.rounds} alternating rounds")
        for label, make in pipelines.items():
            rates = {"local": [], "s3": []}
            server_cpu = 0.0
            for r in range(args.rounds):
                for where in (("local", "s3") if r % 2 == 0 else ("s3", "local")):
                    before = cpu_seconds(server.process.pid)
                    rates[where].append(images_per_s(make(sources[where]), args.workers))
                    if where == "s3":
                        server_cpu += cpu_seconds(server.process.pid) - before
            lo, s3 = statistics.median(rates["local"]), statistics.median(rates["s3"])
            print(f"read {label:<18} local {lo:8.0f} img/s   s3 {s3:8.0f} img/s   ratio s3/local {s3 / lo:.2f}   "
                  f"(the S3 server used {server_cpu / args.rounds:.1f} CPU s per read of the stream)")

        cfg = typed(compose(["experiment=fmnist_lt_r100", "progress=false"]))
        times = {"local": [], "s3": []}
        n_images = 0
        for r in range(args.rounds):
            for where in (("local", "s3") if r % 2 == 0 else ("s3", "local")):
                out = str(work / "split") if where == "local" else "s3://shards/split"
                start = time.perf_counter()
                manifest = export_split(cfg.dataset, out, max_samples=1000, overwrite=True, progress=False)
                times[where].append(time.perf_counter() - start)
                n_images = sum(manifest[k]["samples"] for k in ("labeled_set", "unlabeled_set", "test_set"))
        lo, s3 = n_images / statistics.median(times["local"]), n_images / statistics.median(times["s3"])
        print(f"bmb-stream shards ({n_images} images, 1000 per shard): local {lo:8.0f} img/s   "
              f"s3 upload {s3:8.0f} img/s   ratio s3/local {s3 / lo:.2f}")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
