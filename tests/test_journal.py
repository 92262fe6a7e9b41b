"""Continuing an experiment: its Optuna journal checked and a cut-off last line repaired, one
process at a time, and trials added counted in study.json only once Ray's state holds them."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import optuna
import pytest

from study.cli.main import main
from study.core.names import META_FILE, OPTUNA_JOURNAL
from study.engine.journal import (
    begin_extension,
    checked_journal,
    only_this_process,
    settle_extension,
)
from study.errors import StudyError
from study.search.searcher import live_storage

DATA = "synthetic:size=16,n=120,n_test=40"


def journal_of(exp: Path, name: str, trials: int = 2) -> Path:
    """A real Optuna journal of study `name` with `trials` finished trials."""
    exp.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=name, storage=live_storage(exp / OPTUNA_JOURNAL))
    for _ in range(trials):
        trial = study.ask()
        study.tell(trial, trial.suggest_float("lr", 1e-4, 1e-2))
    return exp / OPTUNA_JOURNAL


def test_a_cut_off_last_line_is_moved_aside_and_the_journal_continues(tmp_path: Path) -> None:
    path = journal_of(tmp_path / "exp", "exp")
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"op_code":4,"worker_id":"x","stu')  # killed mid-append
    assert checked_journal(tmp_path / "exp", "exp") == path
    assert path.read_bytes() == whole  # ends at its last whole record again
    assert (tmp_path / "exp" / f"{OPTUNA_JOURNAL}.cut").read_bytes() == (
        b'{"op_code":4,"worker_id":"x","stu\n')  # nothing lost
    study = optuna.load_study(study_name="exp", storage=live_storage(path))
    study.tell(study.ask(), 0.5)  # appending works, and the journal reads back whole
    again = optuna.load_study(study_name="exp", storage=live_storage(path))
    assert len(again.trials) == 3


def test_without_the_repair_the_next_append_breaks_the_journal(tmp_path: Path) -> None:
    """What the repair prevents: Optuna glues its next record onto the cut line."""
    path = journal_of(tmp_path / "exp", "exp")
    path.write_bytes(path.read_bytes() + b'{"op_code":4,"wor')
    study = optuna.load_study(study_name="exp", storage=live_storage(path))
    with pytest.raises((ValueError, AttributeError)):  # Optuna 5 fails at ask or at the read
        study.tell(study.ask(), 0.5)
        _ = optuna.load_study(study_name="exp", storage=live_storage(path)).trials


@pytest.mark.parametrize(("damage", "message"), [
    (lambda p: p.write_bytes(b"garbage\n" + p.read_bytes()),
     "line 1 is not an Optuna journal record (b'garbage')"),
    (lambda p: p.write_bytes(p.read_bytes().replace(b"\n", b"\n[1, 2]\n", 1)),
     "line 2 is not an Optuna journal record"),
    (lambda p: p.chmod(0o666), "is writable by other users, owned by another user or a link"),
])
def test_a_damaged_or_open_journal_is_refused(tmp_path: Path, damage, message: str) -> None:
    path = journal_of(tmp_path / "exp", "exp")
    damage(path)
    before = path.read_bytes()
    with pytest.raises(StudyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        checked_journal(tmp_path / "exp", "exp")
    assert path.read_bytes() == before  # refused, not changed


def test_a_journal_that_is_a_link_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    outside = journal_of(tmp_path / "elsewhere", "exp")
    before = outside.read_bytes()
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / OPTUNA_JOURNAL).symlink_to(outside)
    with pytest.raises(StudyError, match="or a link"):
        checked_journal(tmp_path / "exp", "exp")
    assert outside.read_bytes() == before


def test_another_studys_journal_is_refused(tmp_path: Path) -> None:
    journal_of(tmp_path / "exp", "someone-else")
    with pytest.raises(StudyError, match=r"journal of another study \('someone-else'\), not of "
                                         r"'exp'"):
        checked_journal(tmp_path / "exp", "exp")
    assert checked_journal(tmp_path / "none", "none") is None  # no journal: nothing to check


def test_one_process_at_a_time(tmp_path: Path) -> None:
    with only_this_process(tmp_path):
        with pytest.raises(StudyError, match="is being run by another process"):
            with only_this_process(tmp_path):
                pass
    with only_this_process(tmp_path):  # free again once the first has ended
        pass
    assert list(tmp_path.iterdir()) == []  # the lock writes nothing into the experiment


def test_an_extension_counts_once_ray_holds_its_trials(tmp_path: Path) -> None:
    meta = {"options": {"num_samples": 3}, "expected_trials": 3, "command": "study run"}
    (tmp_path / META_FILE).write_text(json.dumps(meta))
    begin_extension(tmp_path, 5, 5, "study run --resume --num-samples 5")
    noted = json.loads((tmp_path / META_FILE).read_text())
    assert noted["expected_trials"] == 3 and noted["options"]["num_samples"] == 3
    settle_extension(tmp_path, 3)  # stopped before Ray saved a new trial: undone
    assert json.loads((tmp_path / META_FILE).read_text()) == meta
    begin_extension(tmp_path, 5, 5, "study run --resume --num-samples 5")
    settle_extension(tmp_path, 4)  # Ray's state holds a new trial: counted
    settled = json.loads((tmp_path / META_FILE).read_text())
    assert settled["expected_trials"] == 5 and settled["options"]["num_samples"] == 5
    assert [e["num_samples"] for e in settled["extended"]] == [5] and "extending" not in settled
    settle_extension(tmp_path, 5)  # nothing pending: unchanged
    assert json.loads((tmp_path / META_FILE).read_text()) == settled


@pytest.fixture(scope="module")
def finished(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-trial Optuna study."""
    root = tmp_path_factory.mktemp("journal")
    assert main(["run", "--data", DATA, "--num-samples", "2", "--max-epochs", "1",
                 "--storage-path", str(root), "--name", "j", "--quiet"]) == 0
    return root / "j"


