"""YAML search spaces: the shipped spaces, every invalid space refused by key, and the three
translations (Optuna define-by-run, Ray Tune domains, grid). No Ray cluster is needed."""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import yaml
from ray.tune.search.variant_generator import generate_variants

from study.errors import StudyError
from study.search.optuna_space import optuna_space
from study.search.space import SPACES_DIR, SearchSpace, load_space, parse_space
from study.search.tune_space import grid_size, grid_space, tune_space
from study.training.config import TrialConfig

DEFAULT = SPACES_DIR / "default.yaml"
HOMEWORK = SPACES_DIR / "homework.yaml"
HOMEWORK_DEEP = [256, 128, 64, 64, 64]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def space_of(params: dict[str, Any], fixed: dict[str, Any] | None = None,
             **top: Any) -> SearchSpace:
    return parse_space({"params": params, "fixed": fixed or {}, **top}, source="test.yaml")


def sample_optuna(space: SearchSpace, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Run the define-by-run function on `n` trials of a real (in-memory) Optuna study and
    return what it returns: the whole trial config."""
    fn = optuna_space(space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(fn(trial))
        study.tell(trial, 0.0)
    return out


def grid_configs(space: SearchSpace) -> list[dict[str, Any]]:
    """Expand `grid_space(space)` the way Ray's BasicVariantGenerator does."""
    return [config for _, config in generate_variants(grid_space(space))]


def assert_valid(config: dict[str, Any]) -> TrialConfig:
    """Every key a TrialConfig field and every value accepted by it."""
    return TrialConfig.from_dict(config, where="sampled config")


# --- the shipped spaces -----------------------------------------------------------------


def test_default_space_loads() -> None:
    space = load_space(DEFAULT)
    assert (space.metric, space.mode) == ("val_accuracy", "max")
    assert set(space.searched) == {"loss", "batch_size", "depth", "width", "dropout", "lr",
                                   "weight_decay", "image_size"}
    assert space.params["loss"].values == ("bce", "ce")
    assert (space.params["depth"].low, space.params["depth"].high) == (1, 5)
    assert (space.params["dropout"].low, space.params["dropout"].high) == (0.0, 0.7)
    lr = space.params["lr"]
    assert (lr.kind, lr.low, lr.high, lr.log) == ("loguniform", 1e-5, 1e-1, True)
    assert min(space.params["batch_size"].values) == 2
    assert max(space.params["batch_size"].values) == 256
    assert space.fixed["epochs"].value == 15


def test_homework_space_loads() -> None:
    space = load_space(HOMEWORK)
    assert (space.metric, space.mode) == ("val_accuracy", "max")
    assert space.searched == ["loss", "batch_size", "depth"]
    assert space.params["loss"].values == ("bce", "ce")
    assert space.params["batch_size"].values == (2, 16, 32, 128)
    assert space.params["depth"].values == (3, 5)
    assert dict(space.fixed["width"].table) == {3: 64, 5: tuple(HOMEWORK_DEEP)}
    lab = {name: p.value for name, p in space.fixed.items() if p.kind == "fixed"}
    assert lab == {"dropout": 0.5, "batchnorm": True, "optimizer": "adam", "lr": 1e-4,
                   "schedule": "cosine", "epochs": 30}
    assert grid_size(space) == 16


def test_homework_grid_expands_to_its_sixteen_arms() -> None:
    configs = grid_configs(load_space(HOMEWORK))
    assert len(configs) == 16
    arms = {(c["loss"], c["batch_size"], c["depth"]) for c in configs}
    assert arms == {(loss, bs, depth) for loss in ("bce", "ce") for bs in (2, 16, 32, 128)
                    for depth in (3, 5)}
    for c in configs:
        assert c["width"] == (64 if c["depth"] == 3 else HOMEWORK_DEEP)
        assert (c["dropout"], c["lr"], c["epochs"]) == (0.5, 1e-4, 30)
        cfg = assert_valid(c)
        assert cfg.depth == c["depth"]


def test_with_fixed_overrides_a_searched_parameter() -> None:
    space = load_space(DEFAULT).with_fixed(epochs=3, image_size=16)
    assert "image_size" not in space.searched
    assert space.fixed["image_size"].value == 16 and space.fixed["epochs"].value == 3
    with pytest.raises(StudyError, match="override epochs"):
        load_space(DEFAULT).with_fixed(epochs=0)


# --- invalid spaces: one StudyError naming the key --------------------------------------


@pytest.mark.parametrize(
    ("text", "match"),
    [
        # unknown parameter, in params and in fixed
        ("params:\n  momentum: {uniform: [0.0, 0.9]}\n", "params.momentum: unknown parameter"),
        ("fixed:\n  epoch: 3\n", "fixed.epoch: unknown parameter 'epoch'"),
        # low > high
        ("params:\n  dropout: {uniform: [0.6, 0.1]}\n",
         "params.dropout.uniform: low <= high must hold, got low=0.6, high=0.1"),
        ("params:\n  depth: {int: [5, 1]}\n", "params.depth.int: low <= high"),
        # empty choice
        ("params:\n  loss: {choice: []}\n", "params.loss.choice: must be a non-empty list"),
        ("params:\n  loss: {choice: bce}\n", "params.loss.choice: must be a non-empty list"),
        # non-positive log bound
        ("params:\n  lr: {loguniform: [0.0, 0.1]}\n",
         "params.lr.loguniform: log bounds must be > 0"),
        ("params:\n  weight_decay: {loguniform: [-1.0e-4, 1.0e-2]}\n",
         "params.weight_decay.loguniform: log bounds must be > 0"),
        ("params:\n  depth: {int: [0, 4], log: true}\n", "params.depth.int: log bounds"),
        # wrong type
        ("params:\n  batch_size: {choice: [a, b]}\n",
         "params.batch_size.choice: batch_size must be an integer"),
        ("params:\n  depth: {int: [1.5, 3]}\n", "params.depth.int: bound must be an integer"),
        ("params:\n  lr: {uniform: [low, 0.1]}\n", "params.lr.uniform: bound must be a finite"),
        ("params:\n  dropout: {uniform: [0.0, .nan]}\n", "params.dropout.uniform: bound must"),
        ("params:\n  batch_size: {loguniform: [2, 256]}\n",
         "params.batch_size.loguniform: batch_size must be an integer"),
        ("params:\n  dropout: {uniform: [0.0, 1.0]}\n",
         r"params.dropout.uniform: dropout must lie in \[0, 1\)"),
        ("params:\n  loss: {choice: [bce, mse]}\n", "params.loss.choice: loss must be one of"),
        ("params:\n  batchnorm: {choice: [1, 0]}\n", "params.batchnorm.choice: batchnorm must"),
        ("params:\n  depth: {int: [1, 5], step: 0}\n", "params.depth.step: must be an integer"),
        ("params:\n  dropout: {uniform: [0.1]}\n",
         r"params.dropout.uniform: must be \[low, high\]"),
        ("params:\n  dropout: {uniform: [0.1, 0.5], choice: [0.1]}\n",
         "params.dropout: expected exactly one of"),
        ("params:\n  dropout: {normal: [0.1, 0.5]}\n", "params.dropout: expected exactly one of"),
        ("params:\n  lr: {per_layer: {choice: [1, 2]}}\n",
         "params.lr: per_layer applies to width"),
        ("fixed:\n  epochs: {int: [1, 5]}\n", "fixed.epochs: fixed values cannot be int ranges"),
        ("fixed:\n  epochs: 0\n", "fixed.epochs: epochs must be an integer >= 1"),
        ("params: [loss, depth]\n", "params must be a mapping"),
        ("- just\n- a list\n", "a search space must be a mapping"),
        # unknown top-level key
        ("metric: val_accuracy\nparam:\n  loss: {choice: [bce, ce]}\n",
         "unknown top-level key 'param'"),
        # bad metric / mode (selection is on validation only)
        ("metric: test_accuracy\n", "metric must be one of val_accuracy, val_loss, val_auroc"),
        ("metric: val_accuracy\nmode: maximise\n", "mode must be max or min, got 'maximise'"),
        # by_depth missing a depth the space can draw
        ("params:\n  depth: {choice: [3, 5]}\nfixed:\n  width: {by_depth: {3: 64}}\n",
         "width.by_depth has no value for depth 5"),
        ("params:\n  depth: {int: [1, 3]}\nfixed:\n  dropout: {by_depth: {1: 0.1, 3: 0.3}}\n",
         "dropout.by_depth has no value for depth 2"),
        ("fixed:\n  depth: 2\n  width: {by_depth: {2: [64, 32, 16]}}\n",
         "fixed.width.by_depth.2: needs 2 widths"),
        # a list of widths fixes the depth, so it cannot go with a searched depth
        ("params:\n  depth: {int: [1, 3]}\n  width: {choice: [[64, 32], [32, 16]]}\n",
         "width lists fix the depth"),
        # searched and fixed at once
        ("params:\n  epochs: {choice: [3, 5]}\nfixed:\n  epochs: 3\n",
         "'epochs' is both searched"),
    ],
)
def test_invalid_space_is_refused_naming_the_key(tmp_path: Path, text: str, match: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(StudyError, match=match) as info:
        load_space(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("params:\n\tloss: {choice: [bce, ce]}\n", 2),  # a tab
        ("params:\n  loss: {choice: [bce, ce}\n", 2),  # an unclosed bracket
        ("metric: val_accuracy\nparams:\n  loss: {choice: [bce, ce]\n", 4),  # at its end
    ],
)
def test_bad_yaml_is_refused_naming_the_file_and_line(tmp_path: Path, text: str,
                                                      line: int) -> None:
    path = write(tmp_path, text)
    with pytest.raises(StudyError, match="not valid YAML") as info:
        load_space(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert f"line {line}" in message


def test_missing_space_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match="nope.yaml: cannot be read"):
        load_space(tmp_path / "nope.yaml")


def test_metric_and_mode_defaults() -> None:
    assert (parse_space({}).metric, parse_space({}).mode) == ("val_accuracy", "max")
    space = parse_space({"metric": "val_loss"})
    assert space.mode == "min"
    assert parse_space({"metric": "val_auroc", "mode": "max"}).mode == "max"


def test_several_objectives_and_constraints_are_read() -> None:
    space = parse_space({"metric": ["val_auroc", "val_sensitivity"], "mode": ["max", "max"],
                         "constraints": {"val_sensitivity": ">= 0.90", "val_loss": "<0.7"}})
    # the first objective is what Ray Tune's schedulers and the progress display judge
    assert (space.metric, space.mode) == ("val_auroc", "max")
    assert space.metrics == ["val_auroc", "val_sensitivity"] and space.modes == ["max", "max"]
    sens, loss = space.constraints
    assert (sens.metric, sens.op, sens.bound) == ("val_sensitivity", ">=", 0.9)
    assert (loss.metric, loss.op, loss.bound) == ("val_loss", "<", 0.7)
    # Optuna's convention: <= 0 is feasible, the distance to the bound otherwise
    assert sens.violation(0.8) == pytest.approx(0.1) and sens.violation(0.95) < 0
    assert loss.violation(0.9) == pytest.approx(0.2) and loss.violation(float("nan")) == np.inf
    assert sens.holds(0.9) and not sens.holds(0.89) and not loss.holds(0.7)
    assert not sens.holds(float("nan"))
    assert str(sens) == "val_sensitivity >= 0.9"
    # modes default per metric; overrides keep the objectives
    assert parse_space({"metric": ["val_auroc", "val_loss"]}).modes == ["max", "min"]
    assert space.with_fixed(epochs=2).metrics == space.metrics
    assert space.with_fixed(epochs=2).constraints == space.constraints


def test_a_single_metric_space_is_as_before() -> None:
    space = parse_space({"metric": "val_sensitivity", "mode": "max"})
    assert (space.metric, space.mode, space.objectives, space.constraints) == (
        "val_sensitivity", "max", (), ())
    assert space.metrics == ["val_sensitivity"] and space.modes == ["max"]
    assert parse_space({"metric": ["val_auroc"], "mode": ["min"]}).metric == "val_auroc"


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"metric": ["val_auroc", "test_auroc"]}, "metric must be one of .* got 'test_auroc'"),
        ({"metric": ["val_auroc", "val_loss"], "mode": ["max"]},
         r"mode must give one mode per metric \(2 for metric"),
        ({"metric": ["val_auroc", "val_loss"], "mode": "max"}, "one mode per metric"),
        ({"metric": "val_auroc", "mode": ["max"]}, "one mode per metric"),
        ({"metric": ["val_auroc", "val_loss"], "mode": ["max", "up"]},
         "mode must be max or min, got 'up'"),
        ({"metric": ["val_auroc", "val_auroc"]}, "metric must list distinct metrics"),
        ({"metric": []}, "metric must list distinct metrics"),
        ({"constraints": {"val_recall": ">= 0.9"}},
         "constraints.val_recall: unknown metric 'val_recall'"),
        ({"constraints": {"test_sensitivity": ">= 0.9"}}, "unknown metric 'test_sensitivity'"),
        ({"constraints": {"val_sensitivity": "=> 0.9"}},
         "constraints.val_sensitivity: bound must be an operator .* got '=> 0.9'"),
        ({"constraints": {"val_sensitivity": 0.9}}, "bound must be an operator .* got 0.9"),
        ({"constraints": {"val_sensitivity": ">= high"}}, "got '>= high'"),
        ({"constraints": {"val_sensitivity": "== 0.9"}}, "got '== 0.9'"),
        ({"constraints": ["val_sensitivity"]}, "constraints must map metrics to bounds"),
    ],
)
def test_bad_objectives_and_constraints_are_refused(raw: dict[str, Any], match: str) -> None:
    with pytest.raises(StudyError, match=match) as info:
        parse_space(raw, source="s.yaml")
    assert str(info.value).startswith("s.yaml: ") and "\n" not in str(info.value)


