"""The `bmb-stream` command: a training run (`bmb-stream [--mode offline] [KEY=VALUE ...]`, Hydra overrides)
or a subcommand; every error of bmb_stream.errors ends here as one line and an exit code."""

from __future__ import annotations

import logging
import os
import shlex
import sys
import warnings

from bmb_stream import redaction
from bmb_stream.cli_args import parse_args, pop_option, usage
from bmb_stream.config import check_simulated_stream, compose, typed
from bmb_stream.config_schema import OFFLINE_ONLY
from bmb_stream.errors import BmbError, ConfigError, StorageUnavailable
from bmb_stream.redaction import is_credential, redact_message
from bmb_stream.subcommands import SUBCOMMANDS
from bmb_stream.sweep import MULTIRUN, plan_sweep


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
    continual = [("average accuracy", s.get("average_accuracy"), ""), ("BWT", s.get("bwt"), "+"),
                 ("FWT", s.get("fwt"), "+"), ("forgetting", s.get("forgetting"), ""),
                 ("accuracy under the last prior", s.get("prior_accuracy"), "")]
    if any(v is not None for _, v, _ in continual):  # stream mode (docs/run-folder.md, continual-learning metrics)
        prequential = [p for p in s.get("prequential_accuracy") or [] if p is not None]
        shown = [f"{name} {100 * v:{sign}.1f}" for name, v, sign in continual if v is not None]
        if prequential:
            shown.append(f"prequential accuracy {100 * sum(prequential) / len(prequential):.1f} (mean over experiences)")
        print("continual learning (%): " + ", ".join(shown))
    print(f"headline ({head['statistic']}): balanced accuracy {100 * head['balanced_acc']:.2f}%")
    print(f"run directory: {run_dir}")


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
    if "--version" in argv:
        import bmb_stream

        print(f"bmb-stream {bmb_stream.__version__}")
        return 0
    redact_log_records(argv)
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    try:
        if argv and argv[0] in SUBCOMMANDS:
            return subcommand(argv)
        return multirun_command(argv) if any(a in MULTIRUN for a in argv) else run_command(argv)
    except KeyboardInterrupt:  # Ctrl-C before training started (during training it checkpoints and stops)
        print("\nbmb-stream: interrupted", file=sys.stderr)
        return 130


def subcommand(argv: list[str]) -> int:
    try:
        return SUBCOMMANDS[argv[0]](argv[1:])
    except BmbError as e:
        print(f"bmb-stream {argv[0]}: error: {redact_message(str(e), argv)}", file=sys.stderr)
        return e.exit_code


def multirun_command(argv: list[str]) -> int:
    """A sweep: every job's configuration checked first (a bad one: one line, exit 2, nothing started),
    then the jobs one after another, then their table. Exit 1 where a job failed."""
    argv = [a for a in argv if a not in MULTIRUN]
    try:
        base, jobs = plan_sweep(argv)
        for _, job in jobs:
            overrides = parse_args(pop_option(job, "--cfg", ("job", "all"))[1])
            check_run(typed(compose(overrides)), overrides)
    except ConfigError as e:
        print(f"bmb-stream: error: {redact_message(str(e), argv)}", file=sys.stderr)
        return e.exit_code
    failed = []
    for i, (name, job) in enumerate(jobs):
        print(f"sweep job {i + 1}/{len(jobs)}: {name}  ({base / name})", flush=True)
        code = run_command(job)
        if code != 0:
            failed.append(name)
            print(f"sweep job {name} failed (exit {code}); the sweep goes on", file=sys.stderr)
    if len(failed) < len(jobs):
        print(f"\nsweep {base}: {len(jobs) - len(failed)} of {len(jobs)} jobs finished")
        subcommand(["summarize", str(base)])
    if failed:
        print(f"bmb-stream: {len(failed)} sweep job(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def run_command(argv: list[str]) -> int:
    try:
        show, argv = pop_option(argv, "--cfg", ("job", "all"))
        overrides = parse_args(argv)
        cfg = typed(compose(overrides))
        check_run(cfg, overrides)
    except ConfigError as e:
        print(f"bmb-stream: error: {redact_message(str(e), argv)}", file=sys.stderr)
        return e.exit_code
    if show:  # Hydra's --cfg: the composed, checked configuration, as config.yaml would hold it; no training
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(redaction.redacted(cfg)), end="")
        return 0
    warnings.filterwarnings("ignore", message="no QP solver found")
    if cfg.mode == "stream":
        from bmb_stream.engine.stream_loop import run_stream as run
    else:
        from bmb_stream.engine.offline import run_offline as run
    from bmb_stream import distributed
    try:
        summary = run(cfg, command=argv)
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
    """How to continue this run (resume=auto: from its checkpoint, or from the start where none was
    written), and what the command leaves out."""
    lines = [f"resume with: {resume_command(argv, run_dir)}"]
    left_out = [a.partition("=")[0].lstrip("+~") for a in argv if is_credential(a)]
    if left_out:
        lines.append(f"credentials left out ({', '.join(left_out)}): give them again, or through the AWS_* variables")
    if any(redaction.redact_text(a) != a for a in [*argv, run_dir] if not is_credential(a)):
        lines.append(f"a URL holds a secret where the command shows {redaction.REDACTED}: put the real one back")
    return "\n".join(lines)


def resume_command(argv: list[str], run_dir: str) -> str:
    """The command that continues this run: the same arguments but credentials (URLs with their secrets
    blanked), this run.dir, resume=auto (shell-quoted)."""
    kept = [redaction.redact_text(a) for a in argv
            if not a.startswith(("run.dir=", "resume=")) and not is_credential(a)]
    from bmb_stream.distributed import launched_ranks

    ranks, per_node = launched_ranks(), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    launcher = ["bmb-stream"]
    if ranks > 1:  # under torchrun: the same launch (its rendezvous options, on several nodes, as before)
        nodes = ["--nnodes", str(ranks // per_node)] if ranks > per_node else []
        launcher = ["torchrun", *nodes, "--nproc_per_node", str(per_node), "-m", "bmb_stream"]
    ending = [redaction.redact_text(f"run.dir={run_dir}"), "resume=auto"]
    return shlex.join([*launcher, *kept, *ending])




def check_run(cfg, overrides: list[str]) -> None:
    """What a training run needs beyond valid values: a simulated stream of the configured dataset, and
    no key given that this mode does not read (refused rather than silently ignored)."""
    if cfg.mode == "stream" and cfg.stream.urls is None:
        check_simulated_stream(cfg)
    if cfg.mode == "stream":
        given = [o.split("=", 1)[0] for o in overrides if o.split("=", 1)[0] in OFFLINE_ONLY]
        if given:
            raise ConfigError(f"{given[0]} applies to offline mode; a stream run lasts as long as its stream "
                              f"(stream.max_experiences, stream.passes) and evaluates every stream.eval_every "
                              f"experiences")
