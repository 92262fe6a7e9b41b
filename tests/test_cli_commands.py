"""What `study run` and `study report` print about the best configuration: rounded numbers, and
why it is not the single best score seen when it is not."""

from __future__ import annotations

import pandas as pd
import pytest

from study.cli.commands import _best_note, _print_best


def summary(top_status: str) -> dict:
    board = pd.DataFrame({"trial_id": ["a1", "b2", "c3"], "status": [top_status, "completed",
                                                                       "completed"],
                          "val_accuracy": [91.234, 88.5, 80.0]})
    best = {"config": {"dropout": 0.6918616866414583, "lr": 0.000123456, "batch_size": 32,
                       "loss": "ce"},
            "metrics": {"val_accuracy": 88.5, "val_loss": 0.3456789, "test_accuracy": 86.66666},
            "ci95": {}, "n_seeds": 1, "trial_ids": ["b2"]}
    return {"metric": "val_accuracy", "mode": "max", "leaderboard": board, "best": best}


def test_numbers_are_rounded(capsys: pytest.CaptureFixture) -> None:
    _print_best(summary("completed") | {"leaderboard": None})
    out = capsys.readouterr().out
    assert "dropout: 0.6919" in out and "lr: 0.0001235" in out and "batch_size: 32" in out
    assert "val_accuracy: 88.50" in out and "val_loss: 0.3457" in out
    assert "test_accuracy: 86.67" in out
    assert "0.6918616866414583" not in out


def test_a_higher_score_of_a_stopped_trial_is_explained() -> None:
    note = _best_note(summary("stopped"))
    assert note is not None
    assert "Trial a1 scored a higher val_accuracy, 91.23, but it was stopped early by the " \
           "scheduler" in note
    assert "chosen among completed trials by the score of the weights it keeps" in note


def test_no_note_when_the_best_trial_is_the_best_configuration() -> None:
    s = summary("completed")
    s["best"]["trial_ids"] = ["a1"]
    assert _best_note(s) is None


def test_a_higher_epoch_seen_during_training_is_explained() -> None:
    s = summary("completed")
    s["best"]["trial_ids"] = ["a1"]
    s["best"]["metrics"]["val_accuracy"] = 91.234
    epochs = pd.DataFrame({"trial_id": ["a1", "a1", "b2"], "epoch": [1, 2, 1],
                           "val_accuracy": [93.5, 91.234, 80.0]})
    note = _best_note(s, epochs)
    assert note is not None
    assert "The progress display's best, 93.50 at epoch 1 of trial a1, was one epoch's " \
           "score during training" in note
    epochs.loc[0, "val_accuracy"] = 90.0  # no epoch beat the final score: nothing to explain
    assert _best_note(s, epochs) is None
    s["mode"] = "min"  # for a metric minimised, the lowest epoch is the display's best
    s["metric"] = "val_accuracy"
    assert "80.00 at epoch 1 of trial b2" in _best_note(s, epochs)
