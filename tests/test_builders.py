"""`study.engine.builders`: the space, searcher and scheduler a study hands Ray (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
from ray.tune.schedulers import (
    ASHAScheduler,
    FIFOScheduler,
    MedianStoppingRule,
    PopulationBasedTraining,
)
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

from study.engine.builders import (
    ClipToBounds,
    budget_epochs,
    build_search,
    expected_trials,
    make_scheduler,
    pbt_interval,
    prepared_space,
)
from study.engine.options import RunOptions, resolved
from study.errors import StudyError
from study.search.tune_space import grid_size

SPACE = """\
metric: val_accuracy
mode: max
params:
  loss: {choice: [bce, ce]}
  depth: {choice: [1, 2]}
  lr: {loguniform: [1.0e-4, 1.0e-2]}
fixed:
  epochs: 9
"""


@pytest.fixture
def space_file(tmp_path: Path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    return path


def _opts(space_file: Path, **kwargs: object) -> RunOptions:
    return resolved(RunOptions(space=str(space_file), **kwargs))


def test_prepared_space_applies_the_overrides_and_the_seed(space_file: Path) -> None:
    space = prepared_space(_opts(space_file, max_epochs=4, image_size=16, seed=7))
    assert budget_epochs(space) == 4
    assert space.fixed["image_size"].value == 16 and space.fixed["seed"].value == 7


def test_a_searched_epochs_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(SPACE.replace("fixed:\n  epochs: 9\n", "  epochs: {choice: [3, 9]}\n"))
    with pytest.raises(StudyError, match="epochs must be fixed"):
        budget_epochs(prepared_space(_opts(path)))


@pytest.mark.parametrize(("scheduler", "kind"), [
    ("asha", ASHAScheduler), ("hyperband", ASHAScheduler), ("median", MedianStoppingRule),
    ("pbt", PopulationBasedTraining), ("fifo", FIFOScheduler),
])
def test_make_scheduler_builds_the_one_asked_for(space_file: Path, scheduler: str,
                                                 kind: type) -> None:
    opts = _opts(space_file, scheduler=scheduler)
    space = prepared_space(opts)
    assert isinstance(make_scheduler(opts, space, budget_epochs(space)), kind)


def test_grid_gets_fifo_by_default_from_the_api_as_from_the_cli(space_file: Path) -> None:
    opts = _opts(space_file, search="grid")
    space = prepared_space(opts)
    assert isinstance(make_scheduler(opts, space, 9), FIFOScheduler)


def test_pbt_explores_within_the_space_bounds(space_file: Path) -> None:
    opts = _opts(space_file, scheduler="pbt")
    space = prepared_space(opts)
    scheduler = make_scheduler(opts, space, 10)
    assert pbt_interval(10) == 2
    clip = scheduler._custom_explore_fn
    assert isinstance(clip, ClipToBounds)
    assert clip({"lr": 1.0, "dropout": 1.2}) == {"lr": 1e-2, "dropout": 0.7}


def test_optuna_search_is_limited_to_the_slots(space_file: Path) -> None:
    opts = _opts(space_file, num_samples=6)
    search, param_space, n = build_search(opts, prepared_space(opts), slots=3)
    assert isinstance(search, ConcurrencyLimiter) and search.max_concurrent == 3
    assert (param_space, n) == ({}, 6)


def test_optuna_repeats_stack_the_seeds_of_a_configuration_in_one_trial(
        space_file: Path) -> None:
    opts = _opts(space_file, num_samples=4, repeats=3, max_concurrent=2)
    space = prepared_space(opts)
    search, _, n = build_search(opts, space, slots=8)
    assert search.max_concurrent == 2 and space.fixed["repeats"].value == 3
    assert n == expected_trials(opts, space) == 4


def test_grid_search_runs_every_point(tmp_path: Path) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text(SPACE.replace("lr: {loguniform: [1.0e-4, 1.0e-2]}", "lr: {choice: [0.1]}"))
    opts = _opts(path, search="grid")
    space = prepared_space(opts)
    search, param_space, n = build_search(opts, space, slots=2)
    assert isinstance(search, BasicVariantGenerator) and n == 1
    assert set(param_space) >= {"loss", "depth", "lr"}
    assert expected_trials(opts, space) == grid_size(space) == 4
