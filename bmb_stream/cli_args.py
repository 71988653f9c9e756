"""The command line's grammar and help: `--mode`, `--cfg`, KEY=VALUE overrides made readable for Hydra,
and the usage text."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from bmb_stream.config_messages import no_such_key, parsed_override
from bmb_stream.config_schema import GROUPS, group_options, key_reference
from bmb_stream.errors import ConfigError

EXAMPLES = """examples:
  bmb-stream                                           the default job (a stream of Fashion-MNIST-LT with drift)
  bmb-stream --mode stream stream.urls='shards/stream-{000000..000099}.tar' stream.labeled_urls=... stream.test_urls=...
  bmb-stream --mode offline experiment=fmnist_lt_r100 model=small_cnn train.steps=3000
  bmb-stream --mode offline experiment=cifar10_lt_r100 dataset.root=/data/cifar
  bmb-stream experiment=cifar10_lt_r100 method=fixmatch dataset.root=/data/cifar seed=1   (a protocol: offline)
  bmb-stream experiment=demo method.bank.enabled=false      an ablation: BMB without the bank
  bmb-stream experiment=demo run.dir=runs/a resume=true     continue a stopped run
  bmb-stream simulate fmnist_lt_drift out=data/streams/drift seed=1
  bmb-stream shards dataset=cifar10_lt dataset.root=/data/cifar out=data/shards/cifar10_lt max_samples=5000"""


def usage() -> str:
    lines = ["usage: bmb-stream [--mode stream|offline] [--cfg job] [--config-dir DIR] [KEY=VALUE ...]",
             "       bmb-stream -m [KEY=A,B ...] [KEY=VALUE ...]      a sweep: one run per combination",
             "       bmb-stream summarize RUN_DIR... [out=DIR]",
             "       bmb-stream export RUN_DIR out=FILE.pt [weights=ema|raw] [head=rule|std|bal] [checkpoint=last|best|PATH]",
             "       bmb-stream eval FILE.pt [KEY=VALUE ...] [device=auto|cpu|cuda]",
             "       bmb-stream predict FILE.pt IMAGE_OR_FOLDER_OR_SHARDS... out=FILE.csv [batch_size=N] [device=...]",
             "       bmb-stream --version",
             "       bmb-stream simulate RECIPE [out=DIR] [overwrite=true] [KEY=VALUE ...]",
             "       bmb-stream shards [dataset=NAME] [dataset.KEY=VALUE ...] out=DIR [max_samples=N] [max_bytes=N]",
             "                         [shard_multiple=N] [shorter_side=N] [workers=N] [hide_labels=true]", "",
             "Long-tailed semi-supervised learning with a Balanced Memory Bank (BMB).",
             "KEY=VALUE pairs are Hydra overrides of the configuration (configs/config.yaml).", "",
             "modes:", "  stream    (default) unlabeled WebDataset shards, one experience at a time; persistent state",
             "  offline   a fixed long-tailed split, a fixed number of steps (the published protocols)", "",
             "options:", "  --cfg job  print the composed, checked configuration and exit without training (--cfg all:",
             "             the same; there is no hydra section)",
             "  -m         sweep: every combination of the comma-separated values, run one after another in",
             "             <run.dir>/<KEY=VALUE,...>/ (run.dir default runs/sweep-<time>), then their table",
             "  --config-dir DIR  your own config files (DIR/experiment/NAME.yaml, ...), composed beside",
             "             the shipped ones: experiment=NAME", "  --version  the package's version", "",
             "config groups (choose with GROUP=OPTION):"]
    try:
        lines += [f"  {g:<11}{', '.join(group_options(g))}" for g in GROUPS]
    except ConfigError as e:
        lines.append(f"  ({e})")
    try:
        from bmb_stream.simulation.recipes import recipe_dir

        recipes = ", ".join(sorted(p.stem for p in recipe_dir().glob("*.yaml")))
    except Exception:  # the recipes folder is optional for training
        recipes = "?"
    lines += ["", "subcommands:",
              "  simulate   write a simulated long-tailed stream (shards, seed set, test set, manifest) from a",
              f"             recipe in streams/: {recipes}",
              "             KEY=VALUE overrides recipe keys (seed=1, shards=40, prior.gamma=50); root=... and",
              "             list_dir=... set the dataset's folders",
              "  shards     write a configured dataset split (labeled, unlabeled, test) as WebDataset shards;",
              "             shard_multiple=N: each set's shard count a multiple of N (ranks x workers), equal",
              "             shards; shorter_side=N: larger images stored downscaled (default 256; 0 keeps originals)",
              "  out=s3://bucket/prefix uploads either one, shard by shard (AWS_* variables or storage.s3.*)",
              "  summarize  runs compared: mean, std and n of each statistic per group of runs (grouped by the",
              "             keys that differ, the seed aside); run folders or sweep folders; writes",
              "             runs_summary.md, runs_summary.csv and runs_curves.png",
              "  export     a run's classifier as a plain PyTorch model (.pt or .safetensors) and its JSON:",
              "             backbone + the head the algorithm evaluates, its test-time rule folded in",
              "  eval       an exported model's accuracy on the test set of the run it came from; KEY=VALUE",
              "             overrides of that run's config point it at another (dataset.root=..., stream.test_urls=...)",
              "  predict    an exported model's class for every image of files, folders or shards, as a CSV"]
    lines += ["", "keys: what each accepts; its default in the schema (the chosen mode, method and experiment",
              "files may set another: --cfg job shows what a command runs); the modes that read it; in",
              "brackets, the options (for datasets, the dataset schemas) that declare it where not all do:"]
    lines += [f"  {key:<32} {accepts}; {default}; {modes}" for key, accepts, default, modes in key_reference()]
    return "\n".join([*lines, "", EXAMPLES])


def pop_option(argv: list[str], name: str, accepted: tuple[str, ...]) -> tuple[str | None, list[str]]:
    """The value of `name VALUE` (or `name=VALUE`) in argv, and argv without it."""
    for i, arg in enumerate(argv):
        if arg == name or arg.startswith(f"{name}="):
            value = arg.partition("=")[2] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else "")
            if value not in accepted:
                raise ConfigError(f"{name} needs one of: {', '.join(accepted)}")
            return value, argv[:i] + argv[i + (1 if "=" in arg else 2):]
    return None, argv


def parse_args(argv: list[str]) -> list[str]:
    """Hydra overrides from the command line; `--mode X` becomes `mode=X`, `--config-dir DIR` puts DIR on
    Hydra's search path (its experiment, method, ... files compose beside the shipped ones)."""
    overrides, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--mode", "--config-dir"):
            if i + 1 >= len(argv):
                raise ConfigError(f"{arg} needs a value" + (": stream or offline" if arg == "--mode" else ": a folder"))
            overrides.append(_option_override(arg, argv[i + 1]))
            i += 2
            continue
        if arg.startswith(("--mode=", "--config-dir=")):
            overrides.append(_option_override(*arg.split("=", 1)))
        elif arg.startswith("-"):
            raise ConfigError(f"unknown option {arg}; see bmb-stream --help")
        elif "=" not in arg:
            from bmb_stream.subcommands import SUBCOMMANDS  # they compose configs with this module's for_hydra

            close = difflib.get_close_matches(arg, SUBCOMMANDS, n=1) if i == 0 else []
            hint = f"; did you mean 'bmb-stream {close[0]}'?" if close else "; see bmb-stream --help"
            raise ConfigError(f"{arg!r} is not a KEY=VALUE override nor a subcommand ({', '.join(SUBCOMMANDS)}){hint}")
        else:
            overrides.append(for_hydra(arg))
        i += 1
    return overrides


