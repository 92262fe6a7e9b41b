"""A local pyarrow filesystem whose every written file appears whole or not at all.

Ray Tune writes an experiment's files (experiment_state-*.json, the searcher state, each trial's
result.json and params.json) to a staging folder first and copies them to the storage path over
and over; pyarrow's local copy truncates each target and then writes it. A driver killed during
such a copy leaves an empty experiment state (the study can no longer be resumed) or cuts the
result.json of a trial that had long finished. Given to Ray as `RunConfig.storage_filesystem`,
this filesystem writes each file to a temporary name beside the target and renames it over the
target once complete, so a crash leaves the previous version intact.

It also tells when an experiment state has landed, so that the driver can hold back the
deletion of a trial's old checkpoints until a saved state no longer names them
(`defer_until_state_saved`): Ray deletes them at once, and a crash before the next state
reached the disk left a state whose latest checkpoint no longer existed, which failed the
trial on `--resume`.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

TMP_PREFIX = ".study-tmp-"  # a dot file: no glob of Ray's or ours (`*.json`, ...) matches it
STATE_PREFIX = "experiment_state-"  # Ray's experiment state file, one per driver session

_lock = threading.Lock()
_state_writes: list[float] = []  # when each completed experiment-state write began
_deferred: list[tuple[float, Callable[[], None]]] = []  # (requested at, action)


def defer_until_state_saved(action: Callable[[], None]) -> None:
    """Run `action` once an experiment state saved after this call is on disk.

    Ray copies the state in a background thread, one copy at a time, and saves it just before
    launching a copy. A write that began after this call may belong to a copy launched before
    it (an older state); the next completed write belongs to a later copy, so two writes that
    began after the request include one saved after it.
    """
    with _lock:
        _deferred.append((time.monotonic(), action))


def run_deferred(everything: bool = False) -> None:
    """Run the deferred actions whose condition holds (all of them after a final save)."""
    with _lock:
        due = [a for t, a in _deferred
               if everything or sum(1 for w in _state_writes if w > t) >= 2]
        _deferred[:] = [(t, a) for t, a in _deferred if a not in due]
    for action in due:
        action()


def _state_written(began: float) -> None:
    with _lock:
        _state_writes.append(began)
        del _state_writes[:-100]  # only recent ones matter
    run_deferred()


class _AtomicFile:
    """A writable binary file that becomes visible at `path` only when closed."""

    def __init__(self, path: str) -> None:
        self.path = path
        folder, name = os.path.split(path)
        fd, self.tmp = tempfile.mkstemp(dir=folder or ".", prefix=f"{TMP_PREFIX}{name}.")
        self.handle = os.fdopen(fd, "wb")
        self.closed = False
        self.began = time.monotonic()

    def write(self, data: Any) -> int:
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()

    def tell(self) -> int:
        return self.handle.tell()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
            os.chmod(self.tmp, 0o666 & ~_umask())  # as a plain open() would have made it
            os.replace(self.tmp, self.path)
        except BaseException:
            self.handle.close()
            try:
                os.unlink(self.tmp)
            except FileNotFoundError:
                pass
            raise
        if os.path.basename(self.path).startswith(STATE_PREFIX):
            _state_written(self.began)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class AtomicLocalHandler(pafs.FileSystemHandler):
    """`pyarrow.fs.LocalFileSystem`, with atomic `open_output_stream` (see the module doc)."""

    def __init__(self) -> None:
        self.fs = pafs.LocalFileSystem()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AtomicLocalHandler)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(type(self).__name__)

    def __reduce__(self) -> tuple[type, tuple]:
        return (AtomicLocalHandler, ())

    def get_type_name(self) -> str:
        return "study-atomic-local"

    def normalize_path(self, path: str) -> str:
        return self.fs.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to delete the contents of the root directory")

    def delete_file(self, path: str) -> None:
        self.fs.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.fs.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        with self.fs.open_input_stream(src) as source, self.open_output_stream(dest, None) as out:
            while chunk := source.read(1 << 20):
                out.write(chunk)

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return self.fs.open_input_stream(path)

    def open_input_file(self, path: str) -> pa.NativeFile:
        return self.fs.open_input_file(path)

    def open_output_stream(self, path: str, metadata: dict | None) -> pa.NativeFile:
        return pa.PythonFile(_AtomicFile(path), mode="w")

    def open_append_stream(self, path: str, metadata: dict | None) -> pa.NativeFile:
        return self.fs.open_append_stream(path, metadata=metadata)


def atomic_local_filesystem() -> pafs.FileSystem:
    """The filesystem to give Ray for a local `--storage-path`."""
    return pafs.PyFileSystem(AtomicLocalHandler())
