"""The progress display of `study run`, driven by a real Ray Tune run: plain lines for a log,
the live rich display for a terminal, and the summary writer's phases."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
from ray import tune

from study.core.display import SummaryProgress, format_value
from study.engine.progress import StudyProgress

EPOCHS = 3


def make_trainable(epochs: int):
    """Trials scoring 50 + 100 * lr + epoch; lr 0.05 fails in its second epoch. (A closure:
    Ray's workers cannot import this test module.)"""

    def trainable(config: dict) -> None:
        for epoch in range(1, epochs + 1):
            if config["lr"] == 0.05 and epoch == 2:
                raise RuntimeError("boom")
            tune.report({"epoch": epoch, "val_accuracy": 50.0 + 100 * config["lr"] + epoch})

    return trainable



def run_with(progress: StudyProgress, tmp_path, name: str) -> None:
    tuner = tune.Tuner(
        make_trainable(EPOCHS),
        param_space={"lr": tune.grid_search([0.1, 0.2, 0.05])},
        tune_config=tune.TuneConfig(metric="val_accuracy", mode="max", max_concurrent_trials=1),
        run_config=tune.RunConfig(name=name, storage_path=str(tmp_path), verbose=0,
                                  callbacks=[progress]),
    )
    tuner.fit()


@pytest.mark.slow
def test_plain_lines_count_trials_epochs_and_best(ray_cluster: None, tmp_path) -> None:
    out = io.StringIO()
    progress = StudyProgress(3, EPOCHS, "val_accuracy", "max", stream=out, live=False)
    run_with(progress, tmp_path, "plain")
    lines = out.getvalue().splitlines()
    assert all(re.match(r"\[\d+:\d\d:\d\d\] ", line) for line in lines), lines
    started = [line for line in lines if " started (" in line]
    assert len(started) == 3
    assert "0/3 done, 1 running, 2 pending" in started[0]
    assert any("errored after 1/3 epochs" in line for line in lines)
    finished = [line for line in lines if "finished after 3/3 epochs" in line]
    assert len(finished) == 2
    # The errored trial trained 1 epoch, so 3 + 3 + 1 were planned in the end.
    assert lines[-1].endswith("trials ended: 3/3 done, 0 running, 0 pending; epochs 7/7; "
                              f"best val_accuracy 73.00 (trial {progress.best[1]}, epoch 3)")
    assert progress.best[0] == pytest.approx(73.0)
    assert sum("new best" in line for line in lines) >= 2


@pytest.mark.slow
def test_live_display_draws_bars_and_best(ray_cluster: None, tmp_path) -> None:
    out = io.StringIO()
    progress = StudyProgress(3, EPOCHS, "val_accuracy", "max", stream=out, live=True)
    progress.console.force_terminal = True  # a terminal's output, captured
    run_with(progress, tmp_path, "live")
    text = out.getvalue()
    assert "[0:" not in text  # no plain lines on a terminal
    final = text.split("trials")[-1]
    assert "3/3" in final and "3/3 done, 0 running, 0 pending" in final
    assert "7/7" in text
    assert "best val_accuracy 73.00" in text
    assert "elapsed" in text


def test_eta_follows_the_epoch_rate() -> None:
    progress = StudyProgress(4, 10, "val_loss", "min", live=False, stream=io.StringIO())
    assert progress.eta() is None
    progress.epochs_done = {"a": 10, "b": 5}
    progress.ended = {"a": "TERMINATED"}
    progress.start -= 15.0  # 15 epochs in 15 s: one a second
    assert progress.planned_epochs() == 40
    assert progress.eta() == pytest.approx(25.0, rel=0.05)
    progress.ended["b"] = "TERMINATED"  # stopped early at 5: 5 epochs fewer to go
    assert progress.planned_epochs() == 35
    assert progress.eta() == pytest.approx(20.0, rel=0.05)


def test_summary_phases_plain() -> None:
    out = io.StringIO()
    show = SummaryProgress(stream=out, live=False)
    for i in range(4):
        show("figures", i, 3) if i <= 3 else None
    show("optuna.db", 1, 1)
    show.close()
    assert out.getvalue().splitlines() == ["writing summary: figures 0/3",
                                           "writing summary: figures 3/3",
                                           "writing summary: optuna.db 1/1"]


def test_live_summary_display_is_closed_by_its_with_block() -> None:
    out = io.StringIO()
    with SummaryProgress(stream=out, live=True) as show:
        show("figures", 1, 3)
        assert show._display is not None and show._display.live.is_started
        display = show._display
    assert show._display is None and not display.live.is_started


def test_numbers_are_rounded_for_people() -> None:
    assert format_value("dropout", 0.6918616866414583) == "0.6919"
    assert format_value("lr", 0.000123456) == "0.0001235"
    assert format_value("val_accuracy", 87.123456) == "87.12"
    assert format_value("val_loss", 0.123456789) == "0.1235"
    assert format_value("batch_size", 32) == "32"
    assert format_value("loss", "ce") == "ce"


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["", "--quiet", "-v"])
def test_study_run_output_by_verbosity(tmp_path, flag: str) -> None:
    """A real `study run` with stdout not a terminal: plain progress lines by default, only
    the summary with --quiet, Ray's table and the trials' own lines with -v; never Optuna's
    ExperimentalWarning."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "study", "run", "--data", "synthetic:size=16,n=120,n_test=40",
           "--num-samples", "2", "--max-epochs", "2", "--storage-path", str(tmp_path),
           "--name", "out", "--num-cpus", "2", *([flag] if flag else [])]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    out, both = done.stdout, done.stdout + done.stderr
    assert "ExperimentalWarning" not in both
    assert "Best configuration (val_accuracy max, validation only):" in out
    progress = re.findall(r"^\[\d+:\d\d:\d\d\] .*$", out, re.MULTILINE)
    trial_lines = re.findall(r"\(train_trial pid=\d+\).*epoch 1/2: train loss", both)
    if flag == "":
        assert sum(" started (" in line for line in progress) == 2
        assert re.match(r"\[\d+:\d\d:\d\d\] trials ended: 2/2 done, 0 running, 0 pending; "
                        r"epochs \d/\d; best val_accuracy \d+\.\d\d \(trial \w+, epoch \d\)$",
                        progress[-1]), progress[-1]
        assert "writing summary: figures" in out
        assert not trial_lines and "Current time:" not in both
    elif flag == "--quiet":
        assert not progress and "writing summary" not in out and not trial_lines
        assert "Current time:" not in both
    else:
        assert not progress
        assert "Current time:" in both  # Ray's status table
        assert trial_lines  # the trials' own lines (Ray folds repeats of the same line)


def test_restored_with_a_resumed_tuner_it_counts_what_ended_before() -> None:
    import pickle
    from types import SimpleNamespace

    before = StudyProgress(3, 4, "val_accuracy", "max", live=False, stream=io.StringIO())
    before.start -= 10_000  # another process's clock
    progress = pickle.loads(pickle.dumps(before))
    assert time_since(progress) < 60
    trials = [SimpleNamespace(trial_id="a", status="TERMINATED", last_result={"epoch": 4}),
              SimpleNamespace(trial_id="b", status="TERMINATED", last_result={"epoch": 2}),
              SimpleNamespace(trial_id="c", status="RUNNING", last_result={"epoch": 1})]
    progress.on_step_end(0, trials)
    assert progress.counts() == (2, 1, 0)
    assert progress.planned_epochs() == 4 + 2 + 4


def time_since(progress: StudyProgress) -> float:
    import time

    return time.monotonic() - progress.start


def test_adding_trials_counts_the_earlier_ones(tmp_path) -> None:
    import json

    from study.engine.progress import earlier_sessions

    for name, epochs in (("a", 4), ("b", 2), ("c", 4)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "result.json").write_text(
            "".join(json.dumps({"epoch": e}) + "\n" for e in range(1, epochs + 1)))
    assert earlier_sessions(tmp_path) == (3, 10)
    progress = StudyProgress(5, 4, "val_accuracy", "max", live=False, stream=io.StringIO(),
                             earlier=(3, 10))
    assert progress.counts() == (3, 0, 2)
    assert (progress.trained_epochs(), progress.planned_epochs()) == (10, 18)
    assert progress.eta() is None  # nothing trained in this session yet
    progress.epochs_done = {"d": 4}
    progress.ended = {"d": "TERMINATED"}
    assert progress.counts() == (4, 0, 1)
    assert (progress.trained_epochs(), progress.planned_epochs()) == (14, 18)


def test_study_report_shows_its_progress_without_importing_ray(tmp_path: Path) -> None:
    # `study report` on a folder that is no experiment: it gets as far as showing progress,
    # then stops with its one line; Ray (Tune) would have added half a second to every report.
    code = ("import argparse, sys\n"
            "from study.cli.commands import cmd_report\n"
            "from study.errors import StudyError\n"
            "try:\n"
            f"    cmd_report(argparse.Namespace(results_dir={str(tmp_path)!r}, out=None))\n"
            "except StudyError:\n"
            "    pass\n"
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
            "print('study.core.display' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["[]", "True"], done.stdout


def test_trials_added_beyond_the_plan_grow_the_total() -> None:
    """Seeds on demand: the plan knows the first seeds of each arm (2 trials of 2 epochs); a
    third trial the searcher adds is counted in, never "3/2 done, epochs 6/4"."""
    from types import SimpleNamespace

    out = io.StringIO()
    progress = StudyProgress(2, 2, "val_accuracy", "max", live=False, stream=out)
    for trial_id in ("a", "b", "c"):
        trial = SimpleNamespace(trial_id=trial_id, status="RUNNING", last_result={})
        progress.on_trial_start(0, [], trial)
        progress.on_trial_result(0, [], trial, {"epoch": 1, "val_accuracy": 50.0})
        progress.on_trial_result(0, [], trial, {"epoch": 2, "val_accuracy": 60.0})
        progress.on_trial_complete(0, [], trial)
    assert progress.total == 3
    assert progress.counts() == (3, 0, 0)
    assert (progress.trained_epochs(), progress.planned_epochs()) == (6, 6)
    assert "3/3 done, 0 running, 0 pending" in out.getvalue().splitlines()[-1]
    assert "3/2" not in out.getvalue() and "6/4" not in out.getvalue()


def test_a_progress_pickled_before_its_total_could_grow_restores() -> None:
    import pickle

    progress = StudyProgress(4, 3, "val_accuracy", "max", live=False, stream=io.StringIO())
    state = progress.__getstate__()
    state["total"] = state.pop("planned_total")  # as an experiment made before pickled it
    restored = StudyProgress.__new__(StudyProgress)
    restored.__setstate__(pickle.loads(pickle.dumps(state)))
    assert restored.total == 4 and restored.counts() == (0, 0, 4)
