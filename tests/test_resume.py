"""`study.engine.resume`: the options a resumed study runs with and the checks before Ray restores
(plain files: no Ray)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from study.engine.resume import check_trusted, read_study_meta, resume_options
from study.errors import StudyError


def _study(tmp_path: Path, **options: Any) -> Path:
    exp = tmp_path / "results" / "s1"
    exp.mkdir(parents=True)
    stored = {"search": "grid", "scheduler": "fifo", "num_samples": 1, "seed": 3,
              "cpus_per_trial": 2.0, "repeats": 2, **options}
    (exp / "study.json").write_text(json.dumps(
        {"options": stored, "space_file": "/spaces/s.yaml", "data": "synthetic:n=40"}))
    return exp


def _given(tmp_path: Path, **flags: Any) -> dict[str, Any]:
    return {"name": "s1", "storage_path": str(tmp_path / "results"), **flags}


def test_resume_takes_the_study_options_left_out(tmp_path: Path) -> None:
    _study(tmp_path)
    opts = resume_options(_given(tmp_path))
    assert (opts.search, opts.scheduler, opts.num_samples, opts.seed, opts.repeats) == \
        ("grid", "fifo", 1, 3, 2)
    assert (opts.space, opts.data, opts.cpus_per_trial, opts.resume) == \
        ("/spaces/s.yaml", "synthetic:n=40", 2.0, True)


def test_resume_takes_a_changed_inherited_option(tmp_path: Path) -> None:
    _study(tmp_path)
    assert resume_options(_given(tmp_path, cpus_per_trial=1.0)).cpus_per_trial == 1.0


@pytest.mark.parametrize(("flag", "value"), [("seed", 4), ("search", "random")])
def test_resume_refuses_a_different_fixed_option(tmp_path: Path, flag: str,
                                                 value: object) -> None:
    _study(tmp_path)
    with pytest.raises(StudyError, match=f"--{flag.replace('_', '-')} {value} differs"):
        resume_options(_given(tmp_path, **{flag: value}))


def test_more_samples_only_for_an_optuna_search(tmp_path: Path) -> None:
    _study(tmp_path)  # a grid
    with pytest.raises(StudyError, match="--num-samples can grow only a study searched by "
                                         "optuna .* searched by grid, so it keeps its 1"):
        resume_options(_given(tmp_path, num_samples=5))


def test_resume_accepts_the_same_fixed_option_given_again(tmp_path: Path) -> None:
    _study(tmp_path)
    assert resume_options(_given(tmp_path, seed=3)).seed == 3


@pytest.mark.parametrize(("content", "message"), [
    (None, "study.json is missing"),
    ("{not json", "is corrupted (JSONDecodeError)"),
    ('{"options": 1}', "no options recorded"),
])
def test_a_missing_or_damaged_record_is_refused(tmp_path: Path, content: str | None,
                                                message: str) -> None:
    exp = tmp_path / "s1"
    exp.mkdir()
    if content is not None:
        (exp / "study.json").write_text(content)
    with pytest.raises(StudyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_study_meta(exp)


def test_no_experiment_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match="no experiment at"):
        resume_options(_given(tmp_path))


def test_state_others_could_write_is_not_trusted(tmp_path: Path) -> None:
    exp = _study(tmp_path)
    (exp / "tuner.pkl").write_bytes(b"x")
    os.chmod(exp / "tuner.pkl", 0o644)
    check_trusted(exp)
    os.chmod(exp / "tuner.pkl", 0o666)
    with pytest.raises(StudyError, match="tuner.pkl is writable by other users"):
        check_trusted(exp)
