"""`import study`: study.run(...) and study.load(path) on a real tiny study, and what that study
leaves for the tools users watch it with (TensorBoard event files, the live Optuna journal)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pandas as pd
import pytest

import study
from analysis.results import trial_dirs
from study.core.names import OPTUNA_JOURNAL
from study.errors import StudyError
from study.search.searcher import live_storage

DATA = "synthetic:size=16,n=200,n_test=40"
pytestmark = pytest.mark.slow  # real studies on Ray

OPTIONS = {"data": DATA, "num_samples": 3, "max_epochs": 2, "max_concurrent": 1,
           "quiet": True}



@pytest.fixture(scope="module")
def result(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> study.StudyResult:
    root = tmp_path_factory.mktemp("api")
    return study.run(**OPTIONS, storage_path=str(root), name="nb")


def test_run_returns_the_study(result: study.StudyResult) -> None:
    assert result.path.name == "nb" and (result.path / "study.json").is_file()
    assert isinstance(result.leaderboard, pd.DataFrame) and len(result.leaderboard) == 3
    scores = result.leaderboard["val_accuracy"]
    assert list(scores) == sorted(scores, reverse=True)  # best first
    assert result.best_config is not None and result.best_config["epochs"] == 2
    saved = json.loads((result.summary / "best_config.json").read_text())
    assert result.best_config == saved["config"]
    assert result.best_metrics["val_accuracy"] == pytest.approx(saved["metrics"]["val_accuracy"])
    assert result.interrupted is False
    assert "3 trials" in repr(result)


def test_the_recorded_command_is_the_call(result: study.StudyResult) -> None:
    call = ("study.run(data='synthetic:size=16,n=200,n_test=40', num_samples=3, max_epochs=2, "
            f"max_concurrent=1, quiet=True, storage_path='{result.path.parent}', name='nb')")
    assert json.loads((result.path / "study.json").read_text())["command"] == call
    assert f"- Command: `{call}`" in (result.summary / "report.md").read_text()
    assert result.command == call


def test_load_reads_the_same_study(result: study.StudyResult) -> None:
    again = study.load(result.path)
    pd.testing.assert_frame_equal(again.leaderboard, result.leaderboard)
    assert again.best_config == result.best_config
    assert again.homework is None or isinstance(again.homework, pd.DataFrame)


def test_every_trial_logs_its_epochs_for_tensorboard(result: study.StudyResult) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    dirs = trial_dirs(result.path)
    assert len(dirs) == 3
    for trial_dir in dirs:
        reported = [json.loads(line) for line in
                    (trial_dir / "result.json").read_text().splitlines() if line.strip()]
        acc = EventAccumulator(str(trial_dir))
        acc.Reload()
        logged = acc.Scalars("ray/tune/val_accuracy")
        assert [s.step for s in logged] == [r["training_iteration"] for r in reported]
        assert [s.value for s in logged] == pytest.approx([r["val_accuracy"] for r in reported])


def test_the_live_optuna_study_numbers_trials_as_created(result: study.StudyResult) -> None:
    assert not (result.path / "optuna.db").exists()  # the live study is a journal
    live = optuna.load_study(study_name="nb", storage=live_storage(result.path / OPTUNA_JOURNAL))
    assert len(live.trials) == 3
    # Ray's creation index is in each trial folder's name: train_trial_<id>_<index>_...
    index = {}
    for trial_dir in trial_dirs(result.path):
        trial_id, number = trial_dir.name.split("_")[2:4]
        index[trial_id] = int(number)
    created = sorted(index, key=index.get)
    assert [t.user_attrs["trial_id"] for t in live.trials] == created
    summary_db = optuna.load_study(study_name="nb",
                                   storage=f"sqlite:///{result.summary / 'optuna.db'}")
    assert [t.user_attrs["trial_id"] for t in summary_db.trials] == created
    assert any(t.intermediate_values for t in live.trials)


def test_bad_options_fail_as_on_the_command_line(ray_cluster: None, tmp_path: Path) -> None:
    with pytest.raises(StudyError, match=r"--num-samples must be >= 1, got 0"):
        study.run(num_samples=0, storage_path=str(tmp_path))
    with pytest.raises(TypeError, match="unexpected keyword argument 'num_sample'"):
        study.run(num_sample=3)
    with pytest.raises(StudyError, match="no such experiment folder"):
        study.load(tmp_path / "nothing")


@pytest.fixture(scope="module")
def extended(result: study.StudyResult, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A copy of the finished 3-trial study, given 2 more trials with --num-samples 5."""
    import shutil

    root = tmp_path_factory.mktemp("more")
    shutil.copytree(result.path, root / "nb", symlinks=True)
    before = {d.name: (d / "result.json").stat().st_mtime_ns for d in trial_dirs(root / "nb")}
    more = study.run(resume=True, name="nb", storage_path=str(root), num_samples=5, quiet=True)
    return {"root": root, "before": before, "result": more}


