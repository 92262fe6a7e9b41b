"""SIGTERM handled as Ctrl-C, so `kill`, `timeout`, Slurm and Kubernetes stop a study cleanly.

`sigterm_as_interrupt` hands SIGTERM to Ray Tune's SIGINT handler during `fit` (stop the
trials, save the state, return) and raises KeyboardInterrupt elsewhere; `Stop` says which
signal it was, for the exit status. Handlers are set in the main thread only and the previous
one is put back when the block ends.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Stop:
    """Which signal stopped the study: its `status` is the exit status a CLI returns (130 for
    SIGINT, 143 for SIGTERM: 128 + the signal's number)."""

    def __init__(self) -> None:
        self.signal = signal.SIGINT
        self.depth = 0  # nested sigterm_as_interrupt blocks; the outermost starts afresh

    @property
    def status(self) -> int:
        return 128 + int(self.signal)


_STOP = Stop()  # signals are per process, so is what they did


@contextmanager
def sigterm_as_interrupt(during_fit: bool = False) -> Iterator[Stop]:
    """While inside, SIGTERM does what Ctrl-C does at that moment: Ray Tune's handler during
    `fit` (stop the trials, save the state, return), KeyboardInterrupt elsewhere.

    Only a block opened with `during_fit=True` hands SIGTERM to the SIGINT handler: Ray Tune
    leaves its own installed after a `fit` returns, and outside `fit` that handler only logs.

    Without it, SIGTERM (what `kill`, `timeout`, Slurm and Kubernetes send) meets the handler
    ray.init installed, which ends the driver with no state saved, summary or resume hint.
    Does nothing outside the main thread, where Python cannot set signal handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        yield _STOP
        return

    def as_ctrl_c(signum: int, frame: Any) -> None:
        _STOP.signal = signal.SIGTERM
        handler = signal.getsignal(signal.SIGINT)
        if during_fit and callable(handler):
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    if _STOP.depth == 0:
        _STOP.signal = signal.SIGINT
    _STOP.depth += 1
    previous = signal.signal(signal.SIGTERM, as_ctrl_c)
    try:
        yield _STOP
    finally:
        signal.signal(signal.SIGTERM, previous)
        _STOP.depth -= 1