# --- Optuna (define-by-run) -------------------------------------------------------------


PER_LAYER = {
    "loss": {"choice": ["bce", "ce"]},
    "depth": {"int": [1, 4]},
    "width": {"per_layer": {"choice": [16, 32, 64]}},
    "dropout": {"uniform": [0.0, 0.5]},
    "lr": {"loguniform": [1e-4, 1e-2]},
}


def test_optuna_space_suggests_one_width_per_layer_after_depth() -> None:
    space = space_of(PER_LAYER, {"epochs": 3, "batchnorm": False})
    configs = sample_optuna(space, 40)
    depths = set()
    for c in configs:
        assert isinstance(c["width"], list)
        assert len(c["width"]) == c["depth"]
        assert set(c["width"]) <= {16, 32, 64}
        assert (c["epochs"], c["batchnorm"]) == (3, False)
        assert set(c) == {"loss", "depth", "width", "dropout", "lr", "epochs", "batchnorm"}
        assert_valid(c)
        depths.add(c["depth"])
    assert depths == {1, 2, 3, 4}


def test_optuna_space_records_per_layer_widths_as_optuna_params() -> None:
    space = space_of(PER_LAYER)
    fn = optuna_space(space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    trial = study.ask()
    returned = fn(trial)
    depth = trial.params["depth"]
    assert [trial.params[f"width_{i}"] for i in range(depth)] == returned["width"]
    assert {"loss", "depth", "dropout", "lr"} <= set(trial.params)
    assert 1e-4 <= trial.params["lr"] <= 1e-2


def test_optuna_space_per_layer_int_range() -> None:
    space = space_of({"depth": {"choice": [2, 3]},
                      "width": {"per_layer": {"int": [8, 12]}}})
    for c in sample_optuna(space, 20):
        assert len(c["width"]) == c["depth"]
        assert all(8 <= w <= 12 for w in c["width"])


def test_optuna_space_resolves_by_depth_and_returns_fixed_values() -> None:
    configs = sample_optuna(load_space(HOMEWORK), 30)
    assert {c["depth"] for c in configs} == {3, 5}
    for c in configs:
        assert c["width"] == (64 if c["depth"] == 3 else HOMEWORK_DEEP)
        assert (c["dropout"], c["lr"], c["epochs"], c["optimizer"]) == (0.5, 1e-4, 30, "adam")


def test_optuna_space_choice_of_width_lists() -> None:
    space = space_of({"width": {"choice": [[64, 32], [16, 16]]}}, {"depth": 2})
    configs = sample_optuna(space, 10)
    assert {tuple(c["width"]) for c in configs} == {(64, 32), (16, 16)}
    for c in configs:
        assert set(c) == {"width", "depth"}
        assert assert_valid(c).width in ((64, 32), (16, 16))


def test_optuna_space_pickles() -> None:
    fn = optuna_space(space_of(PER_LAYER, {"epochs": 3}))
    clone = pickle.loads(pickle.dumps(fn))
    sampler = optuna.samplers.RandomSampler(seed=3)
    a = optuna.create_study(sampler=sampler).ask()
    b = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3)).ask()
    assert fn(a) == clone(b)
    hw = pickle.loads(pickle.dumps(optuna_space(load_space(HOMEWORK))))
    assert hw(optuna.create_study().ask())["epochs"] == 30


