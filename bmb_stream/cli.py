"""The `bmb-stream` command: `bmb-stream [--mode offline] [KEY=VALUE ...]` (Hydra overrides)."""

from __future__ import annotations

import difflib
import logging
import os
import re
import shlex
import sys
import warnings
from pathlib import Path

from bmb_stream import redaction
from bmb_stream.config import check_simulated_stream, compose, typed
from bmb_stream.config_messages import no_such_key, parsed_override
from bmb_stream.config_schema import GROUPS, group_options
from bmb_stream.errors import BmbError, ConfigError, StorageUnavailable
from bmb_stream.redaction import is_credential, redact_message

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
    lines = ["usage: bmb-stream [--mode stream|offline] [KEY=VALUE ...]",
             "       bmb-stream simulate RECIPE [out=DIR] [overwrite=true] [KEY=VALUE ...]",
             "       bmb-stream shards [dataset=NAME] [dataset.KEY=VALUE ...] out=DIR [max_samples=N] [max_bytes=N]",
             "                         [shard_multiple=N] [shorter_side=N] [workers=N] [hide_labels=true]", "",
             "Long-tailed semi-supervised learning with a Balanced Memory Bank (BMB).",
             "KEY=VALUE pairs are Hydra overrides of the configuration (configs/config.yaml).", "",
             "modes:", "  stream    (default) unlabeled WebDataset shards, one experience at a time; persistent state",
             "  offline   a fixed long-tailed split, a fixed number of steps (the published protocols)", "",
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
              "             shards; shorter_side=N: larger images stored downscaled (256 for ImageNet)",
              "  out=s3://bucket/prefix uploads either one, shard by shard (AWS_* variables or storage.s3.*)"]
    lines += ["", "common keys: seed, device (auto/cpu/cuda), run.dir, resume, train.steps, train.eval_every,",
              "  train.batch_labeled, train.batch_unlabeled, train.ema_decay, train.ema_warmup, train.num_workers,",
              "  dataset.root, method.tau, method.bank.* (bmb), method.weights.* (bmb), method.abc_tau (abc),",
              "  method.debias_start (cdmad),",
              "  stream.urls (paths, file://, http(s)://, s3://), stream.on_shard_error (fail/skip), storage.s3.*,",
              "  storage.retry.*", "", EXAMPLES]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> list[str]:
    """Hydra overrides from the command line; `--mode X` becomes `mode=X`."""
    overrides, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--mode":
            if i + 1 >= len(argv):
                raise ConfigError("--mode needs a value: stream or offline")
            overrides.append(for_hydra(f"mode={argv[i + 1]}"))
            i += 2
            continue
        if arg.startswith("--mode="):
            overrides.append(for_hydra(f"mode={arg.split('=', 1)[1]}"))
        elif arg.startswith("-"):
            raise ConfigError(f"unknown option {arg}; see bmb-stream --help")
        elif "=" not in arg:
            close = difflib.get_close_matches(arg, SUBCOMMANDS, n=1) if i == 0 else []
            hint = f"; did you mean 'bmb-stream {close[0]}'?" if close else "; see bmb-stream --help"
            raise ConfigError(f"{arg!r} is not a KEY=VALUE override nor a subcommand ({', '.join(SUBCOMMANDS)}){hint}")
        else:
            overrides.append(for_hydra(arg))
        i += 1
    return overrides


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
        raise ConfigError(f"{override}: several values where one is expected; write a list in brackets, quoted for "
                          f"the shell: '{key}=[{value}]'")
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


def print_headline(summary: dict, run_dir: str) -> None:
    s = summary
    head = s["headline"]
    where = f"{s['experiences']} experiences, " if "experiences" in s else ""
    print(f"\n{s['mode']} {s['method']} on {s['dataset']} ({s['model']}), {where}{s['steps']} steps, {s['wall_s']:.0f} s, "
          f"{s['train_images_per_s']:.0f} train images/s")
    # with a test-time rule (BMB's and ABC's balanced head, CDMAD's refined logits), also the number without it
    plain = [("plain_balanced_acc", "no rule")] if s.get("test_rule") else []
    columns = [("balanced_acc", "balanced"), ("raw_balanced_acc", "raw"), *plain, ("many_acc", "many"),
               ("medium_acc", "medium"), ("few_acc", "few")]
    print(f"{'statistic':<16}" + "".join(f"{title:>10}" for _, title in columns))
    for stat in ("final", "best", "mean_last_20", "median_last_20"):
        cells = [s[stat].get(k) for k, _ in columns]
        print(f"{stat:<16}" + "".join(f"{100 * v:>10.1f}" if v is not None else f"{'-':>10}" for v in cells))
    counts = s.get("bank_class_counts")
    if counts is not None:
        purity = f", pseudo-labels {100 * s['bank_purity']:.0f}% pure" if s.get("bank_purity") is not None else ""
        if s.get("bank_labeled"):
            purity = f", {s['bank_labeled']} from labeled images" + purity
        print(f"memory bank: {sum(counts)} of {s.get('bank_capacity') or '?'} entries, "
              f"{sum(c > 0 for c in counts)} of {len(counts)} classes{purity}; entries per class: {counts}")
    print(f"headline ({head['statistic']}): balanced accuracy {100 * head['balanced_acc']:.2f}%")
    print(f"run directory: {run_dir}")


