"""`study run` of the CNN family end to end on one real Ray: stacked CNN trials on a MedMNIST
`.npz` with an imbalanced training split, selected by validation AUROC, and the exports
(best_config.yaml, model.pt) used again by `study train` and `study evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from study.cli import main as cli

pytestmark = pytest.mark.usefixtures("ray_cluster")


@pytest.fixture(scope="module")
def npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16x16 images, 1 normal to 3 pneumonia in train (like PneumoniaMNIST's 1 to 2.9)."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, labels in (("train", [0] * 30 + [1] * 90), ("val", [0, 1] * 20),
                          ("test", [0, 1] * 20)):
        y = np.asarray(labels, dtype=np.uint8)
        base = np.where(y == 0, 90, 150)[:, None, None]
        arrays[f"{split}_images"] = (base + rng.integers(-40, 40, (len(y), 16, 16))
                                     ).astype(np.uint8)
        arrays[f"{split}_labels"] = y[:, None]
    path = tmp_path_factory.mktemp("data") / "tiny_medmnist.npz"
    np.savez(path, **arrays)
    return path


def test_a_cnn_study_stacks_its_seeds_and_its_exports_round_trip(
        npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    space = tmp_path / "cnn_small.yaml"
    shipped = yaml.safe_load((Path(__file__).parents[1] / "search_spaces/cnn.yaml").read_text())
    shipped["params"] = {"lr": {"loguniform": [1.0e-3, 1.0e-2]},
                         "augment": {"choice": ["none", "light"]}}
    shipped["fixed"].update(depth=2, width=8, batch_size=32, class_weight="balanced")
    space.write_text(yaml.safe_dump(shipped))
    assert cli.main(["run", "--space", str(space), "--data", str(npz), "--storage-path",
                     str(tmp_path), "--name", "cnn", "--quiet", "--search", "random",
                     "--scheduler", "fifo", "--num-samples", "2", "--max-epochs", "2",
                     "--repeats", "3"]) == 0
    exp = tmp_path / "cnn"
    meta = json.loads((exp / "study.json").read_text())
    assert (meta["metric"], meta["mode"]) == ("val_auroc", "max")
    board = pd.read_csv(exp / "summary" / "leaderboard.csv", dtype={"trial_id": str})
    assert (board["model"] == "cnn").all() and (board["class_weight"] == "balanced").all()
    assert board["trial_id"].nunique() == 2 and len(board) == 6  # 2 trials x 3 stacked seeds
    assert sorted(board["seed"].unique()) == [0, 1, 2]
    summary = exp / "summary"
    best = json.loads((summary / "best_config.json").read_text())
    assert best["config"]["model"] == "cnn" and best["config"]["repeats"] == 3
    assert best["metrics"]["val_auroc"] == pytest.approx(
        board.groupby("trial_id")["val_auroc"].mean().max(), rel=1e-6)
    capsys.readouterr()

    assert cli.main(["train", "--config", str(summary / "best_config.yaml"), "--data",
                     str(npz), "--epochs", "1", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "'model': 'cnn'" in out and "'class_weight': 'balanced'" in out
    assert "Test accuracy is" in out
    assert cli.main(["evaluate", "--checkpoint", str(summary / "model.pt"), "--data",
                     str(npz)]) == 0
    assert "Test accuracy is" in capsys.readouterr().out


def test_a_space_too_deep_for_the_data_stops_before_ray_runs_a_trial(
        npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    space = tmp_path / "deep.yaml"
    space.write_text("params:\n  depth: {int: [2, 5]}\nfixed:\n  model: cnn\n  epochs: 1\n")
    status = cli.main(["run", "--space", str(space), "--data", str(npz), "--storage-path",
                       str(tmp_path), "--name", "deep", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1, err
    assert "params.depth: a CNN of depth 5 halves 16x16 images 5 times" in err
    assert "at most depth 4" in err
    assert not list((tmp_path / "deep").glob("*/result.json"))


def test_the_homework_comparisons_stay_within_one_model_family() -> None:
    from analysis.homework import select_comparison

    trials = pd.DataFrame({"model": ["mlp", "mlp", "cnn", "cnn"], "batch_size": [16, 32, 16, 64],
                           "status": ["completed"] * 4})
    mixed = select_comparison(trials, "batch_size")
    assert mixed is not None and mixed.arms == [16, 32]  # the MLP's: the homework's family
    assert set(mixed.trials["model"]) == {"mlp"}
    cnn_only = select_comparison(trials[trials["model"] == "cnn"], "batch_size")
    assert cnn_only is not None and cnn_only.arms == [16, 64]
    assert select_comparison(trials.iloc[:0], "batch_size") is None
