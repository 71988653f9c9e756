"""`bmb-stream -m KEY=A,B ...`: a sweep, as Hydra's multirun names it. Every combination of the swept
values is one job, run one after another as a normal run in `<run.dir>/<job>/` (run.dir defaults to
runs/sweep-<time>), the folder named by the job's swept values. Every job's configuration is checked
before the first starts; a job that fails is reported and the sweep goes on; it ends with the jobs'
table (`bmb-stream summarize`)."""

from __future__ import annotations

import itertools
import re
import time
from pathlib import Path

from bmb_stream.config_messages import parsed_override
from bmb_stream.errors import ConfigError

MULTIRUN = ("-m", "--multirun")


def plan_sweep(argv: list[str]) -> tuple[Path, list[tuple[str, list[str]]]]:
    """The sweep's folder and its jobs: each job's name and its arguments (the fixed ones, its values of
    the swept keys, its run.dir)."""
    fixed, swept = [], []
    base = None
    for arg in argv:
        key, _, value = arg.partition("=")
        parsed = parsed_override(arg) if "=" in arg and not arg.startswith("-") else None
        if key == "run.dir":
            base = Path(value)
        elif parsed is not None and parsed.is_sweep_override():
            swept.append((key, list(parsed.sweep_string_iterator())))
        else:
            fixed.append(arg)
    if not swept:
        raise ConfigError("-m sweeps several values of a key, e.g. -m seed=0,1,2 method=bmb,fixmatch; none is given")
    base = base or Path("runs") / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    jobs = []
    for values in itertools.product(*(v for _, v in swept)):
        chosen = [f"{k}={v}" for (k, _), v in zip(swept, values)]
        name = re.sub(r"[^\w.=,+-]", "_", ",".join(chosen))  # a folder name: no slash, no space
        jobs.append((name, [*fixed, *chosen, f"run.dir={base / name}"]))
    return base, jobs
