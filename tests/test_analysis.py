"""`study report` on a tiny real experiment: figures, exports, optuna.db, partial experiments.

One experiment per module (a 2x2x2 homework-like grid, 2 seeds stacked per trial, 4 epochs on
16x16 synthetic images: enough to learn a little, so seeds differ), made by `study run` in a
subprocess so its Ray never meets another module's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest

from analysis.report import FIGURES, OPTUNA_DB, write_report
from analysis.results import collect_trials, trial_dirs
from study.cli.main import main

pytestmark = pytest.mark.slow

DATA = "synthetic:size=16,n=100,n_test=60"
SPACE = """\
metric: val_accuracy
mode: max
params:
  loss: {choice: [bce, ce]}
  batch_size: {choice: [32, 128]}
  depth: {choice: [3, 5]}
fixed:
  width: {by_depth: {3: 16, 5: [32, 16, 16, 16, 16]}}
  dropout: 0.2
  lr: 3.0e-3
  epochs: 4
"""
TRIALS = 2 * 2 * 2  # loss x batch size x depth: one trial per configuration ...
RUNS = TRIALS * 2  # ... stacking 2 seeds: one run per trial and seed
PNG = b"\x89PNG\r\n\x1a\n"
FIGURE_NAMES = [
    *(f"homework_{f}_{kind}.png" for f in ("loss", "batch_size", "depth")
      for kind in ("curves", "test")),
    "hpo_history.png", "hpo_importance.png", "hpo_parallel.png", "hpo_learning_curves.png",
    *(f"hpo_scatter_{p}.png" for p in ("loss", "batch_size", "depth")),
    "clinical_best.png",
]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the study once for the module; `study run` writes summary/ at its end."""
    root = tmp_path_factory.mktemp("analysis")
    space = root / "space.yaml"
    space.write_text(SPACE)
    cmd = [sys.executable, "-m", "study", "run", "--space", str(space), "--search", "grid",
           "--repeats", "2", "--data", DATA, "--storage-path", str(root / "results"),
           "--name", "exp", "--num-cpus", "2", "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return root / "results" / "exp"


def _check_figures(summary: Path, names: list[str]) -> None:
    report = (summary / "report.md").read_text()
    for name in names:
        data = (summary / FIGURES / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 2000, name
        assert f"({FIGURES}/{name})" in report, f"report.md does not link {name}"


def test_every_figure_written_and_linked(experiment: Path) -> None:
    summary = experiment / "summary"
    _check_figures(summary, FIGURE_NAMES)
    assert sorted(p.name for p in (summary / FIGURES).glob("*.png")) == sorted(FIGURE_NAMES)


def test_leaderboard_has_one_row_per_run(experiment: Path) -> None:
    board = pd.read_csv(experiment / "summary" / "leaderboard.csv", dtype={"trial_id": str})
    assert len(trial_dirs(experiment)) == TRIALS and len(board) == RUNS
    assert sorted(board["seed"]) == [0] * TRIALS + [1] * TRIALS and not board["duplicate"].any()
    # every trial's two runs: its seeds' own values, whose mean the trial reported
    trials = collect_trials(experiment).set_index("trial_id")
    for trial_id, runs in board.groupby("trial_id"):
        assert len(runs) == 2
        assert runs["val_accuracy"].mean() == pytest.approx(trials.loc[trial_id,
                                                                       "val_accuracy"])
    assert set(board["status"]) == {"completed"}  # grid runs under FIFO: every repeat finishes


def test_report_md_answers_the_homework(experiment: Path) -> None:
    report = (experiment / "summary" / "report.md").read_text()
    assert "study run --space" in report and DATA in report
    assert f"Trials: {TRIALS} of {TRIALS} planned" in report
    assert "Search: grid; scheduler: fifo" in report
    rows = [line for line in report.splitlines() if line.startswith("| ")]
    for arm, homework in (("BCE", "71.5 %"), ("CE", '"100 %" (scoring bug)'),
                          ("batch 32", '"100 %" (scoring bug)'), ("batch 128", "72.25 %"),
                          ("3 layers", '"100 %" (scoring bug)'), ("5 layers", "72 %")):
        row = next(r for r in rows if f"| {arm} | 2 |" in r)
        assert " ± " in row and homework in row, row
    homework = pd.read_csv(experiment / "summary" / "homework.csv")
    arms = homework[homework["row"] == "arm"]
    assert len(arms) == 6 and set(arms["n"]) == {2}
    pairs = homework[homework["row"] == "pair"]
    tested = 0
    for title, factor in (("Loss: BCE vs CE", "loss"), ("Batch size", "batch_size"),
                          ("Depth (hidden layers)", "depth")):
        verdict = next(r for r in report.splitlines() if r.startswith(f"- **{title}**: "))
        mine = arms[arms["factor"] == factor]
        if (mine["test_sd"] == 0).all():  # no arm's seeds spread: nothing to compare on
            assert "cannot tell" in verdict and factor not in set(pairs["factor"]), verdict
            continue
        tested += 1
        assert "difference" in verdict and "n = 2 per arm" in verdict, verdict
        (pair,) = pairs[pairs["factor"] == factor].itertuples()
        values = [json.loads(v) for v in mine["test_values"]]
        assert pair.difference == pytest.approx(sum(values[0]) / 2 - sum(values[1]) / 2)
        assert pair.ci_low < pair.difference < pair.ci_high
        assert pair.p_holm >= pair.p_value and pair.detectable_80 > 0
        row = next(r for r in report.splitlines() if f"| {pair.a} − {pair.b} | 2/2 |" in r)
        assert f"| {pair.detectable_80:.1f} [" in row and f"| {pair.pair_test} |" in row, row
    assert tested, "every comparison had an arm without spread; the fixture learns nothing"
    assert "Holm-adjusted together" in report and "Games-Howell" in report
    assert "held at the homework's baseline" in report
    assert "### Validation vs test" in report and "Best configuration: validation accuracy" \
        in report
    for key in ("test_accuracy", "test_auroc", "test_sensitivity", "test_specificity"):
        assert f"| {key} | " in report


def test_runs_carry_their_kept_weights_per_image_predictions(experiment: Path) -> None:
    import numpy as np

    from analysis.results import collect_runs
    from study.core.names import PREDICTIONS_FILE

    for trial_dir in trial_dirs(experiment):
        (path,) = sorted(trial_dir.glob(f"checkpoint_*/{PREDICTIONS_FILE}"))[-1:]
        with np.load(path, allow_pickle=False) as saved:
            assert saved["prob"].dtype == np.float16 and len(saved["seeds"]) == 2
    runs = collect_runs(experiment)
    for run in runs.itertuples():
        assert run.test_correct is not None
        assert run.test_correct.mean() * 100 == pytest.approx(run.test_accuracy)
        assert 1 <= run.kept_epoch <= 4
    report = (experiment / "summary" / "report.md").read_text()
    assert "bootstrap over" in report and "± test set" in report
    assert "both on the weights each seed tested" in report


def test_the_clinical_readout_agrees_with_what_the_best_runs_reported(experiment: Path
                                                                       ) -> None:
    """The readout is computed from the saved per-image scores; the trials computed their
    test metrics in PyTorch while training: both must tell the same."""
    summary = json.loads((experiment / "summary" / "best_config.json").read_text())
    report = (experiment / "summary" / "report.md").read_text()
    section = report.split("## Clinical readout of the best configuration", 1)[1]
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")
            for line in section.splitlines() if line.startswith("| ")}
    metrics = summary["metrics"]
    for label, key, tol in (("Sensitivity", "test_sensitivity", 5e-4),
                            ("Specificity", "test_specificity", 5e-4),
                            ("AUROC", "test_auroc", 2e-2)):  # scores saved as float16
        assert float(rows[label][1]) == pytest.approx(metrics[key], abs=tol), label
    assert "Average precision (AUPRC)" in rows and "Brier score" in rows
    assert f"from each of its {len(summary['seeds'])} run(s)" in section


def test_an_operating_threshold_chosen_on_validation(experiment: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    import numpy as np

    from study.core.names import PREDICTIONS_FILE

    out = tmp_path / "youden"
    assert main(["report", str(experiment), "--out", str(out), "--threshold", "youden"]) == 0
    section = (out / "report.md").read_text().split("## Clinical readout", 1)[1]
    assert "chosen on validation maximising Youden's J" in section
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")
            for line in section.splitlines() if line.startswith("| ")}
    thresholds = [float(v) for v in rows["Threshold (on P(pneumonia))"][-1].strip(" |")
                  .split(", ")]
    best = json.loads((out / "best_config.json").read_text())
    # each seed's threshold maximises Youden's J on its own validation scores, and its test
    # sensitivity is read at that threshold: recomputed here from the files the runs saved
    sensitivities = []
    for trial_dir in trial_dirs(experiment):
        if not any(t in trial_dir.name for t in best["trial_ids"]):
            continue
        path = sorted(trial_dir.glob(f"checkpoint_*/{PREDICTIONS_FILE}"))[-1]
        with np.load(path, allow_pickle=False) as saved:
            for index in range(len(saved["seeds"])):
                val, val_y = saved["val_prob"][index].astype(float), saved["val_labels"] == 1
                j = {t: np.mean(val[val_y] >= t) + np.mean(val[~val_y] < t) for t in set(val)}
                chosen = max(j, key=lambda t: (j[t], t))
                assert round(chosen, 3) in [round(t, 3) for t in thresholds]  # as printed
                prob, y = saved["prob"][index].astype(float), saved["labels"] == 1
                sensitivities.append(np.mean(prob[y] >= chosen))
    assert float(rows["Sensitivity"][1]) == pytest.approx(np.mean(sensitivities), abs=5e-4)
    capsys.readouterr()
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["report", str(experiment), "--out", str(tmp_path / "bad"),
                 "--threshold", "specificity:2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--threshold must be youden" in err[0] and "'specificity:2'" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_a_tampered_threshold_in_study_json_is_one_line(experiment: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(experiment, copy, ignore=shutil.ignore_patterns("summary"))
    meta = json.loads((copy / "study.json").read_text())
    meta["options"]["threshold"] = "![x](/proc/self/environ)"
    (copy / "study.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["report", str(copy)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{copy / 'study.json'}: threshold must be youden" in err[0], err
    assert not (copy / "summary").exists()  # nothing written


def test_best_config_yaml_round_trips_through_study_train(experiment: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    path = experiment / "summary" / "best_config.yaml"
    assert main(["train", "--config", str(path), "--data", DATA, "--epochs", "1"]) == 0
    assert "Test accuracy is" in capsys.readouterr().out


def test_optuna_db_holds_every_trial_and_the_best_value(experiment: Path) -> None:
    db = experiment / "summary" / OPTUNA_DB
    study = optuna.load_study(study_name="exp", storage=f"sqlite:///{db}")
    assert len(study.trials) == TRIALS  # one per trial: the seed-means the searcher saw
    trials = collect_trials(experiment)
    assert study.best_value == pytest.approx(trials["last_val_accuracy"].max())  # as told
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    for trial in study.trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert set(trial.params) == {"loss", "batch_size", "depth"}
        assert sorted(trial.intermediate_values) == [1, 2, 3, 4]
        assert trial.intermediate_values[4] == pytest.approx(trial.value)
    assert not list(db.parent.glob(".optuna.db.*"))  # the temporary file was renamed


def _truncate(trial_dir: Path, keep: int = 1) -> None:
    lines = (trial_dir / "result.json").read_text().splitlines()
    (trial_dir / "result.json").write_text("\n".join(lines[:keep]) + "\n")


@pytest.fixture
def partial(experiment: Path, tmp_path: Path) -> Path:
    """A copy of the experiment with one errored trial and one stopped after 1 epoch."""
    copy = tmp_path / "partial"
    shutil.copytree(experiment, copy, ignore=shutil.ignore_patterns("summary"))
    dirs = trial_dirs(copy)
    (dirs[0] / "error.txt").write_text("Traceback ...\nRuntimeError: out of memory\n")
    _truncate(dirs[0])
    _truncate(dirs[1])
    # Ray's own record of the trial: ERROR (an error.txt alone may be a retried trial's)
    _set_status(copy, dirs[0], "ERROR")
    return copy


def _set_status(exp: Path, trial_dir: Path, status: str) -> None:
    """Give the trial of `trial_dir` this status in every Ray experiment state of `exp`."""
    trial_id = json.loads((trial_dir / "result.json").read_text().splitlines()[0])["trial_id"]
    for state_file in exp.glob("experiment_state-*.json"):
        state = json.loads(state_file.read_text())
        for entry in state["trial_data"]:
            trial = json.loads(entry[0])
            if trial["trial_id"] == trial_id:
                entry[0] = json.dumps({**trial, "status": status})
        state_file.write_text(json.dumps(state))


def test_report_on_an_experiment_with_an_errored_trial(partial: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    assert main(["report", str(partial)]) == 0
    out = capsys.readouterr().out
    assert "Missing: trial" in out and "RuntimeError: out of memory" in out
    summary = partial / "summary"
    statuses = collect_trials(partial)["status"].value_counts().to_dict()
    assert statuses == {"completed": TRIALS - 2, "error": 1, "stopped": 1}
    _check_figures(summary, FIGURE_NAMES)
    report = (summary / "report.md").read_text()
    assert "## Missing" in report and "errored: RuntimeError: out of memory" in report
    assert "1 error" in report and "1 stopped" in report
    study = optuna.load_study(study_name="partial", storage=f"sqlite:///{summary / OPTUNA_DB}")
    states = [t.state for t in study.trials]
    assert len(states) == TRIALS
    assert states.count(optuna.trial.TrialState.FAIL) == 1
    assert states.count(optuna.trial.TrialState.PRUNED) == 1
    board = pd.read_csv(summary / "leaderboard.csv", dtype={"trial_id": str})
    assert len(board) == RUNS
    trials = collect_trials(partial)
    best_finished = trials.loc[trials["status"] == "completed", "val_accuracy"].max()
    assert study.best_value == pytest.approx(best_finished)
    best = json.loads((summary / "best_config.json").read_text())
    assert best["config"]["loss"] in ("bce", "ce")


def test_report_returns_the_keys_the_cli_prints(partial: Path) -> None:
    summary = write_report(partial, out=partial / "elsewhere")
    for key in ("experiment", "metric", "mode", "meta", "trials", "leaderboard", "best", "out",
                "missing"):
        assert key in summary
    assert summary["out"] == partial / "elsewhere"
    assert (partial / "elsewhere" / "report.md").exists()
    assert any("errored" in line for line in summary["missing"])


def test_report_on_a_folder_that_is_not_an_experiment(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a study experiment folder" in err[0]
    assert not (tmp_path / "summary").exists()


@pytest.fixture
def interrupted(experiment: Path, tmp_path: Path) -> Path:
    """A copy of the experiment as Ctrl-C leaves it: one trial part-trained, RUNNING in Ray's
    last saved state."""
    copy = tmp_path / "interrupted"
    shutil.copytree(experiment, copy, ignore=shutil.ignore_patterns("summary"))
    trial_dir = trial_dirs(copy)[0]
    _truncate(trial_dir, keep=1)
    _set_status(copy, trial_dir, "RUNNING")
    return copy


def test_report_of_an_interrupted_study_says_unfinished(interrupted: Path) -> None:
    summary = write_report(interrupted)
    trials = summary["trials"]
    assert trials["status"].value_counts().to_dict() == {"completed": TRIALS - 1,
                                                         "unfinished": 1}
    report = (interrupted / "summary" / "report.md").read_text()
    assert f"({TRIALS - 1} completed, 1 unfinished (interrupted))" in report
    assert "running" not in report.lower()
    assert "1 trial(s) did not finish: 1 unfinished (interrupted)" in report


def test_report_html_embeds_every_figure_of_a_real_study(experiment: Path) -> None:
    import base64
    import io
    import re

    from PIL import Image

    page = (experiment / "summary" / "report.html").read_text()
    found = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(found) == len(FIGURE_NAMES)
    for data in found:
        image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        image.load()
        assert image.format == "PNG" and min(image.size) > 50


def test_summary_files_are_readable_by_others_under_umask_022(experiment: Path,
                                                              tmp_path: Path) -> None:
    """A plain write under umask 022 gives 0644: a teaching assistant can read the summary."""
    old = os.umask(0o022)
    try:
        write_report(experiment, out=tmp_path / "summary")
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "summary").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"report.md", "report.html", "leaderboard.csv",
                                       "best_config.json", "best_config.yaml", "model.pt",
                                       "homework.csv", "optuna.db", "hpo_history.png"}
    for path in files:
        assert path.stat().st_mode & 0o777 == 0o644, (path.name, oct(path.stat().st_mode))
