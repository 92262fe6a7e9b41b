"""What `study run` shows while it works: a live progress display of the trials, then the summary.

`StudyProgress` is a Ray Tune `Callback` (the public hooks: on_trial_start/result/complete/error,
on_step_end) that drives a `rich` progress display on a terminal: trials finished, running and
pending of the total, epochs trained of the planned total, the best validation score so far with
its trial, elapsed time and the estimated time left. Where stdout is not a terminal (CI, `ray job
logs`, a file) it prints one plain line per event instead. `SummaryProgress` shows the phases of
writing the summary ("writing summary: figures 5/13") the same two ways (`study.core.display`,
which `study report` uses without importing Ray).
"""

from __future__ import annotations

import math
import sys
import time
from typing import IO, Any

from ray.tune import Callback
from rich.console import Console, Group
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
)
from rich.text import Text

from study.core.display import format_value
from study.core.names import FINISHED, TrialStatus


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class _Display(Progress):
    """rich's Progress with the best-so-far line under its bars."""

    best_line: Text = Text("")

    def get_renderables(self):  # rich's documented hook for what a Progress draws
        yield Group(self.make_tasks_table(self.tasks), self.best_line)


class StudyProgress(Callback):
    """Live progress of a study: trials, epochs, best score so far, elapsed and time left.

    `total_trials` and `epochs` (per trial) give the plan; a trial stopped early by the scheduler
    takes its remaining epochs off the planned total, so the time left shrinks with it. Where
    the searcher adds trials beyond the plan (seeds on demand), the total grows with them. `done`
    and `best` are known on a resume (trials and epochs that finished before) so the counts
    cover the whole study.
    """

    def __init__(self, total_trials: int, epochs: int, metric: str, mode: str, *,
                 stream: IO[str] | None = None, live: bool | None = None,
                 earlier: tuple[int, int] = (0, 0)) -> None:
        self.planned_total = total_trials  # trials the plan knows of when the study starts
        # (trials, epochs) that ended in earlier sessions of a study this run adds trials to.
        self.earlier = earlier
        self.epochs = epochs
        self.metric = metric
        self.mode = mode
        self.console = Console(file=stream or sys.stdout, highlight=False)
        self.live = self.console.is_terminal if live is None else live
        self.epochs_done: dict[str, int] = {}  # trial_id -> epochs reported
        self.ended: dict[str, str] = {}  # trial_id -> TERMINATED / ERROR
        self.started: set[str] = set()
        self.running: set[str] = set()
        self.best: tuple[float, str, int] | None = None  # (score, trial_id, epoch)
        self.start = time.monotonic()
        self._display: _Display | None = None
        self._trials_task = self._epochs_task = None
        self._last_refresh = 0.0

    # --- counts -------------------------------------------------------------------------

    @property
    def total(self) -> int:
        """Trials of the study: the plan's, or every one started where more were added."""
        return max(self.planned_total, self.earlier[0] + len(self.started | set(self.ended)))

    def planned_epochs(self) -> int:
        """Epochs the study will train in all: ended trials count what they trained."""
        ended = sum(self.epochs_done.get(t, 0) for t in self.ended) + self.earlier[1]
        return ended + (self.total - len(self.ended) - self.earlier[0]) * self.epochs

    def trained_epochs(self) -> int:
        return sum(self.epochs_done.values()) + self.earlier[1]

    def counts(self) -> tuple[int, int, int]:
        """(finished, running, pending) trials of the total."""
        finished = len(self.ended) + self.earlier[0]
        running = len(self.running)
        return finished, running, max(0, self.total - finished - running)

    def eta(self) -> float | None:
        """Seconds left at the rate epochs have been trained so far (None before the first)."""
        done = self.trained_epochs() - self.earlier[1]  # this session's epochs, its own time
        if not done:
            return None
        rate = done / max(time.monotonic() - self.start, 1e-9)
        return max(0, self.planned_epochs() - self.trained_epochs()) / rate

    def best_text(self) -> str:
        if self.best is None:
            return f"best {self.metric}: none yet"
        score, trial_id, epoch = self.best
        return (f"best {self.metric} {format_value(self.metric, score)} "
                f"(trial {trial_id}, epoch {epoch})")

    def trials_text(self) -> str:
        finished, running, pending = self.counts()
        return f"{finished}/{self.total} done, {running} running, {pending} pending"

    # --- output -------------------------------------------------------------------------

    def _line(self, text: str) -> None:
        """One plain line for a log: elapsed time, the event, the counts."""
        if self.live:
            return
        self.console.print(f"[{_clock(time.monotonic() - self.start)}] {text}", soft_wrap=True,
                           markup=False)

    def _ensure_display(self) -> None:
        if not self.live or self._display is not None:
            return
        self._display = _Display(
            TextColumn("{task.description:<7}"), BarColumn(bar_width=30),
            MofNCompleteColumn(), TaskProgressColumn(), TextColumn("{task.fields[info]}"),
            console=self.console, transient=False, auto_refresh=True, refresh_per_second=4,
        )
        self._trials_task = self._display.add_task("trials", total=self.total, info="")
        # (completed is set on every refresh: earlier sessions' trials count as done)
        self._epochs_task = self._display.add_task("epochs", total=self.planned_epochs(),
                                                   info="")
        self._display.start()

    def refresh(self, force: bool = False) -> None:
        """Update the live display (at most a few times a second unless `force`)."""
        if not self.live:
            return
        now = time.monotonic()
        if not force and now - self._last_refresh < 0.2:
            return
        self._last_refresh = now
        self._ensure_display()
        assert self._display is not None
        eta = self.eta()
        timing = (f"{_clock(now - self.start)} elapsed, "
                  + (f"~{_clock(eta)} left" if eta is not None else "time left unknown yet"))
        self._display.update(self._trials_task, completed=self.counts()[0], total=self.total,
                             info=self.trials_text())
        self._display.update(self._epochs_task, completed=self.trained_epochs(),
                             total=max(self.planned_epochs(), 1), info=timing)
        self._display.best_line = Text(self.best_text())

    def close(self) -> None:
        """Draw the final state and stop the live display (the summary prints below it)."""
        if self._display is not None:
            self.refresh(force=True)
            self._display.stop()
            self._display = None

    # --- Ray Tune's hooks ---------------------------------------------------------------

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._started(trial)
        self.refresh()

    def _started(self, trial: Any) -> None:
        self.running.add(trial.trial_id)
        self.ended.pop(trial.trial_id, None)
        first = trial.trial_id not in self.started
        self.started.add(trial.trial_id)
        finished, running, pending = self.counts()
        self._line(f"trial {trial.trial_id} {'started' if first else 'continues'} "
                   f"({finished}/{self.total} done, {running} running, {pending} pending)")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        if trial.trial_id not in self.running:
            self._started(trial)
        epoch = int(result.get("epoch", result.get("training_iteration", 0)) or 0)
        self.epochs_done[trial.trial_id] = max(self.epochs_done.get(trial.trial_id, 0), epoch)
        score = result.get(self.metric)
        if (isinstance(score, (int, float)) and math.isfinite(score)
                and not result.get("diverged")):
            better = (self.best is None
                      or (score > self.best[0] if self.mode == "max" else score < self.best[0]))
            if better:
                self.best = (float(score), trial.trial_id, epoch)
                self._line(f"new best: {self.best_text()}")
        self.refresh()

    def _ended(self, trial: Any, status: str, how: str) -> None:
        self.running.discard(trial.trial_id)
        self.ended[trial.trial_id] = status
        done = self.epochs_done.get(trial.trial_id, 0)
        self._line(f"trial {trial.trial_id} {how} after {done}/{self.epochs} epochs; "
                   f"{self.trials_text()}; epochs {self.trained_epochs()}/"
                   f"{self.planned_epochs()}; {self.best_text()}")
        self.refresh(force=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        done = self.epochs_done.get(trial.trial_id, 0)
        self._ended(trial, TrialStatus.TERMINATED,
                    "finished" if done >= self.epochs else "stopped early")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial, TrialStatus.ERROR, "errored")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        # Ray's own statuses settle paused (PBT) and restarted trials the hooks above miss, and
        # on a resume they bring the trials that ended before it.
        self.running = {t.trial_id for t in trials if t.status == TrialStatus.RUNNING}
        for trial in trials:
            if trial.status in FINISHED and trial.trial_id not in self.ended:
                self.ended[trial.trial_id] = trial.status
                epoch = (trial.last_result or {}).get("epoch")
                if isinstance(epoch, (int, float)):
                    self.epochs_done[trial.trial_id] = int(epoch)
        self.refresh()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.close()
        finished, running, pending = self.counts()
        self._line(f"trials ended: {self.trials_text()}; epochs {self.trained_epochs()}/"
                   f"{self.planned_epochs()}; {self.best_text()}")

    def __getstate__(self) -> dict[str, Any]:
        # Ray saves callbacks with the experiment; the console and display stay behind.
        state = self.__dict__.copy()
        state["console"] = None
        state["_display"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Restored with the Tuner on a resume: counts start over (on_step_end brings the
        # trials that ended before), and so does the clock of this process.
        state.setdefault("planned_total", state.pop("total", 0))  # pickled before it grew
        self.__dict__.update(state)
        self.console = Console(file=sys.stdout, highlight=False)
        self.live = self.console.is_terminal
        self.start = time.monotonic()
        self.epochs_done, self.ended, self.started, self.running = {}, {}, set(), set()
        self.best = None


def earlier_sessions(exp_dir: Any) -> tuple[int, int]:
    """(trials, epochs) an experiment folder holds already: its trials' last reported epochs."""
    import json
    from pathlib import Path

    trials = epochs = 0
    for result in Path(exp_dir).glob("*/result.json"):
        lines = [line for line in result.read_text(errors="replace").splitlines() if line.strip()]
        trials += 1
        try:
            epochs += int(json.loads(lines[-1]).get("epoch", 0)) if lines else 0
        except (ValueError, AttributeError):
            continue
    return trials, epochs
