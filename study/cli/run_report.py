"""A study run, then its summary written: the one path `study run` and `study.run(...)` share."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from study.engine.options import RunOptions
from study.engine.run import StudyRun, run_study


class SummaryInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) while the summary was written: the study's results are saved, and
    summary/ is whole (the old one or the new one)."""

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

    run = run_study(opts, command=command)
    if run.nothing_new:
        return run, None
    try:
        with SummaryProgress() if opts.verbose else nullcontext() as show:
            return run, write_report(run.path, progress=show)
    except KeyboardInterrupt:
        raise SummaryInterrupted(run) from None
