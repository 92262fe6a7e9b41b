"""How values and the summary's progress are shown to people: `format_value` and
`SummaryProgress` ("writing summary: figures 5/13"), with `rich` and without Ray, so that
`study report` does not import Ray Tune (half a second on 2 cores) to show them."""

from __future__ import annotations

import math
import sys
import time
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def format_value(name: str, value: Any) -> str:
    """A metric or parameter for people: accuracies 2 decimals, losses 4, others 4 significant."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if name.endswith("accuracy"):
        return f"{value:.2f}"
    if name.endswith(("loss", "auroc", "sensitivity", "specificity")):
        return f"{value:.4f}"
    return f"{value:.4g}"


class SummaryProgress:
    """Shows what writing the summary is doing: `progress("figures", 5, 13)`.

    Passed to the summary writer as its progress hook; `close()` it when the writer is done,
    or use it as a context manager (`with SummaryProgress() as show: ...`).
    """

    def __init__(self, stream: IO[str] | None = None, live: bool | None = None) -> None:
        self.console = Console(file=stream or sys.stdout, highlight=False)
        self.live = self.console.is_terminal if live is None else live
        self.start = time.monotonic()
        self._display: Progress | None = None
        self._task = None
        self._phase: str | None = None

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not self.live:
            if phase != self._phase or done == total:
                count = f" {done}/{total}" if total else ""
                self.console.print(f"writing summary: {phase}{count}", markup=False,
                                   soft_wrap=True)
            self._phase = phase
            return
        if self._display is None:
            self._display = Progress(TextColumn("writing summary: {task.description}"),
                                     BarColumn(bar_width=30), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TimeRemainingColumn(),
                                     console=self.console, transient=True,
                                     auto_refresh=False)  # no thread: the writer forks
            self._task = self._display.add_task(phase, total=total or None)
            self._display.start()
        self._display.update(self._task, description=phase, completed=done,
                             total=total or None, refresh=True)
        self._phase = phase

    def __enter__(self) -> SummaryProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._display is not None:
            self._display.stop()
            self._display = None