# --- Ray Tune domains and grids ---------------------------------------------------------


def test_tune_space_samples_are_valid_configs() -> None:
    random.seed(0)
    np.random.seed(0)  # Ray's domains sample from numpy's global generator
    for path in (DEFAULT, HOMEWORK):
        space = load_space(path)
        configs = [c for _ in range(200) for _, c in generate_variants(tune_space(space))]
        for c in configs:
            cfg = assert_valid(c)
            if path == DEFAULT:
                assert 1 <= cfg.depth <= 5
                assert 1e-5 <= cfg.lr <= 1e-1 and 1e-6 <= cfg.weight_decay <= 1e-2
                assert 0.0 <= cfg.dropout <= 0.7
            else:
                assert cfg.width == (64 if cfg.depth == 3 else tuple(HOMEWORK_DEEP))
        if path == DEFAULT:
            assert {c["depth"] for c in configs} == {1, 2, 3, 4, 5}


def test_tune_space_per_layer_and_int_ranges() -> None:
    space = space_of({"depth": {"int": [1, 3]}, "width": {"per_layer": {"int": [4, 6]}},
                      "batch_size": {"int": [8, 32], "step": 8}})
    configs = [c for _ in range(30) for _, c in generate_variants(tune_space(space))]
    for c in configs:
        assert len(c["width"]) == c["depth"] and all(4 <= w <= 6 for w in c["width"])
        assert c["batch_size"] in (8, 16, 24, 32)
        assert_valid(c)
    assert {c["depth"] for c in configs} == {1, 2, 3}


