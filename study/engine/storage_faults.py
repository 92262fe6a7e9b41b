"""A study whose storage path refuses a write (a full disk, a folder made read-only) stops, as
on Ctrl-C, and says so in one line.

Ray logs a refused write of its experiment state or of a trial's result.json and carries on:
the study went on training, showed trials finished whose results never reached the disk, and
failed later elsewhere. `study.core.atomic_fs` keeps each refused write; `StorageFaultStopper`
(a Tune stopper, asked after every result) then interrupts the run the way Ctrl-C does, so Ray
pauses the trials and keeps them resumable, and `storage_fault` turns the first refused write
into the study's one line. A trial whose own write (its checkpoint) was refused fails in its
worker: `TrialStorageFaults` takes that failure from Ray's log as one more refused write.
"""

from __future__ import annotations

import errno
import logging
import signal
from pathlib import Path
from typing import Any

from ray.tune.stopper import Stopper

from study.core.atomic_fs import failed_writes, note_refused_write
from study.errors import StudyError


class StorageFaultStopper(Stopper):
    """Interrupts the run (SIGINT to this process, which Ray's run loop handles as Ctrl-C) once
    a write through the storage filesystem has been refused since the stopper was made (or,
    restored with a Tuner, since it was restored); it never stops a trial itself."""

    def __init__(self) -> None:
        self._since = len(failed_writes())
        self._raised = False

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._since, self._raised = len(failed_writes()), False  # this process's count

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        if not self._raised and len(failed_writes()) > self._since:
            self._raised = True
            signal.raise_signal(signal.SIGINT)
        return False


# The file system's refusals: no room, or no right to write (a folder made read-only).
REFUSED = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


class TrialStorageFaults(logging.Filter):
    """A filter for Ray's run loop's logs (`ray_compat.fault_logs`): a trial failed by a
    refused write (Ray logs it with the worker's traceback), or a refused save of the
    experiment state, is kept as a refused write, which stops the study with one line,
    instead of printed; anything else is printed as Ray prints it."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        cause = getattr(exc, "cause", exc)  # a RayTaskError carries the worker's exception
        if isinstance(cause, OSError) and cause.errno in REFUSED:
            note_refused_write(str(cause.filename or ""), cause)
            return False
        return True


def storage_fault(since: int, exp_dir: Path, resume: str | None) -> StudyError | None:
    """The study's one line for the first write to the storage path refused after the
    `since`-th, or None (see `refused_write`)."""
    refused = failed_writes()[since:]
    return refused_write(exp_dir, *refused[0], resume) if refused else None


def refused_write(exp_dir: Path, path: str, exc: OSError, resume: str | None) -> StudyError:
    """One line for a refused write of `path` (empty: a trial's checkpoint, its path lost on
    the way from the worker) in the experiment `exp_dir`: why, and what to do; `resume` is the
    command that continues the study, None where nothing was saved to continue (the same
    command starts it again)."""
    why = exc.strerror or type(exc).__name__
    what = f"{path}: could not be written" if path else \
        f"{exp_dir}: a trial's checkpoint could not be written"
    then = (f"continue with: {resume}" if resume is not None
            else "run the same command again (no trial had been saved)")
    return StudyError(f"{what} ({why}), so the study stopped; what was written before is "
                      f"whole. Make room (or make it writable again) and {then}")
