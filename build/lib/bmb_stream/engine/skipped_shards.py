"""The shards and samples a stream run left out under stream.on_shard_error=skip."""

from __future__ import annotations

from bmb_stream import distributed
from bmb_stream.redaction import redact_text


class SkippedShards:
    """The shards and samples left out under stream.on_shard_error=skip, each counted once per experience:
    eval.jsonl gives their number, summary.json lists them (url, pass, cause), and so does the checkpoint.

    A run resumed mid-experience reads every shard of its replayed batches again, skipped ones included:
    a skipped shard often gave samples before its fault (a bad sample in the middle, a cut-off end), and
    they were trained on, so passing over it would shift every batch after it. Reading it again meets
    the same fault at the same place (a skip is a permanent fault of the shard; storage unreachable past
    its budget is never skipped, it stops the run), so the replayed batches are those of the interrupted
    run, skip markers included. Those skips are in the checkpoint already: `note` counts none of them,
    nor the same shards met again after the replayed batches."""

    def __init__(self, entries: list[dict] | None = None):
        self.entries: list[dict] = list(entries or [])
        self.in_experience: set[str] = set()  # shards met skipped in the experience under way, recorded or replayed

    def start_experience(self) -> None:
        self.in_experience = set()

    def note(self, k: int, pass_: int | None, url: str, error: str, replayed: bool = False) -> bool:
        """A skip reported in pass `pass_` of experience k (None: found short after the experience); True
        where it is recorded now. A shard met again (another bad sample, a later pass) is not counted again,
        nor is one in a replayed batch: the checkpoint holds it already."""
        if url in self.in_experience:
            return False
        self.in_experience.add(url)
        if not replayed:  # stored as printed: a URL's password or signature blanked
            self.entries.append({"experience": k, "pass": pass_, "url": redact_text(url), "error": redact_text(error)})
        return not replayed

    def share(self) -> None:
        """Every rank's entries on every rank, merged in rank order (a rank notes the shards it reads)."""
        merged, seen = [], set()
        for entries in distributed.gather_objects(self.entries):
            for entry in entries:
                key = (entry["experience"], entry["pass"], entry["url"])
                if key not in seen:
                    seen.add(key)
                    merged.append(entry)
        self.entries = merged