def test_grid_space_counts_int_ranges_and_choices() -> None:
    space = space_of({"depth": {"int": [1, 3]}, "loss": {"choice": ["bce", "ce"]}},
                     {"width": {"by_depth": {1: 8, 2: [8, 4], 3: 16}}})
    configs = grid_configs(space)
    assert len(configs) == grid_size(space) == 6
    for c in configs:
        assert_valid(c)


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ({"dropout": {"uniform": [0.0, 0.5]}}, "params.dropout"),
        ({"lr": {"loguniform": [1e-4, 1e-2]}}, "params.lr"),
        ({"depth": {"int": [1, 3]}, "width": {"per_layer": {"choice": [8, 16]}}},
         "params.width"),
    ],
)
def test_grid_space_refuses_continuous_parameters(params: dict[str, Any], key: str) -> None:
    with pytest.raises(StudyError, match=f"{key}: grid search needs a choice or an int range"):
        grid_space(space_of(params))


def test_spaces_are_loaded_with_safe_load(tmp_path: Path) -> None:
    path = write(tmp_path, "params:\n  loss: !!python/name:os.system {choice: [bce]}\n")
    with pytest.raises(StudyError, match="not valid YAML"):
        load_space(path)
    # The raw document is kept as loaded, so study.json can record it.
    assert load_space(HOMEWORK).raw == yaml.safe_load(HOMEWORK.read_text())