def _option_override(option: str, value: str) -> str:
    if option == "--mode":
        return for_hydra(f"mode={value}")
    folder = Path(value).expanduser().resolve()
    if not folder.is_dir():
        raise ConfigError(f"--config-dir {value}: no such folder (it holds experiment/, method/, ... files)")
    return f"hydra.searchpath=[{_quoted(f'file://{folder}')}]"


def for_hydra(override: str) -> str:
    """A KEY=VALUE argument as Hydra must read it: a value (or list item) with braces
    (`s/shard-{000..099}.tar`), or one its grammar cannot read (letters beyond ASCII, `?a=b&c`, `#`),
    double-quoted; a section, a quoted value or a list Hydra reads as given. A value Hydra would read as
    several (a sweep: `a,b`) is refused."""
    key, _, value = override.partition("=")
    if not key:
        raise ConfigError(f"{override!r} is not a KEY=VALUE override; see bmb-stream --help")
    parsed = parsed_override(override)
    if parsed is None and parsed_override(f"{key}=0") is None:  # no key of ours: letters beyond ASCII, a space
        raise ConfigError(no_such_key(key))
    if value[:1] == "[" and value[-1:] == "]" and parsed is None:
        items = re.split(r",(?![^{]*\})", value[1:-1])  # at commas outside brace patterns
        return f"{key}=[{','.join(_item_for_hydra(item.strip()) for item in items)}]"
    if value[:1] in ("[", "{", "'", '"'):
        return override
    if "{" in value or "}" in value:  # Hydra would read a brace pattern as a section or an interpolation
        parsed = None
    if parsed is not None and parsed.is_sweep_override():
        raise ConfigError(f"{override}: several values where one is expected; add -m to run one job per value (a "
                          f"sweep), or write a list in brackets, quoted for the shell: '{key}=[{value}]'")
    return override if parsed is not None else f"{key}={_quoted(value)}"


def _item_for_hydra(item: str) -> str:
    readable = item[:1] in ("'", '"') or ("{" not in item and "}" not in item
                                          and parsed_override(f"item={item}") is not None)
    return item if readable else _quoted(item)


def _quoted(value: str) -> str:
    """`value` as a double-quoted Hydra string: a quote escaped, the backslashes before it (or before the
    closing quote) doubled."""
    escaped = re.sub(r'(\\*)"', lambda m: m[1] * 2 + '\\"', value)
    return '"' + re.sub(r"(\\+)$", lambda m: m[1] * 2, escaped) + '"'
