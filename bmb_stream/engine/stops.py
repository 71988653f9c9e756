"""How a run stops: SIGINT/SIGTERM finish the current step, then the loop checkpoints and exits
cleanly; a wait for data ends at once; DataLoader workers leave Ctrl-C to the main process."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

from bmb_stream import distributed


def ignore_interrupts(worker_id: int = 0) -> None:
    """DataLoader workers leave Ctrl-C (sent to the whole foreground process group) to the main process,
    which finishes its step and checkpoints. SIGTERM keeps its default: the DataLoader stops its workers
    with it; a worker killed by a SIGTERM sent to the group is expected by the loops (`stopping`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _ignore(signum, frame) -> None:
    pass


# what a DataLoader raises in the main process when its workers are killed (see StopFlag.stopping)
WORKER_DEATH = (RuntimeError, EOFError, ConnectionError)


class StopFlag:
    """SIGINT/SIGTERM finish the current step, then the loop checkpoints and exits cleanly."""

    def __init__(self):
        self.raised = None  # the signal this process received
        self.agreed = False  # the run stops: a signal reached this rank or, in a data-parallel run, any rank
        self._old = {}

    def should_stop(self) -> bool:
        """Whether to stop now. Every rank asks at the same point of each step, and they agree, so that
        all of them stop after the same step (one tiny all-reduce; none with one process)."""
        if not self.agreed:
            self.agreed = distributed.any_rank(self.raised is not None)
        return self.agreed

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.raised = signal.Signals(signum).name
        # PyTorch's SIGCHLD handler raises in the main process, wherever it is, when a DataLoader worker
        # dies; after a stop signal to the process group they die by design, and the checkpoint must
        # still be written. Their exit is then collected when the loaders shut down.
        if signal.SIGCHLD not in self._old:
            self._old[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, _ignore)  # not SIG_DFL: one may be pending

    def stopping(self, error: BaseException) -> bool:
        """Whether `error` is what a stop signal sent to the whole process group does to a DataLoader
        (its workers killed: "DataLoader worker ... exited", or a batch whose hand-over from a dying
        worker broke off): then the loop checkpoints and stops instead of failing."""
        if self.raised is None:
            return False
        return isinstance(error, (EOFError, ConnectionError)) or (
            isinstance(error, RuntimeError) and "DataLoader worker" in str(error))

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            if sig != signal.SIGCHLD:  # after a stop, loaders still shutting down must not raise either
                signal.signal(sig, handler)


class ReadInterrupted(BaseException):
    """A stop signal came while the loop waited for a batch. A BaseException, as KeyboardInterrupt is:
    no `except Exception` on the way (the storage's retries, the shard error policy) may swallow it."""


@contextmanager
def interruptible_wait():
    """SIGINT and SIGTERM, while the loop waits for data, run the handler in place (the run's StopFlag
    notes the stop) and then raise ReadInterrupted, which ends a read blocked on the storage. Outside
    the wait a stop takes effect after the step, as always. Only where a Python handler is in place
    (a run's), and only in the main thread, where signals are handled."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    handlers = {sig: handler for sig, handler in handlers.items() if callable(handler)}
    waiting = [True]  # False from the moment the wait ends: a signal then only notes the stop

    def interrupt(signum, frame):
        handlers[signum](signum, frame)
        if waiting[0]:
            raise ReadInterrupted

    for sig in handlers:
        signal.signal(sig, interrupt)
    try:
        yield
    finally:
        waiting[0] = False
        # a generator suspended in the wait may be finalized late, by the garbage collector, after its run
        # put its own handlers back: then the handler in place is not ours, and stays
        if threading.current_thread() is threading.main_thread():
            for sig, handler in handlers.items():
                if signal.getsignal(sig) is interrupt:
                    signal.signal(sig, handler)
