"""What a run prints while it trains: a progress bar where someone watches a terminal or a notebook
(tqdm.auto: a widget in Jupyter), else, for log files (Slurm, nohup, a pipe) and with `progress=false`,
one plain line per log point and no carriage return."""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm

SHOWN = ("loss", "loss_u", "loss_mb", "mask", "lr", "img_per_s", "data_wait")  # of the step scalars, in this order


def interactive() -> bool:
    """A person watches: stdout is a terminal, or this runs in a Jupyter kernel."""
    if sys.stdout.isatty():
        return True
    shell = sys.modules.get("IPython")
    ipython = shell.get_ipython() if shell is not None and hasattr(shell, "get_ipython") else None
    return ipython is not None and "IPKernelApp" in getattr(ipython, "config", {})


def _number(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Bar(tqdm):
    def show(self, scalars: dict, where: str = "") -> None:
        """A log point's scalars beside the bar."""
        shown = {"exp": where} if where else {}
        self.set_postfix(shown | {k: _number(scalars[k]) for k in SHOWN if k in scalars}, refresh=False)


class PlainLines:
    """The bar's interface, printing one line per log point (`show`) and each message (`write`)."""

    def __init__(self, total: int | None, initial: int, desc: str, disable: bool = False):
        self.total, self.n, self.desc, self.disable = total, initial, desc, disable
        self.initial, self.started = initial, time.time()

    def update(self, n: int = 1) -> None:
        self.n += n

    def show(self, scalars: dict, where: str = "") -> None:
        if self.disable:
            return
        elapsed = time.time() - self.started
        done = f"step {self.n}" + (f"/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else "")
        if self.total and self.n > self.initial:
            done += f", eta {_duration(elapsed / (self.n - self.initial) * (self.total - self.n))}"
        values = ", ".join(f"{k} {_number(scalars[k])}" for k in SHOWN if k in scalars)
        print(f"{self.desc} {done}{f', experience {where}' if where else ''}: {values} "
              f"[{_duration(elapsed)}]", flush=True)

    def write(self, message: str) -> None:
        print(message, flush=True)

    def close(self) -> None:
        pass


def progress(total: int | None, initial: int, desc: str, enabled: bool, disable: bool = False) -> Bar | PlainLines:
    """`enabled`: the config's `progress`; `disable`: nothing at all (ranks other than 0)."""
    if enabled and interactive() and not disable:
        return Bar(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)
    return PlainLines(total, initial, desc, disable=disable)