def test_scientific_notation_without_a_dot_is_a_number(tmp_path: Path) -> None:
    # PyYAML (YAML 1.1) would read 1e-5 as the string '1e-5'.
    path = write(tmp_path, "params:\n  lr: {loguniform: [1e-5, 1E-1]}\n"
                           "  weight_decay: {choice: [0, 1e-4, 5.0e-3]}\n")
    space = load_space(path)
    assert (space.params["lr"].low, space.params["lr"].high) == (1e-5, 0.1)
    assert space.params["weight_decay"].values == (0, 1e-4, 5e-3)


def test_cnn_and_medmnist_spaces_sample_valid_configs_of_their_families() -> None:
    cnn = load_space(SPACES_DIR / "cnn.yaml")
    medmnist = load_space(SPACES_DIR / "medmnist.yaml")
    assert cnn.metric == medmnist.metric == "val_auroc"
    assert cnn.fixed["model"].value == "cnn" and "model" not in cnn.params
    assert {"augment", "class_weight", "kernel_size"} <= set(cnn.searched)
    assert medmnist.params["model"].values == ("mlp", "cnn")
    configs = [assert_valid(c) for c in sample_optuna(medmnist, 40)]
    assert {c.model for c in configs} == {"mlp", "cnn"}
    assert {c.class_weight for c in configs} == {"none", "balanced"}
    assert all(1 <= c.depth <= 4 and c.augment in ("none", "light") for c in configs)
    random.seed(0)
    np.random.seed(0)
    drawn = [assert_valid(c) for _ in range(60) for _, c in generate_variants(tune_space(cnn))]
    assert {c.model for c in drawn} == {"cnn"} and {c.augment for c in drawn} == {
        "none", "light", "strong"}
    assert all(2 <= c.depth <= 4 and c.kernel_size in (3, 5) for c in drawn)


@pytest.mark.parametrize(("text", "data_size", "match"), [
    ("params:\n  depth: {int: [2, 4]}\nfixed:\n  model: cnn\n", 8,
     r"params.depth: a CNN of depth 4 halves 8x8 images 4 times, to nothing; at most depth 3"),
    ("params:\n  model: {choice: [mlp, cnn]}\n  image_size: {choice: [8, 64]}\nfixed:\n"
     "  depth: 4\n", 64, r"fixed.depth: a CNN of depth 4 halves 8x8 images"),
])
def test_a_cnn_deeper_than_the_images_allow_is_refused(tmp_path: Path, text: str,
                                                      data_size: int, match: str) -> None:
    from study.search.space import fit_image_size

    space = load_space(write(tmp_path, text))
    with pytest.raises(StudyError, match=match):
        fit_image_size(space, data_size)
    if "image_size" not in text:
        assert fit_image_size(space, 16).params["depth"].high == 4  # 16x16 halves 4 times


def test_a_deep_mlp_is_not_bounded_by_the_image() -> None:
    from study.search.space import fit_image_size

    space = space_of({"depth": {"int": [1, 8]}, "model": {"choice": ["mlp"]}})
    assert fit_image_size(space, 8).params["depth"].high == 8
