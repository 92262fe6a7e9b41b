"""`study run --resume-or-start`: which experiments it resumes and which it starts.

Running it twice on a real study (stopped, then resumed to the end) is in tests/test_kuberay.py
(the RayJob's entrypoint) and tests/test_slurm.py (a requeued job); these are the decisions.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from study.cli.main import main
from study.engine.resume import found_experiment


def _study(root: Path, *files: str) -> Path:
    exp = root / "xray"
    exp.mkdir(parents=True)
    for name in files:
        (exp / name).write_text(json.dumps({"options": {}}))
    return exp


def test_nothing_there_starts(tmp_path: Path) -> None:
    assert not found_experiment("xray", str(tmp_path))
    assert not found_experiment("xray", str(tmp_path / "not-yet"))


def test_a_study_with_saved_state_resumes(tmp_path: Path) -> None:
    exp = _study(tmp_path, "study.json", "experiment_state-2026-01-01_00-00-00.json")
    assert found_experiment("xray", str(tmp_path))
    assert exp.is_dir()


def test_a_study_stopped_before_ray_saved_anything_starts_again(tmp_path: Path) -> None:
    # Killed before the first snapshot: nothing to resume, and only the starting run's files.
    exp = _study(tmp_path, "study.json", "tuner.pkl")
    assert not found_experiment("xray", str(tmp_path))
    assert not exp.exists()


def test_a_stateless_study_holding_other_files_is_left_for_resume_to_judge(
        tmp_path: Path) -> None:
    exp = _study(tmp_path, "study.json", "my-notes.txt")
    assert found_experiment("xray", str(tmp_path))  # --resume then says what is wrong
    assert (exp / "my-notes.txt").is_file()


def test_a_folder_that_is_no_study_is_not_resumed(tmp_path: Path) -> None:
    exp = _study(tmp_path, "something-else.json")
    assert not found_experiment("xray", str(tmp_path))  # starting refuses: it exists
    assert exp.is_dir()


@pytest.mark.parametrize(("flags", "message"), [
    ([], "--resume-or-start needs --name"),
    (["--name", "xray", "--resume"], "--resume-or-start and --resume: give one of them"),
    (["--name", "a/b"], "--name must be a plain folder name"),
])
def test_bad_use_is_one_line(flags: list[str], message: str, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["run", "--resume-or-start", "--storage-path", str(tmp_path), *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not any(tmp_path.iterdir())
