"""Helpers for fault tests that run `study run` as a real process and kill parts of it.

A driver started here gets its own session (`start_new_session=True`), so it and the Ray
processes it starts (GCS, raylet, agents) share one process group. Ray's workers put
themselves in process groups of their own, so `kill_tree` also walks the parent links in
/proc to find them. Only processes descended from the driver are ever signalled: other
people's Ray instances on the same machine are left alone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

TINY_DATA = "synthetic:size=16,n=60,n_test=20"


def study_command(*args: str) -> list[str]:
    """`python -m study ...` with this interpreter."""
    return [sys.executable, "-m", "study", *args]


def write_space(path: Path, params: dict[str, Any], fixed: dict[str, Any],
                metric: str = "val_accuracy", mode: str = "max") -> Path:
    """Write a search space YAML (JSON is valid YAML) and return its path."""
    path.write_text(json.dumps({"metric": metric, "mode": mode, "params": params,
                                "fixed": fixed}, indent=1))
    return path


def wait_for(condition: Callable[[], T], timeout: float, interval: float = 0.5,
             what: str = "condition") -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, pgid, start time) of a live process, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None  # a zombie holds nothing and cannot be killed further
    return int(fields[1]), int(fields[2]), int(fields[19])


def _same(proc: tuple[int, int]) -> bool:
    """Whether (pid, start time) is still that process (pids are reused on a busy machine)."""
    stat = _stat(proc[0])
    return stat is not None and stat[2] == proc[1]


def process_tree(root: int) -> set[tuple[int, int]]:
    """(pid, start time) of the live processes in `root`'s process group and their descendants."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                stats[int(entry.name)] = stat
    tree = {pid for pid, (_, pgid, _) in stats.items() if pgid == root}
    if root in stats:
        tree.add(root)
    while True:
        children = {pid for pid, (ppid, _, _) in stats.items() if ppid in tree} - tree
        if not children:
            return {(pid, stats[pid][2]) for pid in tree}
        tree |= children


def signal_pids(pids: set[int], sig: signal.Signals) -> None:
    """Send `sig` to each of `pids` still running (one that has ended already is skipped)."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def kill_pids(procs: set[tuple[int, int]], sig: int = signal.SIGKILL) -> None:
    """Signal each (pid, start time) that is still the process it was."""
    for pid, start in procs:
        if _same((pid, start)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


@dataclass
class Study:
    """A running `study run` process, its output files and the processes seen under it."""

    proc: subprocess.Popen
    out: Path
    err: Path
    seen: set[tuple[int, int]]  # (pid, start time) of every process seen under the driver

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tree(self) -> set[tuple[int, int]]:
        """The driver's process tree now (remembered, so `kill_all` reaches orphans too)."""
        current = process_tree(self.pid)
        self.seen |= current
        return current

    def kill_all(self) -> None:
        """SIGKILL the driver, its process group and every process seen under it."""
        self.tree()
        kill_pids(self.seen)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        kill_pids(self.seen | process_tree(self.pid))

    def alive(self) -> set[int]:
        """Pids of processes seen under the driver that still run."""
        return {pid for pid, start in self.seen if _same((pid, start))}

    def wait(self, timeout: float) -> int:
        """Wait for the driver to exit; return its status (kill everything on timeout)."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            raise AssertionError(
                f"study run did not finish within {timeout:.0f} s\n{self.output()}"
            ) from None

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def output(self) -> str:
        return f"--- stdout ---\n{self.stdout()[-4000:]}\n--- stderr ---\n{self.stderr()[-4000:]}"


@contextmanager
def study_process(args: Sequence[str], logs: Path, tag: str = "run",
                  env: dict[str, str] | None = None) -> Iterator[Study]:
    """Start `study <args>` in a new session; on exit, kill whatever of it still runs."""
    logs.mkdir(parents=True, exist_ok=True)
    out, err = logs / f"{tag}.out", logs / f"{tag}.err"
    with open(out, "w") as fout, open(err, "w") as ferr:
        proc = subprocess.Popen(study_command(*args), stdout=fout, stderr=ferr,
                                start_new_session=True, env={**os.environ, **(env or {})})
    study = Study(proc, out, err, set())
    try:
        yield study
    finally:
        if proc.poll() is None:
            study.kill_all()
        else:
            # Ray's processes may outlive a driver that died; never leave them behind.
            kill_pids(study.seen | process_tree(proc.pid))


def run_study_process(args: Sequence[str], logs: Path, timeout: float, tag: str = "run",
                      env: dict[str, str] | None = None) -> tuple[int, Study]:
    """Run `study <args>` to the end; return (exit status, Study)."""
    start = time.monotonic()
    with study_process(args, logs, tag, env) as study:
        while study.proc.poll() is None:
            study.tree()
            if time.monotonic() - start > timeout:
                study.wait(0)  # kills the tree and fails
            time.sleep(0.5)
        return study.proc.returncode, study


# --- reading an experiment folder as it is written ---------------------------------------


def trial_results(exp_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """trial folder name -> the rows of its result.json (a cut-off last line is ignored)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(Path(exp_dir).glob("*/result.json")):
        rows = []
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
        out[path.parent.name] = rows
    return out


def _complete(rows: list[dict[str, Any]]) -> bool:
    # Ray never writes `done: true` into result.json; a trial is complete at its planned epochs.
    return bool(rows) and rows[-1].get("epoch", 0) >= rows[-1].get("config", {}).get("epochs", 1e9)


def finished_trials(exp_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """The trials whose result.json reaches the planned number of epochs."""
    return {name: rows for name, rows in trial_results(exp_dir).items() if _complete(rows)}


def saved_finished_trials(exp_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """The finished trials that Ray's newest saved experiment state also records as TERMINATED.

    Only these are safe from running again on resume: result.json gets a trial's last report
    a little before Ray registers its checkpoint and marks it terminated, and a study stopped
    in between resumes that trial from its previous checkpoint."""
    terminated = terminated_trials(exp_dir)
    return {name: rows for name, rows in finished_trials(exp_dir).items()
            if rows[-1].get("trial_id") in terminated}


def running_trial(exp_dir: Path, min_epoch: int) -> dict[str, Any] | None:
    """The last row of a trial that reported at least `min_epoch` epochs and is not complete."""
    for rows in trial_results(exp_dir).values():
        if rows and not _complete(rows) and rows[-1].get("epoch", 0) >= min_epoch:
            return rows[-1]
    return None


def terminated_trials(exp_dir: Path) -> set[str]:
    """Ids of the trials Ray's newest saved experiment state records as TERMINATED."""
    states = sorted(Path(exp_dir).glob("experiment_state-*.json"))
    if not states:
        return set()
    try:
        raw = json.loads(states[-1].read_text())
    except (OSError, json.JSONDecodeError):
        return set()
    out = set()
    for entry in raw.get("trial_data", []):
        trial = json.loads(entry[0])
        if trial.get("status") == "TERMINATED":
            out.add(trial["trial_id"])
    return out