def test_more_trials_continue_the_search(extended: dict) -> None:
    more, before = extended["result"], extended["before"]
    assert len(more.leaderboard) == 5 and more.interrupted is False
    dirs = {d.name: d for d in trial_dirs(more.path)}
    assert len(dirs) == 5 and set(before) < set(dirs)
    for name, mtime in before.items():  # earlier trials were not run again
        assert (dirs[name] / "result.json").stat().st_mtime_ns == mtime
    live = optuna.load_study(study_name="nb", storage=live_storage(more.path / OPTUNA_JOURNAL))
    # One Optuna study: the new trials were asked after the 3 earlier ones, which TPE saw.
    assert [t.number for t in live.trials] == [0, 1, 2, 3, 4]
    assert {t.user_attrs["trial_id"] for t in live.trials[3:]} == {
        name.split("_")[2] for name in set(dirs) - set(before)}
    meta = json.loads((more.path / "study.json").read_text())
    assert meta["options"]["num_samples"] == 5 and meta["expected_trials"] == 5
    report = (more.summary / "report.md").read_text()
    assert "Trials: 5 of 5 planned" in report
    assert "- Trials added (" in report and "to 5 samples): `study.run(resume=True" in report
    history = optuna.load_study(study_name="nb",
                                storage=f"sqlite:///{more.summary / 'optuna.db'}")
    assert [t.user_attrs["trial_id"] for t in history.trials] == [
        t.user_attrs["trial_id"] for t in live.trials]


def test_a_finished_study_asked_for_nothing_new_says_so(extended: dict,
                                                        capsys: pytest.CaptureFixture) -> None:
    from study.cli.main import main

    root = extended["root"]
    assert main(["run", "--resume", "--name", "nb", "--storage-path", str(root)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"Study nb has finished all its 5 trials; nothing to resume (pass "
                   f"--num-samples above 5 to add trials, or see {root / 'nb' / 'summary'})."]
    again = study.run(resume=True, name="nb", storage_path=str(root))
    assert capsys.readouterr().out.startswith("Study nb has finished all its 5 trials")
    assert len(again.leaderboard) == 5


def test_other_changed_options_are_still_refused(extended: dict) -> None:
    root = str(extended["root"])
    with pytest.raises(StudyError, match="--max-epochs 3 differs from the study's 2"):
        study.run(resume=True, name="nb", storage_path=root, num_samples=6, max_epochs=3)
    with pytest.raises(StudyError, match="--num-samples 4 differs from the study's 5"):
        study.run(resume=True, name="nb", storage_path=root, num_samples=4)
    meta = json.loads((extended["root"] / "nb" / "study.json").read_text())
    meta["options"]["search"] = "random"
    (extended["root"] / "nb" / "study.json").write_text(json.dumps(meta))
    with pytest.raises(StudyError, match="can grow only a study searched by optuna"):
        study.run(resume=True, name="nb", storage_path=root, num_samples=6)