def copy_of(exp: Path, tmp_path: Path) -> Path:
    shutil.copytree(exp, tmp_path / exp.name, symlinks=True)
    return tmp_path / exp.name


def resume(exp: Path, *more: str) -> int:
    return main(["run", "--resume", "--name", exp.name, "--storage-path", str(exp.parent),
                 "--quiet", *more])


@pytest.mark.slow
def test_extending_a_study_whose_journal_was_cut_off(finished: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The journal of a finished study ends in a cut line: adding trials works (it raised
    JSONDecodeError, and study.json already counted the trials that never ran)."""
    exp = copy_of(finished, tmp_path)
    journal = exp / OPTUNA_JOURNAL
    journal.write_bytes(journal.read_bytes() + b'{"op_code":7,"worker_id":"a","tri')
    assert resume(exp, "--num-samples", "3") == 0
    meta = json.loads((exp / META_FILE).read_text())
    assert meta["expected_trials"] == 3 and len(meta["extended"]) == 1
    study = optuna.load_study(study_name="j", storage=live_storage(journal))
    assert len(study.trials) == 3
    capsys.readouterr()
    assert resume(exp) == 0  # finished: nothing to resume, not "did not finish" forever
    assert "has finished all its 3 trials" in capsys.readouterr().out


@pytest.mark.slow
def test_an_extension_interrupted_before_ray_saved_it_can_be_run_again(
        finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C after study.json noted the extension and before Ray saved a new trial: the
    study is still the finished 2-trial study, and the same command adds the trial."""
    from study.engine import run as engine

    exp = copy_of(finished, tmp_path)

    def interrupted(tuner: object) -> object:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(engine, "_fit", interrupted)
        assert resume(exp, "--num-samples", "3") == 130
    meta = json.loads((exp / META_FILE).read_text())
    assert meta["expected_trials"] == 2 and "extended" not in meta
    capsys.readouterr()
    assert resume(exp) == 0  # plain --resume: finished, nothing new (it exited 130 forever)
    assert "has finished all its 2 trials" in capsys.readouterr().out
    assert "extending" not in json.loads((exp / META_FILE).read_text())
    assert resume(exp, "--num-samples", "3") == 0  # and the extension runs when asked again
    assert json.loads((exp / META_FILE).read_text())["expected_trials"] == 3


@pytest.mark.slow
def test_a_second_resume_of_a_running_experiment_is_refused(
        finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exp = copy_of(finished, tmp_path)
    fd = os.open(exp, os.O_RDONLY)  # another process holds it, as a running --resume does
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX)
        before = (exp / META_FILE).read_bytes()
        assert resume(exp, "--num-samples", "4") == 2
        assert "is being run by another process" in capsys.readouterr().err
        assert (exp / META_FILE).read_bytes() == before  # nothing recorded twice
    finally:
        os.close(fd)
