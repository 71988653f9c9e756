"""The subcommands beside training: `simulate` (a stream from a recipe), `shards` (a dataset split as
WebDataset shards), `summarize` (runs compared), `export` (a run's classifier as a plain PyTorch model),
`eval` and `predict` (an exported model scored on a test set, or labeling images)."""

from __future__ import annotations

from bmb_stream.cli_args import for_hydra
from bmb_stream.config import compose, typed
from bmb_stream.errors import ConfigError, DataNotFound


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


def _own_options(args: list[str], own: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """This subcommand's own KEY=VALUE options, and the other arguments in order (paths may hold "=")."""
    options, rest = dict(own), []
    for arg in args:
        key, is_option, value = arg.partition("=")
        if is_option and key in own:
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
                                          "shard_multiple": "1", "shorter_side": "256"})
    if not options["out"]:
        raise ConfigError("shards needs out=DIR")
    cfg = typed(compose([for_hydra(a) for a in rest]))
    _use_storage(cfg)
    workers = options["workers"]
    # larger images stored at the size the training views first resize to; 0 keeps the original bytes
    shorter_side = None if options["shorter_side"] == "0" else _positive(options, "shorter_side")
    if not workers.isdigit():
        raise ConfigError(f"workers={workers}: must be an integer >= 0 (0: one per core)")
    manifest = export_split(cfg.dataset, options["out"], seed=cfg.seed, max_samples=_positive(options, "max_samples"),
                            max_bytes=_positive(options, "max_bytes"), workers=int(workers),
                            overwrite=_flag(options, "overwrite"), keep_hidden_labels=not _flag(options, "hide_labels"),
                            progress=_flag(options, "progress"), shard_multiple=_positive(options, "shard_multiple"),
                            shorter_side=shorter_side)
    for key in ("labeled_set", "unlabeled_set", "test_set"):
        print(f"{key}: {manifest[key]['samples']} images in {len(manifest[key]['files'])} shards")
    print(f"images larger than {shorter_side} px on their shorter side stored at {shorter_side} px "
          f"(shorter_side=0 keeps the originals)" if shorter_side else "images stored as they were (shorter_side=0)")
    print(f"shards: {options['out']}")
    return 0


def summarize_command(args: list[str]) -> int:
    """Runs compared: mean, std and n of every summary statistic per group of runs (the keys that differ),
    printed and written as runs_summary.md and runs_summary.csv, and each group's balanced accuracy over
    training (mean and band over its runs) as runs_curves.png."""
    import os
    from pathlib import Path

    from bmb_stream.evaluation.plots import group_curves
    from bmb_stream.evaluation.run_groups import csv_table, find_runs, group_runs, histories, markdown_table, text_table
    from bmb_stream.storage.atomic import write_text

    # a job's folder may hold "=" (seed=0,method=bmb): only out= is an option
    options = _split_options([a for a in args if a.startswith("out=")], {"out": ""})[0]
    paths = [a for a in args if not a.startswith("out=")]
    if not paths:
        raise ConfigError("summarize takes run folders or sweep folders: bmb-stream summarize RUN_DIR... [out=DIR]")
    runs = find_runs(paths)
    groups, unfinished = group_runs(runs)
    for run in unfinished:
        print(f"not finished, not averaged: {run}")
    if not groups:
        raise DataNotFound(f"none of the {len(runs)} runs has finished (no summary.json)")
    print(text_table(groups))
    common = Path(os.path.commonpath([r.resolve() for r in runs]))
    out = Path(options["out"]) if options["out"] else (common.parent if len(runs) == 1 else common)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "runs_summary.md", markdown_table(groups))
    write_text(out / "runs_summary.csv", csv_table(groups))
    group_curves({g.name: histories(g) for g in groups}, out / "runs_curves.png")
    print(f"tables: {out / 'runs_summary.md'}, {out / 'runs_summary.csv'}; curves: {out / 'runs_curves.png'}")
    return 0


def export_command(args: list[str]) -> int:
    """A run's classifier as a plain PyTorch model and its JSON (models/exported.py)."""
    from bmb_stream.engine.export import export_run, save_exported

    options, rest = _own_options(args, {"out": "", "checkpoint": "last", "weights": "ema", "head": "rule"})
    if len(rest) != 1 or not options["out"]:
        raise ConfigError("export takes one run folder and out=FILE: bmb-stream export RUN_DIR out=model.pt "
                          "[weights=ema|raw] [head=rule|std|bal] [checkpoint=last|best|PATH]")
    model, meta = export_run(rest[0], options["checkpoint"], options["weights"], options["head"])
    weights, described = save_exported(model, meta, options["out"])
    print(f"{meta['algorithm']} {meta['model']['name']} ({meta['weights']} weights, head {meta['head']}, step "
          f"{meta['source']['step']}): {weights}, {described}")
    return 0


def _device(options: dict):
    from bmb_stream.distributed import resolve_device

    if options["device"] not in ("auto", "cpu", "cuda") and not options["device"].startswith("cuda:"):
        raise ConfigError(f"device={options['device']}: must be auto, cpu or cuda")
    return resolve_device(options["device"])


def eval_command(args: list[str]) -> int:
    """An exported model's accuracy on the test set of the run it came from (or another, by overrides)."""
    from bmb_stream.inference import evaluate_exported

    options, rest = _own_options(args[1:], {"device": "auto"})
    if not args or "=" in args[0]:
        raise ConfigError("eval takes an exported model: bmb-stream eval model.pt [KEY=VALUE ...] (overrides of the "
                          "run's config, e.g. dataset.root=... or stream.test_urls=...)")
    record = evaluate_exported(args[0], rest, str(_device(options)))
    columns = [("balanced_acc", "balanced"), ("top1_acc", "top-1"), ("many_acc", "many"), ("medium_acc", "medium"),
               ("few_acc", "few")]
    print(f"{'model':<16}" + "".join(f"{title:>10}" for _, title in columns))
    print(f"{'exported':<16}" + "".join(f"{100 * record[k]:>10.1f}" if record.get(k) is not None else f"{'-':>10}"
                                        for k, _ in columns))
    print("per class: " + ", ".join(f"{100 * a:.1f}" if a == a else "-" for a in record["per_class_acc"]))
    print(f"test loss {record['test_loss']:.4f}")
    return 0


def predict_command(args: list[str]) -> int:
    """An exported model's prediction for every image of some files, folders or shards, as a CSV."""
    from bmb_stream.inference import predict

    options, rest = _own_options(args, {"out": "", "device": "auto", "batch_size": "256"})
    if len(rest) < 2 or not options["out"]:
        raise ConfigError("predict takes an exported model, images and out=CSV: bmb-stream predict model.pt "
                          "IMAGE_OR_FOLDER_OR_SHARDS... out=predictions.csv")
    n = predict(rest[0], rest[1:], options["out"], batch_size=_positive(options, "batch_size") or 256,
                device=str(_device(options)))
    print(f"{n} predictions: {options['out']}")
    return 0


SUBCOMMANDS = {"simulate": simulate_command, "shards": shards_command, "summarize": summarize_command,
               "export": export_command, "eval": eval_command, "predict": predict_command}
