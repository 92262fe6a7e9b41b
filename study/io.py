"""Small file helpers: atomic writes, so a crash never leaves half a file."""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

import yaml


class _Loader(yaml.SafeLoader):
    """`yaml.SafeLoader` that also reads `1e-5` as a float, as YAML 1.2 does.

    PyYAML follows YAML 1.1, where a float needs a dot (`1.0e-5`), so `lr: 1e-5` would load
    as a string and be refused with a puzzling message.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    """Parse YAML safely (no object construction); `1e-5` is a float. Raises yaml.YAMLError."""
    return yaml.load(text, Loader=_Loader)  # safe: _Loader is a SafeLoader


TMP_PREFIX = ".study-tmp-"  # a dot file: no glob of Ray's or ours (`*.json`, ...) matches it


class AtomicWriter:
    """A binary file that appears at `path` whole, or not at all, when closed.

    It is written under a temporary name beside `path`, flushed to the disk (fsync) and
    renamed over `path` on `close`; `abort` (or leaving a `with` block by an exception)
    removes it and leaves any previous file as it was. The file gets the permissions a plain
    `open(path, "w")` would give a new file: 0o666 less the umask (the kernel applies it).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = os.fspath(path)
        folder, name = os.path.split(self.path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        while True:
            tmp_name = f"{TMP_PREFIX}{name}.{secrets.token_hex(6)}.tmp"
            self.tmp = os.path.join(folder or ".", tmp_name)
            try:
                fd = os.open(self.tmp, flags, 0o666)
                break
            except FileExistsError:
                continue
        self.handle = os.fdopen(fd, "wb")
        self.closed = False

    def write(self, data: bytes) -> int:
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()

    def tell(self) -> int:
        return self.handle.tell()

    def close(self) -> None:
        """Put the file in place: flush, fsync and rename it over `path`."""
        if self.closed:
            return
        self.closed = True
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
            os.replace(self.tmp, self.path)
        except BaseException:
            self._discard()
            raise

    def abort(self) -> None:
        """Drop what was written; `path` keeps its previous content (or stays absent)."""
        if not self.closed:
            self.closed = True
            self._discard()

    def _discard(self) -> None:
        self.handle.close()
        Path(self.tmp).unlink(missing_ok=True)

    def __enter__(self) -> AtomicWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically (see AtomicWriter)."""
    with AtomicWriter(path) as out:
        out.write(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically (see AtomicWriter)."""
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: str | Path, value: Any) -> None:
    """Write `value` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(value, indent=2, sort_keys=False) + "\n")


def read_trial_states(exp_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Return trial_id -> {status, dir, failures} from Ray's latest experiment state.

    Reads only the JSON parts of `experiment_state-*.json` (never its pickled fields); a
    missing or unreadable state gives {}.
    """
    states = sorted(Path(exp_dir).glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        raw = json.loads(states[-1].read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    out: dict[str, dict[str, Any]] = {}
    for entry in raw.get("trial_data", []):
        try:
            trial = json.loads(entry[0]) if isinstance(entry, list) else entry
            runtime = json.loads(entry[1]) if isinstance(entry, list) and len(entry) > 1 else {}
        except (TypeError, json.JSONDecodeError):
            continue
        if isinstance(trial, dict) and "trial_id" in trial:
            out[trial["trial_id"]] = {"status": trial.get("status", ""),
                                      "dir": trial.get("relative_logdir"),
                                      "failures": (runtime or {}).get("num_failures", 0)}
    return out
