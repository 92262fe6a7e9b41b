"""`study train` and `study evaluate` through `study.cli.main.main`, as a user runs them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch

from study.cli.main import main
from study.core.names import RUN_FILES

DATA = "synthetic:size=16,n=60,n_test=20"
REPO = Path(__file__).parents[1]
TEST_LINE = re.compile(r"^Test accuracy is (\d+\.\d+)%\.$", re.MULTILINE)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Payload:
    """Unpickling this object creates `marker`: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.marker), "w")


def _train(out: Path, *extra: str) -> int:
    return main(["train", "--data", DATA, "--epochs", "2", "--device", "cpu", "--out", str(out),
                 *extra])


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("study: error: ")
    return lines[0]


@pytest.fixture
def trained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, str]:
    """A finished `study train --out` run and the accuracy it printed."""
    out = tmp_path / "run"
    assert _train(out) == 0
    printed = capsys.readouterr().out
    match = TEST_LINE.search(printed)
    assert match is not None, printed
    return out, match.group(1)


def test_train_prints_and_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert _train(out) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^Epoch 1/2: train loss \d", printed, re.MULTILINE)
    assert re.search(r"^Epoch 2/2: ", printed, re.MULTILINE)
    accuracy = float(TEST_LINE.search(printed).group(1))  # type: ignore[union-attr]
    assert 0 <= accuracy <= 100
    assert sorted(p.name for p in out.iterdir()) == sorted(RUN_FILES)

    config = json.loads((out / "config.json").read_text())
    assert config["config"]["epochs"] == 2 and config["config"]["loss"] == "ce"
    assert config["image_size"] == 16 and config["data"] == DATA
    history = pd.read_csv(out / "history.csv")
    assert len(history) == 2 and history["epoch"].tolist() == [1, 2]
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_auroc"} <= set(
        history.columns)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] == pytest.approx(accuracy, abs=0.005)
    assert metrics["best_epoch"] in (1, 2)
    payload = torch.load(out / "model.pt", weights_only=True)
    assert payload["image_size"] == 16 and payload["config"]["depth"] == 3


def test_evaluate_reproduces_train(trained: tuple[Path, str],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out, accuracy = trained
    assert main(["evaluate", "--checkpoint", str(out), "--data", DATA, "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert f"Test accuracy is {accuracy}%." in printed.splitlines()
    # The model file itself works as --checkpoint too.
    assert main(["evaluate", "--checkpoint", str(out / "model.pt"), "--data", DATA]) == 0
    assert f"Test accuracy is {accuracy}%." in capsys.readouterr().out.splitlines()


def test_out_holding_a_run_is_refused(trained: tuple[Path, str],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = trained
    before = _snapshot(out)
    assert _train(out, "--loss", "bce") == 2
    captured = capsys.readouterr()
    line = _one_error_line(captured.err)
    assert f"--out {out}: already holds a run" in line and "--overwrite" in line
    assert "Epoch" not in captured.out
    assert _snapshot(out) == before

    assert _train(out, "--loss", "bce", "--overwrite") == 0
    assert json.loads((out / "config.json").read_text())["config"]["loss"] == "bce"
    assert (out / "model.pt").read_bytes() != before["model.pt"][0]


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--loss", "mse"], "loss must be one of bce, ce, got 'mse'"),
        (["--optimizer", "rmsprop"], "optimizer must be one of adam, sgd, got 'rmsprop'"),
        (["--batch-size", "0"], "batch_size must be an integer >= 1, got 0"),
        (["--dropout", "1.0"], "dropout must lie in [0, 1), got 1.0"),
        (["--depth", "-1"], "depth must be an integer >= 0, got -1"),
        (["--batch-size", "1"], "batch_size must be >= 2 with batchnorm on"),
        (["--data", "synthetic:colour=1"], "unknown synthetic option 'colour=1'"),
    ],
)
def test_bad_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str],
                   named: str) -> None:
    out = tmp_path / "run"
    assert _train(out, *flags) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert named in line
    assert not out.exists() or not any(out.iterdir())


