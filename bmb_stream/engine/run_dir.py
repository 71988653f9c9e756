"""The run directory (a public contract): config.yaml, eval.jsonl, summary.json, logs,
checkpoints/ and plots/. Opening one checks it before any work: a new run never overwrites an earlier
one, and a resumed run continues the same experiment."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from omegaconf import OmegaConf

from bmb_stream.engine.checkpoint import check_layout, load_checkpoint
from bmb_stream.errors import CheckpointError, ConfigError, FolderBusy, WriteFailed, first_line
from bmb_stream.redaction import redacted
from bmb_stream.storage.atomic import write_failure, write_text
from bmb_stream.storage.locks import FolderLock

# What may change when a run is resumed: how it runs, how long, what is logged; never what it learns from
# or how. Prefixes end with a dot.
RESUMABLE_CHANGES = ("resume", "progress", "run.dir", "run.allow_nonempty", "device", "train.num_workers", "train.log_every",
                     "train.steps", "train.eval_every", "stream.num_workers", "stream.cache_dir",
                     "stream.keep_checkpoints", "stream.on_shard_error", "stream.max_experiences",
                     "stream.eval_every", "eval.batch_size", "eval.headline", "eval.keep_best", "storage.", "wandb.")
RESULT_FILES = ("eval.jsonl", "summary.json", "checkpoints/last.pt")  # what a run has that is worth keeping
# what a run writes at the top of its folder (the loggers' log.txt, csv/ and tensorboard/ included)
RUN_FILES = ("config.yaml", "provenance.json", "eval.jsonl", "summary.json", "log.txt", "csv", "tensorboard",
             "steps.jsonl", "wandb", "checkpoints", "plots")


def results_of(path: Path) -> list[str]:
    """The result files a run folder holds (non-empty), kept experience checkpoints included."""
    found = [name for name in RESULT_FILES if (path / name).is_file() and (path / name).stat().st_size > 0]
    return found + (["checkpoints/experience-*.pt"] if list((path / "checkpoints").glob("experience-*.pt")) else [])


def _own_hidden(name: str) -> bool:
    """The run's lock, and the temporary files of its atomic writes."""
    return name == FolderLock.NAME or name.startswith(".") and name.endswith(".tmp")


def check_no_foreign_files(path: Path, allowed: bool) -> None:
    """A new run writes into a new or empty folder, or one of runs; other files there are refused unless
    `allowed`."""
    foreign = sorted(p.name for p in path.iterdir() if p.name not in RUN_FILES and not _own_hidden(p.name)) \
        if path.is_dir() else []
    if foreign and not allowed:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise ConfigError(f"run.dir={path} is not empty and holds no bmb-stream run ({shown}): choose a new "
                          f"or empty folder, or add run.allow_nonempty=true to write the run beside those files")


def checkpoints_of(path: Path) -> list[Path]:
    """The checkpoints a run can continue from, newest first: last.pt, then the kept experience boundaries."""
    folder = path / "checkpoints"
    return [p for p in [folder / "last.pt", *sorted(folder.glob("experience-*.pt"), reverse=True)] if p.is_file()]


