"""Trials' metrics reach TensorBoard, Weights & Biases (offline) and MLflow (a local file store)
through Ray Tune's own logger callbacks, read back with each tool's own reader."""

from __future__ import annotations

import json
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ray import tune

from study.engine.tracking import check_tracking, mlflow_uri, tracking_callbacks
from study.errors import StudyError

LRS = (0.1, 0.2)
EPOCHS = 3


def make_trainable(epochs: int):
    """Trials whose metrics follow from the config, so values can be checked. (A closure:
    Ray's workers cannot import this test module, so the function travels by value.)"""

    def tiny_trainable(config: dict) -> None:
        for epoch in range(1, epochs + 1):
            accuracy = 50.0 + 100 * config["lr"] + epoch
            # Two seeds, reported as a study's trials report them: the mean, and each seed's.
            tune.report({"epoch": epoch, "val_accuracy": accuracy, "val_loss": 1.0 / epoch,
                         "seeds": [4, 5],
                         "seed_metrics": {"val_accuracy": [accuracy - 1, accuracy + 1]}})

    return tiny_trainable



@pytest.fixture(scope="module")
def experiment(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One tiny Tuner run with TensorBoard, W&B (offline) and MLflow (file store) attached."""
    root = tmp_path_factory.mktemp("tracking")
    saved = {k: os.environ.get(k) for k in ("WANDB_MODE", "WANDB_SILENT")}
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true")
    mlruns = root / "mlflow.db"  # MLflow's own local store (its file store is deprecated)
    try:
        exp_dir = root / "results" / "tiny"
        callbacks = tracking_callbacks("tiny", exp_dir, wandb="xray-test", mlflow=str(mlruns))
        tuner = tune.Tuner(
            make_trainable(EPOCHS),
            param_space={"lr": tune.grid_search(list(LRS))},
            run_config=tune.RunConfig(name="tiny", storage_path=str(root / "results"),
                                      callbacks=callbacks, verbose=0),
        )
        results = tuner.fit()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert not results.errors
    return {"exp_dir": exp_dir, "mlruns": mlruns,
            "trials": {r.config["lr"]: Path(r.path) for r in results}}


@pytest.mark.slow
def test_tensorboard_event_files_hold_every_epoch(experiment: dict) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for lr, trial_dir in experiment["trials"].items():
        events = list(trial_dir.glob("events.out.tfevents.*"))
        assert events, f"no TensorBoard event file in {trial_dir}"
        acc = EventAccumulator(str(trial_dir))
        acc.Reload()
        scalars = acc.Scalars("ray/tune/val_accuracy")
        assert [s.step for s in scalars] == [1, 2, 3]
        assert [s.value for s in scalars] == pytest.approx(
            [50.0 + 100 * lr + e for e in (1, 2, 3)])
        # Each seed is a curve of its own; no histograms of the per-seed lists.
        for seed, offset in ((4, -1), (5, 1)):
            values = [s.value for s in acc.Scalars(f"ray/tune/seed_{seed}/val_accuracy")]
            assert values == pytest.approx([50.0 + 100 * lr + e + offset for e in (1, 2, 3)])
        assert acc.Tags()["histograms"] == []


def wandb_records(path: Path) -> Iterator[Any]:
    """The records of an offline W&B run file (`run-*.wandb`), parsed with wandb's protobufs.

    wandb 0.31 reads these files only in its Go core; the file is a LevelDB-style log
    (":W&B" header, 32 KiB blocks of records split FULL/FIRST/MIDDLE/LAST) of `Record`s.
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, chunks = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if kind == 0 and length == 0:
            pos += left - 7
            continue
        chunks += data[pos:pos + length]
        pos += length
        if kind in (1, 4):  # FULL, LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


@pytest.mark.slow
def test_wandb_offline_has_one_run_per_trial_with_config_and_metrics(experiment: dict) -> None:
    runs = sorted(experiment["exp_dir"].glob("wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == len(LRS)
    # W&B's own service process writes the file; it may still be flushing when fit returns.
    deadline = time.monotonic() + 60
    while not all(any(r.WhichOneof("record_type") == "exit" for r in wandb_records(run))
                  for run in runs) and time.monotonic() < deadline:
        time.sleep(0.5)
    seen: dict[float, list[dict[str, Any]]] = {}
    for run in runs:
        config: dict[str, Any] = {}
        history = []
        for record in wandb_records(run):
            kind = record.WhichOneof("record_type")
            if kind in ("run", "config"):
                updates = record.run.config.update if kind == "run" else record.config.update
                config.update({u.key or "/".join(u.nested_key): json.loads(u.value_json)
                               for u in updates})
            elif kind == "history":
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                       for i in record.history.item}
                if "epoch" in row:  # not W&B's own rows (system metrics)
                    history.append(row)
        seen[config["lr"]] = history
    assert set(seen) == set(LRS)
    for lr, history in seen.items():
        assert [h["epoch"] for h in history] == [1, 2, 3]
        assert [h["val_accuracy"] for h in history] == pytest.approx(
            [50.0 + 100 * lr + e for e in (1, 2, 3)])


@pytest.mark.slow
def test_mlflow_file_store_has_one_run_per_trial_with_params_and_metrics(
        experiment: dict) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri(str(experiment["mlruns"])))
    exp = client.get_experiment_by_name("tiny")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == len(LRS)
    by_lr = {float(r.data.params["lr"]): r for r in runs}
    assert set(by_lr) == set(LRS)
    for lr, run in by_lr.items():
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert sorted(m.value for m in history) == pytest.approx(
            [50.0 + 100 * lr + e for e in (1, 2, 3)])


def test_missing_package_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(StudyError, match=r"--mlflow file:/x: the mlflow package is not "
                                         r"installed.*xray-study\[mlflow\]"):
        check_tracking(None, "file:/x")
    monkeypatch.setenv("WANDB_MODE", "offline")
    check_tracking("proj", None)  # wandb is installed here


def test_mlflow_uri_makes_folders_absolute_file_uris(tmp_path: Path) -> None:
    assert mlflow_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert mlflow_uri("file:///tmp/x") == "file:///tmp/x"
    assert mlflow_uri(str(tmp_path / "runs")) == (tmp_path / "runs").resolve().as_uri()
    assert mlflow_uri(str(tmp_path / "m.db")) == f"sqlite:///{(tmp_path / 'm.db').resolve()}"


def test_wandb_without_credentials_is_one_clear_line(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    for key in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # no `wandb login` here
    with pytest.raises(StudyError, match=r"--wandb xray: no W&B API key found; set "
                                         r"WANDB_API_KEY, run `wandb login`, or set "
                                         r"WANDB_MODE=offline"):
        check_tracking("xray", None)
    monkeypatch.setenv("WANDB_MODE", "offline")
    check_tracking("xray", None)
