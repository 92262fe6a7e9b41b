"""A study run, then its summary written: the one path `study run` and `study.run(...)` share."""

from __future__ import annotations

import os
import shlex
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from study.core.names import SUMMARY_DIR
from study.engine.experiment import experiment_dir
from study.engine.options import RunOptions
from study.engine.run import StudyRun, run_study
from study.engine.signals import sigterm_as_interrupt
from study.errors import StudyError


class SummaryInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, SIGHUP) while the summary was written: the study's results are
    saved, and summary/ is whole (the old one or the new one)."""

    def __init__(self, run: StudyRun) -> None:
        super().__init__(f"interrupted while writing the summary of {run.path}")
        self.run = run


def run_and_report(opts: RunOptions, command: str) -> tuple[StudyRun, dict[str, Any] | None]:
    """Run (or resume) the study of `opts`, then write its summary/; return the run and the
    summary (None when a finished study was resumed with nothing new to run).

    `command` is what study.json records as the command that started the study. A
    KeyboardInterrupt during the study propagates as it is; one during the summary is raised
    as `SummaryInterrupted`.
    """
    from analysis.report import write_report  # here: bad options fail without loading it
    from study.core.display import SummaryProgress

    exp_dir = experiment_dir(opts)
    if exp_dir is not None and opts.resume:
        check_summary_target(exp_dir, exp_dir / SUMMARY_DIR)  # before the study, not after
    run = run_study(opts, command=command)
    if run.nothing_new:
        return run, None
    try:
        # Ctrl-C, SIGTERM and SIGHUP stop the summary (Ray's handlers, left by the study,
        # would only log, or end the process at once and leave the staging folder).
        with sigterm_as_interrupt() as stop, \
                SummaryProgress() if opts.verbose else nullcontext() as show:

            def step(phase: str, done: int, total: int) -> None:
                stop.check()  # a stop whose interrupt was lost ends the report before its swap
                if show is not None:
                    show(phase, done, total)

            summary = write_report(run.path, progress=step)
            stop.check()
            return run, summary
    except KeyboardInterrupt:
        raise SummaryInterrupted(run) from None
    except OSError as exc:  # a full disk, a folder made read-only: the results are saved
        raise summary_fault(run.path, run.path / SUMMARY_DIR, exc) from None


def check_summary_target(exp_dir: Path, out: Path) -> None:
    """Refuse a summary folder the report cannot replace whole (it is built beside it and
    swapped in): a link (the swap would replace the link, not fill its target) or a mount
    point (it cannot be renamed: EBUSY). One line saying where to write instead."""
    if out.is_symlink():
        target = Path(os.path.realpath(out))
        raise StudyError(
            f"{out}: a link to {target}; a report replaces its folder whole, which would "
            f"replace the link: remove it, or write there with "
            f"{shlex.join(['study', 'report', str(exp_dir), '--out', str(target)])}"
        )
    if out.is_dir() and os.path.ismount(out):
        inside = out / SUMMARY_DIR
        raise StudyError(
            f"{out}: a mount point, which a report cannot replace whole (it is built beside "
            f"it and swapped in); write into a folder inside it: "
            f"{shlex.join(['study', 'report', str(exp_dir), '--out', str(inside)])}"
        )


def summary_fault(exp_dir: Path, out: Path, exc: OSError) -> StudyError:
    """One line for a summary the file system refused (ENOSPC, EROFS, EACCES, EBUSY, ...):
    the path, why, and the command that writes it once that is fixed (the previous summary
    is whole: the report is built beside it and swapped in)."""
    where = exc.filename if isinstance(exc.filename, str) else out
    again = ["study", "report", str(exp_dir)] + ([] if out == exp_dir / SUMMARY_DIR
                                                 else ["--out", str(out)])
    return StudyError(f"{where}: the summary could not be written ({exc.strerror or exc}); "
                      f"the results in {exp_dir} are kept: free space or fix the folder, then "
                      f"run {shlex.join(again)}")
