"""A local pyarrow filesystem whose every written file appears whole or not at all.

Ray Tune writes an experiment's files (experiment_state-*.json, the searcher state, each trial's
result.json and params.json) to a staging folder first and copies them to the storage path over
and over; pyarrow's local copy truncates each target and then writes it. A driver killed during
such a copy leaves an empty experiment state (the study can no longer be resumed) or cuts the
result.json of a trial that had long finished. Given to Ray as `RunConfig.storage_filesystem`,
this filesystem writes each file with `core.files.AtomicWriter`, so a crash leaves the previous
version intact.

Whoever needs to know when a file has landed (`study.core.ray_compat` holds back checkpoint
deletions until a saved experiment state no longer names them) registers with `observe_writes`
for the length of a study. A write the file system refuses (a full disk, a folder made
read-only) raises for Ray as before, which logs it and carries on; `failed_writes` keeps it, so
the study can stop and say so (`study.engine.storage_faults`); so does `note_refused_write`
for the study's other writers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pyarrow as pa
import pyarrow.fs as pafs

from study.core.files import AtomicWriter

# (path, when its write began) -> None, called once the file is in place. Ray calls the
# filesystem from its own threads, and the filesystem is rebuilt from its pickle, so the
# observers of this process are kept here rather than on a handler.
WriteObserver = Callable[[str, float], None]
_lock = threading.Lock()
_observers: list[WriteObserver] = []
_failures: list[tuple[str, OSError]] = []  # (path, why), this process's refused writes


def failed_writes() -> list[tuple[str, OSError]]:
    """The writes through the filesystem that the file system refused, oldest first."""
    with _lock:
        return list(_failures)


def note_refused_write(path: str, exc: OSError) -> None:
    """Keep a refused write of another writer to the storage path (the Optuna journal) with
    those of this filesystem, so that it stops the study the same way."""
    with _lock:
        _failures.append((path, exc))


@contextmanager
def observe_writes(observer: WriteObserver) -> Iterator[None]:
    """Call `observer(path, began)` for every file this process writes through the filesystem."""
    with _lock:
        _observers.append(observer)
    try:
        yield
    finally:
        with _lock:
            _observers.remove(observer)


class _AtomicFile(AtomicWriter):
    """An AtomicWriter that tells the observers when it has landed, and keeps a refusal of
    the file system (`failed_writes`)."""

    def __init__(self, path: str) -> None:
        self.began = time.monotonic()
        super().__init__(path)

    def refused(self, exc: OSError) -> None:
        note_refused_write(self.path, exc)

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        with _lock:
            observers = list(_observers)
        for observer in observers:
            observer(self.path, self.began)


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