def _split_options(args: list[str], own: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """Separate this subcommand's own KEY=VALUE options (`own`: key -> default) from the rest."""
    options, rest = dict(own), []
    for arg in args:
        key, _, value = arg.partition("=")
        if not _:
            raise ConfigError(f"{arg!r} is not a KEY=VALUE argument; see bmb-stream --help")
        if key in own:
            options[key] = value
        else:
            rest.append(arg)
    return options, rest


def _flag(options: dict, key: str) -> bool:
    value = str(options[key]).lower()
    if value not in ("true", "false"):
        raise ConfigError(f"{key}={options[key]}: must be true or false")
    return value == "true"


def _positive(options: dict, key: str) -> int | None:
    value = options[key]
    if value in ("", "null", "none"):
        return None
    if not value.isdigit() or int(value) <= 0:
        raise ConfigError(f"{key}={value}: must be a positive integer")
    return int(value)


def _use_storage(cfg_or_overrides) -> None:
    """Object storage settings for out=s3://... from the config (or `storage.*` overrides of it)."""
    from bmb_stream.storage.object_store import S3Settings, use_storage

    cfg = compose([for_hydra(a) for a in cfg_or_overrides]) if isinstance(cfg_or_overrides, list) else cfg_or_overrides
    use_storage(S3Settings.from_config(cfg.storage))


def simulate_command(args: list[str]) -> int:
    from bmb_stream.simulation.recipes import load_recipe
    from bmb_stream.simulation.simulate import simulate

    if not args or "=" in args[0]:
        raise ConfigError("simulate needs a recipe: bmb-stream simulate RECIPE [out=DIR] [KEY=VALUE ...]")
    options, rest = _split_options(args[1:], {"out": "", "overwrite": "false", "progress": "true"})
    _use_storage([a for a in rest if a.startswith("storage.")])  # where out=s3://... goes
    # root= and list_dir= are short for the dataset's folders
    rest = [f"dataset_overrides.{a}" if a.split("=", 1)[0] in ("root", "list_dir") else a
            for a in rest if not a.startswith("storage.")]
    name, recipe = load_recipe(args[0], rest)
    out = options["out"] or f"data/streams/{name}"
    manifest = simulate(name, recipe, out, overwrite=_flag(options, "overwrite"), progress=_flag(options, "progress"))
    n = sum(s["samples"] for s in manifest["shards"])
    print(f"{len(manifest['shards'])} stream shards ({n} images, "
          f"{sum(s['labeled'] for s in manifest['shards'])} labeled), seed set {manifest['labeled_set']['samples']}, "
          f"test set {manifest['test_set']['samples']}" +
          (f"; stopped early: {manifest['stopped_early']}" if manifest["stopped_early"] else ""))
    print(f"stream: {out}  (manifest.json, plots/stream_prior.png)")
    return 0


def shards_command(args: list[str]) -> int:
    from bmb_stream.shards.export import export_split

    options, rest = _split_options(args, {"out": "", "overwrite": "false", "max_samples": "10000", "max_bytes": "",
                                          "workers": "0", "hide_labels": "false", "progress": "true",
                                          "shard_multiple": "1", "shorter_side": ""})
    if not options["out"]:
        raise ConfigError("shards needs out=DIR")
    cfg = typed(compose([for_hydra(a) for a in rest]))
    _use_storage(cfg)
    workers = options["workers"]
    if not workers.isdigit():
        raise ConfigError(f"workers={workers}: must be an integer >= 0 (0: one per core)")
    manifest = export_split(cfg.dataset, options["out"], seed=cfg.seed, max_samples=_positive(options, "max_samples"),
                            max_bytes=_positive(options, "max_bytes"), workers=int(workers),
                            overwrite=_flag(options, "overwrite"), keep_hidden_labels=not _flag(options, "hide_labels"),
                            progress=_flag(options, "progress"), shard_multiple=_positive(options, "shard_multiple"),
                            shorter_side=_positive(options, "shorter_side"))
    for key in ("labeled_set", "unlabeled_set", "test_set"):
        print(f"{key}: {manifest[key]['samples']} images in {len(manifest[key]['files'])} shards")
    print(f"shards: {options['out']}")
    return 0


SUBCOMMANDS = {"simulate": simulate_command, "shards": shards_command}


_LOGGED_ARGV: list[str] = []


def redact_log_records(argv: list[str]) -> None:
    """The package's log records (storage retry warnings) carry no secret, whichever handler prints them:
    a library's message may quote a URL whole (the S3 client, its endpoint with a password)."""
    _LOGGED_ARGV[:] = argv
    factory = logging.getLogRecordFactory()
    if getattr(factory, "redacts", False):
        return

    def make_record(*args, **kwargs) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        if record.name.startswith("bmb_stream"):
            try:
                record.msg, record.args = redact_message(record.getMessage(), _LOGGED_ARGV), ()
            except Exception:  # a message that does not format: logging reports it as it would have
                pass
        return record

    make_record.redacts = True
    logging.setLogRecordFactory(make_record)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(usage())
        return 0
    redact_log_records(argv)
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    try:
        return subcommand(argv) if argv and argv[0] in SUBCOMMANDS else run_command(argv)
    except KeyboardInterrupt:  # Ctrl-C before training started (during training it checkpoints and stops)
        print("\nbmb-stream: interrupted", file=sys.stderr)
        return 130


def subcommand(argv: list[str]) -> int:
    try:
        return SUBCOMMANDS[argv[0]](argv[1:])
    except BmbError as e:
        print(f"bmb-stream {argv[0]}: error: {redact_message(str(e), argv)}", file=sys.stderr)
        return e.exit_code


def run_command(argv: list[str]) -> int:
    try:
        overrides = parse_args(argv)
        cfg = typed(compose(overrides))
        check_run(cfg, overrides)
    except ConfigError as e:
        print(f"bmb-stream: error: {redact_message(str(e), argv)}", file=sys.stderr)
        return e.exit_code
    warnings.filterwarnings("ignore", message="no QP solver found")
    if cfg.mode == "stream":
        from bmb_stream.engine.stream_loop import run_stream as run
    else:
        from bmb_stream.engine.offline import run_offline as run
    from bmb_stream import distributed
    try:
        summary = run(cfg)
    except BmbError as e:
        if distributed.is_main() or not e.same_on_every_rank:  # a data fault may be one rank's alone
            where = f" (rank {distributed.rank()})" if distributed.world_size() > 1 else ""
            hint = f"\n{resume_hint(argv, cfg.run.dir)}" if isinstance(e, StorageUnavailable) else ""
            print(f"bmb-stream: error{where}: {redact_message(str(e), argv)}{hint}", file=sys.stderr)
        return e.exit_code
    finally:
        distributed.shutdown()
    if "rank" in summary:  # ranks other than 0 of a data-parallel run: rank 0 reports
        return 0
    if "stopped" in summary:
        print(f"{summary['stopped']}\n{resume_hint(argv, cfg.run.dir)}")
        return 0
    print_headline(summary, cfg.run.dir)
    return 0


def resume_hint(argv: list[str], run_dir: str) -> str:
    """How to continue this run: the command (resume=true once a checkpoint holds what was learned, else
    the same run started again), and what the command leaves out."""
    from bmb_stream.engine.run_dir import checkpoints_of

    started = bool(checkpoints_of(Path(run_dir)))  # last.pt, or an experience boundary's: what resume=true reads
    lines = [f"resume with: {resume_command(argv, run_dir, resume=started)}"]
    left_out = [a.partition("=")[0].lstrip("+~") for a in argv if is_credential(a)]
    if left_out:
        lines.append(f"credentials left out ({', '.join(left_out)}): give them again, or through the AWS_* variables")
    if any(redaction.redact_text(a) != a for a in [*argv, run_dir] if not is_credential(a)):
        lines.append(f"a URL holds a secret where the command shows {redaction.REDACTED}: put the real one back")
    return "\n".join(lines)


def resume_command(argv: list[str], run_dir: str, resume: bool = True) -> str:
    """The command that continues this run: the same arguments but credentials (URLs with their secrets
    blanked), this run.dir, resume=true (shell-quoted)."""
    kept = [redaction.redact_text(a) for a in argv
            if not a.startswith(("run.dir=", "resume=")) and not is_credential(a)]
    from bmb_stream.distributed import launched_ranks

    ranks, per_node = launched_ranks(), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    launcher = ["bmb-stream"]
    if ranks > 1:  # under torchrun: the same launch (its rendezvous options, on several nodes, as before)
        nodes = ["--nnodes", str(ranks // per_node)] if ranks > per_node else []
        launcher = ["torchrun", *nodes, "--nproc_per_node", str(per_node), "-m", "bmb_stream"]
    ending = [redaction.redact_text(f"run.dir={run_dir}"), *(["resume=true"] if resume else [])]
    return shlex.join([*launcher, *kept, *ending])


STREAM_IGNORES = ("train.steps", "train.eval_every")


def check_run(cfg, overrides: list[str]) -> None:
    """What a training run needs beyond valid values: a simulated stream of the configured dataset, and
    no key given that this mode does not read (refused rather than silently ignored)."""
    if cfg.mode == "stream" and cfg.stream.urls is None:
        check_simulated_stream(cfg)
    if cfg.mode == "stream":
        given = [o.split("=", 1)[0] for o in overrides if o.split("=", 1)[0] in STREAM_IGNORES]
        if given:
            raise ConfigError(f"{given[0]} applies to offline mode; a stream run lasts as long as its stream "
                              f"(stream.max_experiences, stream.passes) and evaluates every stream.eval_every "
                              f"experiences")
