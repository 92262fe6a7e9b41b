"""`study.core.files`: the atomic writer (whole or nothing, a plain write's mode) and YAML."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from study.core.files import AtomicWriter, load_yaml, write_json_atomic, write_text_atomic


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_written_files_get_the_mode_of_a_plain_write(tmp_path: Path, umask: int) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert _mode(plain) == 0o666 & ~umask
    write_text_atomic(tmp_path / "a.txt", "x")
    write_json_atomic(tmp_path / "b.json", {"x": 1})
    assert _mode(tmp_path / "a.txt") == _mode(tmp_path / "b.json") == _mode(plain)


def test_storage_files_and_models_get_the_mode_of_a_plain_write(tmp_path: Path,
                                                                umask: int) -> None:
    from torch import nn

    from study.core.atomic_fs import atomic_local_filesystem
    from study.training.checkpoint import save_model
    from study.training.config import TrialConfig

    with atomic_local_filesystem().open_output_stream(str(tmp_path / "result.json")) as out:
        out.write(b"{}\n")
    config = TrialConfig(depth=1, width=4)
    save_model(tmp_path / "model.pt", nn.Linear(2, 2).state_dict(), config, 4)
    for name in ("result.json", "model.pt"):
        assert _mode(tmp_path / name) == 0o666 & ~umask, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "result.json"]


def test_an_aborted_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "best_config.json"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError), AtomicWriter(target) as out:
        out.write(b"new, half")
        assert target.read_text() == "old"  # nothing visible before close
        raise RuntimeError("stop")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_yaml_reads_exponents_as_floats() -> None:
    assert load_yaml("lr: 1e-5\nn: 3\ns: 1e5x") == {"lr": 1e-5, "n": 3, "s": "1e5x"}


class _FullDisk:
    """A file object on a disk with no room left: every write and flush fails as ENOSPC."""

    def __init__(self, handle: object) -> None:
        self.handle = handle

    def write(self, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    def flush(self) -> None:
        raise OSError(28, "No space left on device")

    def close(self) -> None:
        self.handle.close()  # type: ignore[attr-defined]
        raise OSError(28, "No space left on device")

    def fileno(self) -> int:
        return self.handle.fileno()  # type: ignore[attr-defined]


@pytest.mark.parametrize("step", ["write", "close"])
def test_a_refused_write_leaves_no_temporary_file(tmp_path: Path, step: str) -> None:
    # A caller that never closes a stream whose write failed (pyarrow, for Ray's writes) must
    # not leave the temporary file behind, nor one whose close (its flush) failed.
    target = tmp_path / "state.json"
    target.write_text("before")
    out = AtomicWriter(target)
    out.handle = _FullDisk(out.handle)  # type: ignore[assignment]
    with pytest.raises(OSError, match="No space left"):
        if step == "write":
            out.write(b"after")
        else:
            out.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    assert target.read_text() == "before"
