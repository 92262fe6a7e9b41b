"""TrialConfig: the homework lab's defaults, and every bad value refused by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from study.errors import StudyError
from study.training.config import TrialConfig, read_config_file


def test_defaults_are_the_homework_labs() -> None:
    c = TrialConfig()
    assert (c.loss, c.batch_size, c.depth, c.width, c.dropout, c.batchnorm, c.optimizer, c.lr,
            c.schedule, c.epochs, c.seed) == (
        "ce", 32, 3, 64, 0.5, True, "adam", 1e-4, "cosine", 30, 0)
    assert c.weight_decay == 0.0 and c.image_size is None


def test_frozen() -> None:
    with pytest.raises(AttributeError):
        TrialConfig().lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"loss": "mse"}, "loss must be one of bce, ce, got 'mse'"),
        ({"optimizer": "rmsprop"}, "optimizer must be one of adam, sgd, got 'rmsprop'"),
        ({"schedule": "step"}, "schedule must be one of none, cosine, got 'step'"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
        ({"batch_size": -4}, "batch_size must be an integer >= 1, got -4"),
        ({"batch_size": 2.5}, "batch_size must be an integer >= 1, got 2.5"),
        ({"batch_size": True}, "batch_size must be an integer >= 1, got True"),
        ({"batch_size": 1}, "batch_size must be >= 2 with batchnorm on"),
        ({"dropout": 1.0}, r"dropout must lie in \[0, 1\), got 1.0"),
        ({"dropout": -0.1}, r"dropout must lie in \[0, 1\), got -0.1"),
        ({"dropout": "0.5"}, r"dropout must lie in \[0, 1\), got '0.5'"),
        ({"depth": -1}, "depth must be an integer >= 0, got -1"),
        ({"width": 0}, "width must be an integer >= 1, got 0"),
        ({"depth": 3, "width": (64, 32)}, r"width must .* depth=3 of them, got \[64, 32\]"),
        ({"depth": 2, "width": (64, 0)}, r"width must .* depth=2 of them, got \[64, 0\]"),
        ({"lr": 0.0}, "lr must be > 0, got 0.0"),
        ({"lr": -1e-3}, "lr must be > 0, got -0.001"),
        ({"weight_decay": -1.0}, "weight_decay must be >= 0, got -1.0"),
        ({"epochs": 0}, "epochs must be an integer >= 1, got 0"),
        ({"seed": -1}, "seed must be an integer >= 0, got -1"),
        ({"image_size": 0}, "image_size must be an integer >= 1, got 0"),
        ({"batchnorm": "yes"}, "batchnorm must be true or false, got 'yes'"),
    ],
)
def test_bad_values_refused(values: dict[str, Any], match: str) -> None:
    with pytest.raises(StudyError, match=match):
        TrialConfig(**values)
    with pytest.raises(StudyError, match=f"^where: {match}"):
        TrialConfig.from_dict(values, where="where")


def test_batch_size_one_without_batchnorm_is_fine() -> None:
    assert TrialConfig(batch_size=1, batchnorm=False).batch_size == 1
    assert TrialConfig(batch_size=1, depth=0).batch_size == 1


def test_unknown_key_refused() -> None:
    with pytest.raises(StudyError, match="trial config: unknown key 'learning_rate'; known keys"):
        TrialConfig.from_dict({"lr": 0.1, "learning_rate": 0.1}, where="trial config")


def test_from_dict_width_list() -> None:
    c = TrialConfig.from_dict({"width": [256, 128, 64, 64, 64]})
    assert c.width == (256, 128, 64, 64, 64) and c.depth == 5
    c = TrialConfig.from_dict({"depth": 2, "width": [8, 4]})
    assert c.width == (8, 4) and c.depth == 2


def test_to_dict_round_trip() -> None:
    c = TrialConfig(loss="bce", depth=2, width=(32, 16), lr=3e-3, image_size=64)
    d = c.to_dict()
    assert d["width"] == [32, 16]
    json.dumps(d)
    assert TrialConfig.from_dict(d) == c


def test_read_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("loss: bce\nbatch_size: 16\nlr: 1.0e-3\nwidth: [32, 16]\n")
    values = read_config_file(path)
    assert values == {"loss": "bce", "batch_size": 16, "lr": 1e-3, "width": [32, 16]}
    assert TrialConfig.from_dict(values).depth == 2


def test_read_json(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"depth": 5, "dropout": 0.2}))
    assert read_config_file(str(path)) == {"depth": 5, "dropout": 0.2}


def test_read_config_wrapper(tmp_path: Path) -> None:
    path = tmp_path / "best_config.yaml"
    path.write_text("config:\n  loss: ce\n  depth: 4\nval_accuracy: 88.5\n")
    assert read_config_file(path) == {"loss": "ce", "depth": 4}


def test_bad_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("loss: [bce\n")
    with pytest.raises(StudyError, match="not valid YAML/JSON") as info:
        read_config_file(path)
    assert str(path) in str(info.value)


def test_bad_json(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text("{'loss': 'bce'}")
    with pytest.raises(StudyError, match=r"c\.json: not valid YAML/JSON"):
        read_config_file(path)


@pytest.mark.parametrize("text", ["- loss\n- bce\n", "just a string\n", ""])
def test_config_file_not_a_mapping(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(StudyError, match="expected a mapping of config keys"):
        read_config_file(path)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match=r"--config .*nope\.yaml: cannot be read"):
        read_config_file(tmp_path / "nope.yaml")


def test_yaml_is_loaded_safely(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "c.yaml"
    path.write_text("loss: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(StudyError, match="not valid YAML/JSON"):
        read_config_file(path)
    assert not (tmp_path / "pwned").exists()


def test_read_config_file_reads_exponent_floats(tmp_path: Path) -> None:
    # YAML 1.1 (PyYAML) reads `1e-3` as a string; config files get it as the float users mean.
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-3\nweight_decay: 5E-4\n")
    values = read_config_file(path)
    assert values == {"lr": 1e-3, "weight_decay": 5e-4}
    assert TrialConfig.from_dict(values).lr == 1e-3