def _clean(value):
    """JSON has no NaN: a class absent from the test set reads null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# keys added to the schema after runs began to be written: a stored configuration may lack them (a key
# added to the schema goes here, so that runs begun before it resume)
KEYS_ADDED_LATER = ("run.allow_nonempty", "train.channels_last", "train.compile", "train.amp", "method.bank.count_rule",
                    "method.weights.count_rule", "method.bank.labeled", "optim.wd_shrink", "dataset.ratio_rounding",
                    "train.global_batch", "optim.wd_shrink_buffers", "model.pretrained",
                    "dataset.augment_on")


def missing_keys(stored: dict, cfg) -> list[str]:
    """Keys of this configuration that a stored one lacks, and that no later version added: a stored
    configuration emptied or stripped cannot vouch for the experiment."""
    old, new = _flat(stored), _flat(OmegaConf.to_container(redacted(cfg), resolve=True))
    return [k for k in sorted(new) if k not in old and k not in KEYS_ADDED_LATER and not _resumable(k)]


def _resumable(key: str) -> bool:
    return any(key == allowed or (allowed.endswith(".") and key.startswith(allowed)) for allowed in RESUMABLE_CHANGES)


def _carried_unread(key: str, new: dict) -> bool:
    """A method key that this configuration's algorithm does not have: earlier versions kept BMB's
    settings under method=fixmatch and method=supervised, never read (a change of method.name is a change)."""
    return key.startswith("method.") and key not in new


def experiment_changes(stored: dict, cfg) -> list[str]:
    """Keys whose values differ between a stored config and this one and change the experiment."""
    old, new = _flat(stored), _flat(OmegaConf.to_container(redacted(cfg), resolve=True))
    # a key the stored config lacks was added since the run began (KEYS_ADDED_LATER); its default keeps the
    # old behaviour
    changed = [k for k in sorted(old.keys()) if old[k] != new.get(k, "<absent>") and not _carried_unread(k, new)]
    return [f"{k}: {old.get(k, '<absent>')} -> {new.get(k, '<absent>')}" for k in changed if not _resumable(k)]


class RunDir:
    """An open run directory. Rank 0 of a run holds its lock (`.lock`, an OS file lock the kernel releases
    when the process ends) from `open` to `release`: a second run into the same folder is refused at once."""

    writes = True  # False on the other ranks of a data-parallel run: rank 0 alone writes the run directory

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.resume_from: Path | None = None  # the checkpoint a resumed run continues from
        self.resume_state: dict | None = None  # rank 0's copy of it, loaded when the folder was checked
        self._lock: FolderLock | None = None
        self.asked = "resume=true"  # how messages name the request to continue (resume=auto where given)

    @classmethod
    def follower(cls, path: str | Path, resume_from: str | None = None) -> "RunDir":
        """The run directory as a rank other than 0 sees it: read (the checkpoint to resume from), never written."""
        run = cls.__new__(cls)
        run.path, run.writes, run._lock, run.resume_state = Path(path), False, None, None
        run.resume_from = Path(resume_from) if resume_from else None
        return run

    @classmethod
    def open(cls, cfg) -> "RunDir":
        """The run directory of this config, locked and checked before any data is read: a new run never
        writes into a folder that holds a run or files of its own; a resumed one continues the same
        experiment from its newest checkpoint that loads, or is refused without a file changed."""
        path = Path(cfg.run.dir)
        try:
            # resume=auto continues a run the folder holds (its records or a checkpoint), else starts one
            resume = cfg.resume is True or (cfg.resume == "auto" and bool(results_of(path) or checkpoints_of(path)))
            if cfg.resume is True and not (path / "config.yaml").is_file() and not checkpoints_of(path):
                raise ConfigError(f"resume=true: run.dir={path} holds no run ({'no config.yaml' if path.is_dir() else 'no such folder'}); "
                                  f"give the run.dir of the run to continue, or resume=auto to start it if there is none")
            if not resume:
                check_no_foreign_files(path, cfg.run.allow_nonempty)  # before anything is made in it
            run = cls(path)
            run.asked = "resume=auto" if cfg.resume == "auto" else run.asked
            run.lock()  # the first write into the folder: a refused run changes nothing in a folder in use
        except OSError as e:  # a path too long, a component that is a file, no permission
            raise ConfigError(f"run.dir={path}: cannot write there ({e.strerror or e}); choose another run.dir") from None
        try:
            run._check_resume(cfg) if resume else run._check_new()
            (path / "checkpoints").mkdir(exist_ok=True)
        except OSError as e:
            run.release()
            raise ConfigError(f"run.dir={path}: cannot write there ({e.strerror or e}); choose another run.dir") from None
        except BaseException:
            run.release()
            raise
        return run

    def lock(self) -> None:
        try:
            self._lock = FolderLock(self.path).acquire()
        except FolderBusy as e:
            pid = f"PID {e.pid}" if e.pid is not None else "its PID unknown"
            raise ConfigError(f"run.dir={self.path} is in use by another run ({pid}): wait for it to end, or choose "
                              f"another run.dir") from None

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _check_new(self) -> None:
        found = results_of(self.path)
        if found:  # a run that stopped before any result (only config.yaml) may be started again
            raise ConfigError(f"run.dir={self.path} already holds a run ({', '.join(found)}): add resume=true to "
                              f"continue it, or choose another run.dir")

    def _check_resume(self, cfg) -> None:
        failures = []
        for candidate in checkpoints_of(self.path):
            try:
                self.resume_state = check_layout(load_checkpoint(candidate), candidate)
                self.resume_from = candidate
                break
            except CheckpointError as e:
                failures.append(str(e))
        if self.resume_state is None and failures:  # never start afresh over a run's records
            others = "; no other checkpoint of the folder loads" if len(failures) > 1 else \
                "; no experience checkpoint is kept beside it (stream.keep_checkpoints)"
            raise CheckpointError(f"{self.asked}: {failures[0]}{others}: the run cannot be continued; start another run.dir")
        if self.resume_state is None and results_of(self.path):
            raise CheckpointError(f"{self.asked}: {self.path} holds results ({', '.join(results_of(self.path))}) but no "
                                  f"checkpoint to continue from: it cannot be continued; start another run.dir")
        stored = self._stored_config(cfg)
        changes = experiment_changes(stored, cfg)
        source = f"{self.resume_from}" if self.resume_state is not None and "config" in self.resume_state \
            else f"{self.path / 'config.yaml'}"
        if changes:
            shown = "; ".join(changes[:6]) + ("; ..." if len(changes) > 6 else "")
            raise ConfigError(f"{self.asked}: this configuration differs from the run in {self.path} where it changes the "
                              f"experiment ({shown}); resume with the values of {source}, or start another run.dir")
        if self.resume_state is None:
            print(f"{self.asked}: {self.path} has no checkpoint yet; the run starts from the beginning")
        elif failures:
            print(f"{self.asked}: {failures[0]}; resuming from {self.resume_from}, the newest checkpoint that loads",
                  file=sys.stderr)

    def _stored_config(self, cfg) -> dict:
        """The configuration of the run to continue: the one its checkpoint carries (config.yaml may have
        been edited, emptied or stripped), else config.yaml."""
        if self.resume_state is not None and "config" in self.resume_state:
            try:
                stored = OmegaConf.to_container(OmegaConf.create(self.resume_state["config"]), resolve=True)
            except Exception:  # noqa: BLE001 - only a foreign checkpoint holds a config that does not parse
                stored = None
            if not isinstance(stored, dict) or not stored:
                raise CheckpointError(f"checkpoint {self.resume_from} was written by another version of bmb-stream "
                                      f"(its configuration is not one): it cannot be resumed here; start another run.dir")
            return stored
        try:
            stored = OmegaConf.to_container(OmegaConf.load(self.path / "config.yaml"))
        except Exception as e:  # noqa: BLE001 - a hand-edited or truncated file
            reason = first_line(e)
            raise ConfigError(f"{self.asked}: {self.path / 'config.yaml'} cannot be read ({reason}); restore it, or "
                              f"start another run.dir") from None
        if self.resume_state is None:  # no checkpoint: the run starts from the beginning, whatever was stored
            return stored if isinstance(stored, dict) else {}
        missing = missing_keys(stored, cfg) if isinstance(stored, dict) else ["all"]
        if missing:  # a checkpoint of an earlier version carries no configuration: config.yaml must vouch
            shown = ", ".join(missing[:4]) + (", ..." if len(missing) > 4 else "")
            raise ConfigError(f"{self.asked}: {self.path / 'config.yaml'} lacks keys of the run's configuration "
                              f"({shown}) and the checkpoint carries none: the experiment cannot be checked; "
                              f"restore config.yaml, or start another run.dir")
        return stored

    @property
    def last_checkpoint(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    def write_config(self, cfg) -> None:
        self._write_text("config.yaml", OmegaConf.to_yaml(redacted(cfg), resolve=True))

    def add_provenance(self, record: dict) -> None:
        """One more start of the run in provenance.json (a list, oldest first)."""
        path = self.path / "provenance.json"
        try:
            records = json.loads(path.read_text()) if path.exists() else []
        except (OSError, ValueError):  # a file cut short or edited: the run keeps going with a new list
            records = []
        self._write_text("provenance.json", json.dumps([*(records if isinstance(records, list) else []), record],
                                                       indent=2) + "\n")

    def rewrite_evals(self, history: list[dict]) -> None:
        """eval.jsonl from the history (after a resume, evaluations past the checkpoint are dropped)."""
        self._write_text("eval.jsonl", "".join(json.dumps(_clean(r)) + "\n" for r in history))

    def append_eval(self, record: dict) -> None:
        if not self.writes:
            return
        try:
            with open(self.path / "eval.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(_clean(record)) + "\n")
        except OSError as e:
            raise CheckpointError(f"could not write {self.path / 'eval.jsonl'}: {write_failure(self.path / 'eval.jsonl', e)}") from None

    def write_summary(self, summary: dict) -> None:
        self._write_text("summary.json", json.dumps(_clean(summary), indent=2) + "\n")

    def _write_text(self, name: str, text: str) -> None:
        if not self.writes:
            return
        try:
            write_text(self.path / name, text)
        except WriteFailed as e:
            raise CheckpointError(str(e)) from None
