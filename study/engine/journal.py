"""Continuing an experiment safely: one process at a time, its live Optuna journal checked (a
cut-off last line repaired) before anything is appended, trials added counted once Ray holds them.

Optuna's journal is one JSON record a line, appended under a lock. A driver killed mid-append
leaves a last line without its newline; Optuna's reader skips it, but the next append is glued
onto it and the journal is unreadable from then on. So before a study continues, the journal
is read once: a cut last line is moved aside (to `optuna_journal.log.cut`, nothing lost) and
the journal ends at its last whole record; any other damage, another study's journal, or a
journal that is a link or writable by others is refused with one line.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from study.core.files import write_json_atomic
from study.core.names import META_FILE, OPTUNA_JOURNAL
from study.core.secrets import redact
from study.engine.resume import read_study_meta
from study.errors import StudyError

CREATE_STUDY, DELETE_STUDY = 0, 1  # Optuna's JournalOperation codes for a study's life


def check_owned(path: Path, what: str) -> None:
    """Refuse `path` if it is a link, writable by other users or owned by another user."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    st = path.lstat()
    if path.is_symlink() or st.st_mode & 0o002 or (uid is not None
                                                    and st.st_uid not in (uid, 0)):
        raise StudyError(
            f"{what}: {path} is writable by other users, owned by another user or a link "
            f"(mode {st.st_mode & 0o777:o}, owner uid {st.st_uid}); only your own experiment "
            "files are continued"
        )


def checked_journal(exp_dir: Path, study_name: str, what: str = "--resume") -> Path | None:
    """Check (and repair a cut-off last line of) `exp_dir`'s Optuna journal, before anything
    is appended to it; return its path, or None where the experiment has none.

    Raises StudyError where the journal is a link or others' to write, holds a damaged record
    before its end, or holds no study named `study_name`.
    """
    path = exp_dir / OPTUNA_JOURNAL
    if not path.exists() and not path.is_symlink():
        return None
    check_owned(path, what)
    data = path.read_bytes()
    whole = data[:data.rfind(b"\n") + 1]
    if len(whole) < len(data):  # a driver killed mid-append: the record never completed
        with open(path.with_name(f"{OPTUNA_JOURNAL}.cut"), "ab") as cut:
            cut.write(data[len(whole):] + b"\n")
        with open(path, "r+b") as journal:
            journal.truncate(len(whole))
    studies: list[str] = []
    for number, line in enumerate(whole.splitlines(), start=1):
        try:
            record = json.loads(line)
            code = record["op_code"]
        except (ValueError, KeyError, TypeError):
            raise StudyError(
                f"{what}: {path} line {number} is not an Optuna journal record "
                f"({line[:60]!r}); the study's search cannot continue from it"
            ) from None
        if code == CREATE_STUDY:
            studies.append(str(record.get("study_name")))
        elif code == DELETE_STUDY and studies:
            studies[int(record.get("study_id", 0))] = ""
    if whole and study_name not in studies:
        found = ", ".join(repr(s) for s in studies if s) or "none"
        raise StudyError(
            f"{what}: {path} is the journal of another study ({found}), not of "
            f"{study_name!r}; it was copied from another experiment or replaced"
        )
    return path


@contextmanager
def only_this_process(exp_dir: Path, what: str = "--resume") -> Iterator[None]:
    """Hold the experiment for this process: a second `--resume` of it, started while this one
    runs, is refused with one line instead of running trials twice.

    An advisory lock (flock) on the experiment folder itself: nothing is written into it, and
    the kernel drops the lock with the process, however it ends.
    """
    fd = os.open(exp_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StudyError(
                f"{what}: {exp_dir} is being run by another process; wait for it to end "
                "(or stop it), then run this again"
            ) from None
        yield
    finally:
        os.close(fd)


EXTENDING = "extending"  # study.json: trials being added, until Ray's saved state holds them


def begin_extension(exp_dir: Path, num_samples: int, expected: int, command: str) -> None:
    """Note in study.json that `--num-samples` adds trials, without counting them yet.

    The count changes only once Ray's saved state holds the new trials (`settle_extension`):
    counted before, an extension interrupted before Ray saved anything left a study that
    expected trials no saved state would ever run, and that no `--resume` could finish.
    """
    from datetime import datetime, timezone

    record = read_study_meta(exp_dir)
    record[EXTENDING] = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                         "num_samples": num_samples, "expected_trials": expected,
                         "command": redact(command)}
    write_json_atomic(exp_dir / META_FILE, record)


def settle_extension(exp_dir: Path, saved_trials: int) -> None:
    """Count a begun extension in study.json once Ray's state holds more trials than the study
    expected before it (`saved_trials`); drop one that never began."""
    record = read_study_meta(exp_dir)
    pending = record.pop(EXTENDING, None)
    if not isinstance(pending, dict):
        return
    if saved_trials > int(record.get("expected_trials") or 0):
        record["options"]["num_samples"] = pending["num_samples"]
        record["expected_trials"] = pending["expected_trials"]
        record.setdefault("extended", []).append(
            {k: pending[k] for k in ("at", "num_samples", "command")})
    write_json_atomic(exp_dir / META_FILE, record)
