"""SIGTERM and SIGHUP handled as Ctrl-C, so `kill`, `timeout`, Slurm, Kubernetes and a closed
terminal stop a study cleanly.

`sigterm_as_interrupt` hands SIGTERM and SIGHUP to Ray Tune's SIGINT handler during `fit`
(stop the trials, save the state, return) and raises KeyboardInterrupt elsewhere, SIGINT
included; `Stop` says which signal it was, for the exit status. Handlers are set in the main
thread only and the previous ones are put back when the block ends.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Stop:
    """Which signal stopped the study: its `status` is the exit status a CLI returns (130 for
    SIGINT, 143 for SIGTERM, 129 for SIGHUP: 128 + the signal's number)."""

    def __init__(self) -> None:
        self.signal = signal.SIGINT
        self.depth = 0  # nested sigterm_as_interrupt blocks; the outermost starts afresh
        # A stop asked outside `fit`. Its KeyboardInterrupt can be lost: raised while the
        # process forks (the report's workers), it lands in an at-fork hook, which Python
        # ignores; `check` raises it again where the work can stop.
        self.requested = False
        self.forking = False  # os.fork's hooks are running: an interrupt there is lost

    def check(self) -> None:
        """Raise KeyboardInterrupt if a stop was asked (and its interrupt perhaps lost)."""
        if self.requested:
            raise KeyboardInterrupt

    @property
    def status(self) -> int:
        return 128 + int(self.signal)


_STOP = Stop()  # signals are per process, so is what they did


# Signals that stop a study as Ctrl-C does (SIGHUP: the terminal it ran in was closed).
AS_CTRL_C = (signal.SIGTERM, *((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()))


@contextmanager
def sigterm_as_interrupt(during_fit: bool = False) -> Iterator[Stop]:
    """While inside, SIGTERM and SIGHUP do what Ctrl-C does at that moment: Ray Tune's
    handler during `fit` (stop the trials, save the state, return), KeyboardInterrupt
    elsewhere.

    Only a block opened with `during_fit=True` hands them to the SIGINT handler: Ray Tune
    leaves its own installed after a `fit` returns, and outside `fit` that handler only logs
    ("Stop signal received") and lets the process go on, so any other block also makes
    SIGINT itself raise KeyboardInterrupt (the summary written after a study stops at once).

    Without it, SIGTERM (what `kill`, `timeout`, Slurm and Kubernetes send) meets the handler
    ray.init installed, which ends the driver with no state saved, summary or resume hint,
    and SIGHUP ends it with no word and Ray's agents left running.
    Does nothing outside the main thread, where Python cannot set signal handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        yield _STOP
        return

    def as_ctrl_c(signum: int, frame: Any) -> None:
        _STOP.signal = signal.Signals(signum)
        handler = signal.getsignal(signal.SIGINT)
        if during_fit and callable(handler):
            handler(signal.SIGINT, frame)
        else:
            _STOP.requested = True
            if not _STOP.forking:
                raise KeyboardInterrupt

    def ctrl_c(signum: int, frame: Any) -> None:
        _STOP.signal = signal.SIGINT
        _STOP.requested = True
        if not _STOP.forking:
            raise KeyboardInterrupt

    if _STOP.depth == 0:
        _STOP.signal, _STOP.requested = signal.SIGINT, False
    _STOP.depth += 1
    def unraisable(info: Any) -> None:
        if not (_STOP.requested and issubclass(info.exc_type, KeyboardInterrupt)):
            hook(info)  # an interrupt lost in an at-fork hook is raised again by `check`

    previous = {sig: signal.signal(sig, as_ctrl_c) for sig in AS_CTRL_C}
    hook = sys.unraisablehook
    if not during_fit:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, ctrl_c)
        sys.unraisablehook = unraisable
        _note_forks()
    try:
        yield _STOP
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sys.unraisablehook = hook
        _STOP.depth -= 1


_FORKS_NOTED: list[bool] = []


def _note_forks() -> None:
    """Mark the time os.fork's hooks run (a report's workers start), once per process. An
    interrupt raised inside another library's fork hook is lost and leaves that library half
    through (filelock's), so a stop asked then waits for `Stop.check`. Registered as late as
    possible: Python runs the `before` hooks last-registered first, the `after` ones
    last-registered last, so these enclose every other library's."""
    if _FORKS_NOTED or not hasattr(os, "register_at_fork"):
        return
    _FORKS_NOTED.append(True)

    def forking(value: bool) -> Any:
        return lambda: setattr(_STOP, "forking", value)

    os.register_at_fork(before=forking(True), after_in_parent=forking(False),
                        after_in_child=forking(False))
