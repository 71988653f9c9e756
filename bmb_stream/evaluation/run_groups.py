"""Runs compared: finished run folders grouped by the configuration keys that differ between them (the
method, an ablation; not the seed), and each summary statistic's mean, standard deviation and count
over a group's runs. `bmb-stream summarize` and a sweep's closing table print it."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from bmb_stream.config_schema import STATISTICS
from bmb_stream.errors import DataNotFound
from bmb_stream.evaluation.summary import SCALARS

# keys that differ between runs of one experiment: never a group's name
NOT_THE_EXPERIMENT = ("seed", "run.dir", "resume", "progress", "device")
NOT_THE_EXPERIMENT_ENDINGS = ("num_workers", "log_every", "cache_dir", "batch_size")
NOT_THE_EXPERIMENT_GROUPS = ("storage.", "wandb.")
SHOWN = (("balanced_acc", "balanced"), ("raw_balanced_acc", "raw"), ("plain_balanced_acc", "no rule"),
         ("many_acc", "many"), ("medium_acc", "medium"), ("few_acc", "few"))


@dataclass
class Group:
    name: str  # the differing keys' values, e.g. "method=abc"; "all runs" where nothing differs
    runs: list[Path] = field(default_factory=list)
    summaries: list[dict] = field(default_factory=list)

    def stat(self, statistic: str, scalar: str) -> tuple[float, float, int] | None:
        """Mean, sample standard deviation (0 for one run) and count of `scalar` under `statistic`."""
        values = [s[statistic][scalar] for s in self.summaries if s.get(statistic, {}).get(scalar) is not None]
        if not values:
            return None
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        return mean, std, len(values)


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run folders (they hold config.yaml) among `paths`: each is one, or a folder of them (a sweep)."""
    runs: list[Path] = []
    for p in map(Path, paths):
        if (p / "config.yaml").is_file():
            runs.append(p)
        elif p.is_dir():
            runs += sorted(c.parent for c in p.glob("**/config.yaml"))
        else:
            raise DataNotFound(f"{p}: no such folder")
    if not runs:
        raise DataNotFound(f"{', '.join(map(str, paths))}: no run folder (a folder with config.yaml) found")
    return runs


def _flat(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        return {k: v for name, sub in value.items() for k, v in _flat(sub, f"{prefix}{name}.").items()}
    return {prefix[:-1]: json.dumps(value) if isinstance(value, list) else value}


def _is_experiment_key(key: str) -> bool:
    return (key not in NOT_THE_EXPERIMENT and not key.endswith(NOT_THE_EXPERIMENT_ENDINGS)
            and not key.startswith(NOT_THE_EXPERIMENT_GROUPS))


def _differing_keys(configs: list[dict]) -> list[str]:
    """The experiment keys whose values differ between the configs; where the option of a group differs
    (method.name), its other keys count only where they differ within one option (an ablation)."""
    keys = sorted({k for c in configs for k in c})
    differing = [k for k in keys if _is_experiment_key(k) and len({str(c.get(k)) for c in configs}) > 1]
    chosen = [k.rpartition(".")[0] for k in differing if k.endswith(".name") and k.count(".") == 1]

    def within_option(key: str) -> bool:
        group = key.partition(".")[0]
        options = {str(c.get(f"{group}.name")) for c in configs}
        return any(len({str(c.get(key)) for c in configs if str(c.get(f"{group}.name")) == o}) > 1 for o in options)
    return [k for k in differing if k.partition(".")[0] not in chosen or k.endswith(".name") or within_option(k)]


def _shown(key: str, value) -> str:
    return f"{key.removesuffix('.name') if key.count('.') == 1 and key.endswith('.name') else key}={value}"


def group_runs(runs: list[Path]) -> tuple[list[Group], list[Path]]:
    """The finished runs grouped by the experiment keys whose values differ between them, and the runs
    that have not finished (no summary.json), which are listed and not averaged."""
    configs = {r: _flat(OmegaConf.to_container(OmegaConf.load(r / "config.yaml"), resolve=True)) for r in runs}
    differing = _differing_keys(list(configs.values()))
    groups: dict[str, Group] = {}
    unfinished = []
    for run in runs:
        if not (run / "summary.json").is_file():
            unfinished.append(run)
            continue
        name = ", ".join(_shown(k, configs[run].get(k)) for k in differing) or "all runs"
        group = groups.setdefault(name, Group(name))
        group.runs.append(run)
        group.summaries.append(json.loads((run / "summary.json").read_text()))
    return list(groups.values()), unfinished


def histories(group: Group) -> list[list[dict]]:
    """Each run's evaluations (eval.jsonl) of the group."""
    return [[json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines() if line.strip()]
            for run in group.runs]


def _cell(value: tuple[float, float, int] | None) -> str:
    return f"{100 * value[0]:.1f} +- {100 * value[1]:.1f}" if value else "-"


def text_table(groups: list[Group], statistics: tuple[str, ...] = STATISTICS) -> str:
    """One row per group and statistic: each scalar's mean +- std in %, and the number of runs."""
    width = max([len("group")] + [len(g.name) for g in groups])
    lines = [f"{'group':<{width}}  {'statistic':<15}" + "".join(f"{t:>16}" for _, t in SHOWN) + f"{'runs':>6}"]
    for g in groups:
        for statistic in statistics:
            lines.append(f"{g.name:<{width}}  {statistic:<15}" + "".join(f"{_cell(g.stat(statistic, k)):>16}"
                                                                    for k, _ in SHOWN) + f"{len(g.summaries):>6}")
    return "\n".join(lines)


def markdown_table(groups: list[Group], statistics: tuple[str, ...] = STATISTICS) -> str:
    lines = ["| group | statistic | " + " | ".join(t for _, t in SHOWN) + " | runs |",
             "|---|---|" + "---|" * len(SHOWN) + "---|"]
    for g in groups:
        for statistic in statistics:
            lines.append(f"| {g.name} | {statistic} | " + " | ".join(_cell(g.stat(statistic, k)) for k, _ in SHOWN)
                         + f" | {len(g.summaries)} |")
    return "\n".join(lines) + "\n"


def csv_table(groups: list[Group]) -> str:
    """Long format: group, statistic, scalar, mean, std, n (fractions, not %)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["group", "statistic", "scalar", "mean", "std", "n"])
    for g in groups:
        for statistic in STATISTICS:
            for scalar in SCALARS:
                value = g.stat(statistic, scalar)
                if value is not None:
                    writer.writerow([g.name, statistic, scalar, f"{value[0]:.6f}", f"{value[1]:.6f}", value[2]])
    return out.getvalue()
