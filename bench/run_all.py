"""Run the benchmarks and write what each printed into bench/README.md, in its own block between
`<!-- bench:NAME -->` and `<!-- /bench:NAME -->`, with the command, the date and the machine.

    python bench/run_all.py                      # the quick ones (minutes)
    python bench/run_all.py --long               # also the training benchmarks (hours on a CPU)
    python bench/run_all.py --only bank_gate eval_cost

A benchmark that fails leaves its block as it was and the script exits 1 at the end, naming it.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

from machine import machine

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
# name -> (arguments, long: trains models for tens of minutes or more[, the script when not bench/NAME.py])
BENCHMARKS = {
    "bank_gate": ([], False),
    "bank_scale": ([], False),
    "checkpoint_cost": ([], False),
    "eval_cost": ([], False),
    "step_logging": ([], False),
    "augment_speed": ([], False),
    "s3_throughput": ([], False),
    "dist_scaling": ([], False),
    "gpu_step": ([], False),
    "gpu_step_cpu": (["--device", "cpu", "--models", "wrn28_2", "--steps", "4", "--cpu-compile",
                      "--pipeline-images", "512"], False, "gpu_step"),
    "gpu_step_pipeline": (["--pipeline-only", "--models", "resnet50", "--pipeline-images", "512"], False, "gpu_step"),
    "input_pipeline": ([], False),
    "step_overhead": (["--model", "wrn28_2", "--steps", "4", "--rounds", "3"], False),
    "memory_growth": ([], True),
    "default_job": ([], True),
    "compare_methods": (["--per-class"], True),
    "stream_vs_offline": ([], True),
    "fidelity_wrn": (["--methods", "bmb", "--seeds", "0", "1", "2"], True),
    "bank_worth": ([], True),
    "continual_methods": ([], True),
    # lockstep_reference.py is not here: it needs a checkout of the authors' repository (--reference)
}


def run(name: str, args: list[str], script: str | None = None) -> str | None:
    script = script or name
    command = [sys.executable, str(HERE / f"{script}.py"), *args]
    shown = " ".join(["python", f"bench/{script}.py", *args])
    print(f"== {shown}", flush=True)
    t = time.time()
    result = subprocess.run(command, capture_output=True, text=True, cwd=HERE.parent)
    if result.returncode != 0:
        print(result.stdout[-2000:], result.stderr[-2000:], sep="\n", file=sys.stderr)
        return None
    print(result.stdout, flush=True)
    return (f"`{shown}` ({time.strftime('%Y-%m-%d')}, {machine()}, {time.time() - t:.0f} s):\n\n"
            f"```\n{result.stdout.strip()}\n```")


def write_block(text: str, name: str, body: str) -> str:
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body}\n{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text)
    return text.rstrip() + f"\n\n### {name}\n\n{block}\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--long", action="store_true", help="also the benchmarks that train models")
    ap.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS))
    args = ap.parse_args()
    names = args.only or [n for n, (_, long, *_) in BENCHMARKS.items() if args.long or not long]
    failed = []
    for name in names:
        arguments, _, *script = BENCHMARKS[name]
        body = run(name, arguments, *script)
        if body is None:
            failed.append(name)
            continue
        README.write_text(write_block(README.read_text(), name, body))  # each result kept as soon as it is in
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)} (their blocks in {README} are unchanged)")


if __name__ == "__main__":
    main()