def test_missing_data_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "none.npz"
    assert main(["train", "--data", str(missing), "--epochs", "1"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(missing) in line and "no such file" in line


def test_checkpoint_architecture_mismatch(trained: tuple[Path, str], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = trained
    payload = torch.load(out / "model.pt", weights_only=True)
    payload["config"]["depth"] = 2
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    assert main(["evaluate", "--checkpoint", str(bad), "--data", DATA]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(bad) in line and "weights do not match the architecture" in line


def test_checkpoint_with_pickled_payload(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    # Control: the payload is live; an unsafe load really creates the marker.
    control = tmp_path / "control"
    control.mkdir()
    torch.save({"state_dict": _Payload(control / "ran")}, control / "m.pt")
    torch.load(control / "m.pt", weights_only=False)
    assert (control / "ran").exists()

    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": _Payload(marker), "config": {}, "image_size": 16}, evil)
    assert main(["evaluate", "--checkpoint", str(evil), "--data", DATA]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(evil) in line and "not a loadable weights-only checkpoint" in line
    assert not marker.exists()


def test_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none"), "--data", DATA]) == 2
    assert "no such file" in _one_error_line(capsys.readouterr().err)


def test_evaluate_never_upsamples(trained: tuple[Path, str],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = trained
    assert main(["evaluate", "--checkpoint", str(out), "--data",
                 "synthetic:size=8,n=10,n_test=10"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "images are 8x8 but the model was trained at 16x16" in line


def test_config_file_and_flag_override(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("loss: bce\nbatch_size: 16\nepochs: 5\nwidth: [32, 16]\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--data", DATA, "--epochs", "1",
                 "--out", str(out)]) == 0
    assert "Epoch 1/1" in capsys.readouterr().out
    saved = json.loads((out / "config.json").read_text())["config"]
    assert (saved["loss"], saved["batch_size"], saved["epochs"]) == ("bce", 16, 1)
    assert (saved["width"], saved["depth"]) == ([32, 16], 2)


def test_bad_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("loss: bce\nlearning_rate: 0.1\n")
    assert main(["train", "--config", str(config), "--data", DATA]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"--config {config}: unknown key 'learning_rate'" in line


@pytest.mark.parametrize(("extra", "size"), [([], 256), (["--image-size", "64"], 64)])
def test_homework_folder_full_and_downsampled(
    tmp_path: Path, write_homework_dir: Callable[..., Path], capsys: pytest.CaptureFixture[str],
    extra: list[str], size: int,
) -> None:
    root = write_homework_dir(tmp_path / "hw", size=256, n=20)
    out = tmp_path / "run"
    assert main(["train", "--data", str(root), "--epochs", "1", "--batch-size", "8",
                 "--out", str(out), *extra]) == 0
    printed = capsys.readouterr().out
    assert f"at {size}x{size} (32 train, 8 validation, 40 test)" in printed
    assert json.loads((out / "config.json").read_text())["image_size"] == size
    assert torch.load(out / "model.pt", weights_only=True)["image_size"] == size


def test_python_m_study_help() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "study", "--help"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for command in ("run", "train", "evaluate", "report"):
        assert command in done.stdout


def test_train_help_lists_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--loss", "--batch-size", "--depth", "--width", "--dropout", "--no-batchnorm",
                 "--image-size", "--out", "--overwrite", "--config"):
        assert flag in text


def test_train_repeats_stacks_seeds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Dropout 0: seed 1 of the stacked run is the run of seed 1 alone, and its saved model
    # scores what the stacked run printed for it.
    out = tmp_path / "stacked"
    assert _train(out, "--repeats", "3", "--dropout", "0") == 0
    printed = capsys.readouterr().out
    seeds = dict(re.findall(r"^Seed (\d): test accuracy (\d+\.\d+)%\.$", printed, re.MULTILINE))
    assert sorted(seeds) == ["0", "1", "2"]
    mean = float(TEST_LINE.search(printed).group(1))  # type: ignore[union-attr]
    assert mean == pytest.approx(sum(float(v) for v in seeds.values()) / 3, abs=0.006)
    history = pd.read_csv(out / "history.csv")
    assert list(zip(history["epoch"], history["seed"], strict=True)) == [
        (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seeds"] == [0, 1, 2] and len(metrics["seed_metrics"]["best_epoch"]) == 3
    assert sorted(p.name for p in out.glob("model_seed*.pt")) == [
        "model_seed0.pt", "model_seed1.pt", "model_seed2.pt"]

    assert _train(tmp_path / "alone", "--seed", "1", "--dropout", "0") == 0
    alone = TEST_LINE.search(capsys.readouterr().out).group(1)  # type: ignore[union-attr]
    assert alone == seeds["1"]
    assert main(["evaluate", "--checkpoint", str(out / "model_seed1.pt"), "--data", DATA,
                 "--device", "cpu"]) == 0
    assert TEST_LINE.search(capsys.readouterr().out).group(1) == seeds["1"]  # type: ignore
    saved = torch.load(out / "model_seed1.pt", weights_only=True)
    assert saved["config"]["seed"] == 1 and saved["config"]["repeats"] == 1


def test_train_without_out_says_nothing_was_saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", DATA, "--epochs", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == (
        "Nothing was saved (no --out): pass --out DIR to keep the model and its record "
        f"({', '.join(RUN_FILES)}).")
    assert list(tmp_path.iterdir()) == []  # and indeed nothing was written
