"""What Ray Tune is handed for a study: the prepared space, the searcher and the scheduler.

metric and mode are set in one place, the `TuneConfig` built by `study.engine.run`; schedulers
inherit them from there. Ray and Optuna are imported when a builder is called.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study.engine.options import RunOptions
from study.errors import StudyError
from study.search.optuna_space import optuna_space
from study.search.seed_rule import AUTO, Rule
from study.search.space import SearchSpace, load_space, space_path
from study.search.tune_space import grid_size, grid_space, tune_space

PBT_MUTATIONS = {"lr": ("loguniform", 1e-5, 1e-1), "dropout": ("uniform", 0.0, 0.7),
                 "weight_decay": ("loguniform", 1e-6, 1e-2)}


def prepared_space(opts: RunOptions) -> SearchSpace:
    """Load `--space` and apply `--max-epochs` / `--image-size`, the trial seed and
    `--repeats` (every trial trains seeds seed ... seed + repeats - 1, stacked in one model).
    """
    space = load_space(space_path(opts.space))
    overrides: dict[str, Any] = {}
    if opts.max_epochs is not None:
        overrides["epochs"] = opts.max_epochs
    if opts.image_size is not None:
        overrides["image_size"] = opts.image_size
    if "seed" not in space.params and "seed" not in space.fixed:
        overrides["seed"] = opts.seed
    in_space = "repeats" in space.params or "repeats" in space.fixed
    # The flag wins; a space's own `repeats` stands alone; under `--repeats auto` the
    # seeds-on-demand searcher sets each trial's repeats itself.
    if opts.repeats != AUTO and (opts.repeats != 1 or not in_space):
        overrides["repeats"] = opts.repeats
    return space.with_fixed(**overrides)


def budget_epochs(space: SearchSpace) -> int:
    """The epochs every trial trains at most (schedulers need a fixed budget)."""
    p = space.fixed.get("epochs") or space.params.get("epochs")
    if p is None:
        from study.training.config import TrialConfig

        return TrialConfig().epochs
    if p.kind != "fixed":
        raise StudyError(f"{space.source}: epochs must be fixed (schedulers need a budget)")
    return int(p.value)


def pbt_interval(epochs: int) -> int:
    """Epochs between PBT perturbations (and so between checkpoints under PBT)."""
    return max(1, epochs // 5)


def make_scheduler(opts: RunOptions, space: SearchSpace, epochs: int) -> Any:
    """Return the trial scheduler for resolved options (metric/mode come from TuneConfig)."""
    from ray import tune
    from ray.tune.schedulers import (
        ASHAScheduler,
        FIFOScheduler,
        MedianStoppingRule,
        PopulationBasedTraining,
    )

    grace = max(1, epochs // 5)
    if opts.scheduler == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=grace,
                             reduction_factor=3)
    if opts.scheduler == "hyperband":
        # Asynchronous Hyperband: ASHA over Hyperband's brackets (Li et al., 2020). Ray's
        # synchronous HyperBandScheduler pauses trials at its milestones and, with fewer trials
        # than its brackets hold, ends the study with some of them still PAUSED
        # (ray-project/ray#37605), so `study run` reported it unfinished.
        return ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=1,
                             reduction_factor=3, brackets=int(math.log(epochs, 3)) + 1)
    if opts.scheduler == "median":
        return MedianStoppingRule(time_attr="training_iteration", grace_period=grace,
                                  min_samples_required=3)
    if opts.scheduler == "pbt":
        mutations, bounds = {}, []
        for name, (kind, low, high) in PBT_MUTATIONS.items():
            p = space.params.get(name)
            if p is not None and p.kind in ("uniform", "loguniform"):
                kind, low, high = p.kind, p.low, p.high
            mutations[name] = (tune.loguniform(low, high) if kind == "loguniform"
                               else tune.uniform(low, high))
            bounds.append((name, low, high))
        return PopulationBasedTraining(time_attr="training_iteration",
                                       perturbation_interval=pbt_interval(epochs),
                                       hyperparam_mutations=mutations, quantile_fraction=0.25,
                                       custom_explore_fn=ClipToBounds(tuple(bounds)))
    return FIFOScheduler()


@dataclass(frozen=True)
class ClipToBounds:
    """PBT's explore step multiplies a value by 0.8 or 1.2 without bounds; keep it in its range.

    Unclipped, a dropout of 0.7 reaches 1.008 after two steps up and the trial fails.
    """

    bounds: tuple[tuple[str, float, float], ...]  # (name, low, high)

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        for name, low, high in self.bounds:
            if isinstance(config.get(name), float):
                config[name] = min(max(config[name], low), high)
        return config


def sampler_of(opts: RunOptions) -> dict[str, Any] | None:
    """The settings of the Optuna sampler that `opts` (resolved) search with, every one
    written out (study.json records them); None for a search without Optuna."""
    from study.search.searcher import sampler_settings

    if opts.search != "optuna" or opts.num_samples is None:
        return None
    startup = max(4, min(10, opts.num_samples // 3))
    return sampler_settings(opts.sampler, opts.seed, startup)


def optuna_searcher(space: SearchSpace, opts: RunOptions,
                    storage_file: Path | None = None) -> Any:
    """Return the Optuna searcher of a study, its sampler (`--sampler`) built from the
    settings `sampler_of` writes out.

    With `storage_file`, the Optuna study is kept in that file as it runs (study name: the
    experiment's name), where optuna-dashboard can watch it.
    """
    import optuna

    from study.search.searcher import StudyOptunaSearch, live_storage, make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings = sampler_of(opts)
    assert settings is not None, "an Optuna searcher for a search without Optuna"
    if storage_file is not None and storage_file.is_file():
        # Continuing a study kept in the file: the sampler learns from its trials, and draws
        # a random stream of its own rather than the first session's again.
        settings["seed"] += len(optuna.load_study(study_name=opts.name,
                                                  storage=live_storage(storage_file)).trials)
    # Ray never hands TuneConfig's metric/mode to a searcher built with a define-by-run space
    # (it has no param_space to pass), so OptunaSearch takes them from the same SearchSpace:
    # every objective (lists: a multi-objective Optuna study); TuneConfig, the schedulers and
    # the progress display judge the first only. Constraints are set on each told trial.
    several = len(space.metrics) > 1
    return StudyOptunaSearch(space=optuna_space(space), sampler=make_sampler(settings),
                             metric=space.metrics if several else space.metric,
                             mode=space.modes if several else space.mode,
                             storage_file=storage_file, study_name=opts.name,
                             constraints=space.constraints)


def build_search(opts: RunOptions, space: SearchSpace, slots: int,
                 storage_file: Path | None = None) -> tuple[Any, dict[str, Any], int]:
    """Return (search algorithm, param_space, num_samples) for the Tuner, from resolved options.

    `slots` is how many trials the cluster runs at once: Optuna proposes no more than that
    ahead of the results unless `--max-concurrent` says otherwise.
    """
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    # Repeats need no searcher of their own: every configuration is one trial whose config
    # holds `repeats` (prepared_space), and it reports the seed-mean of each metric, which is
    # what Optuna and the scheduler judge.
    if opts.repeats == AUTO:
        return seeds_on_demand(opts, space), {}, -1  # the searcher says when it is done
    if opts.search == "optuna":
        searcher = optuna_searcher(space, opts, storage_file)
        limit = opts.max_concurrent or max(slots, 1)
        return ConcurrencyLimiter(searcher, max_concurrent=limit), {}, opts.num_samples
    param_space = grid_space(space) if opts.search == "grid" else tune_space(space)
    generator = BasicVariantGenerator(random_state=opts.seed, constant_grid_search=True,
                                      max_concurrent=opts.max_concurrent or 0)
    return generator, param_space, opts.num_samples


def seeds_on_demand(opts: RunOptions, space: SearchSpace) -> Any:
    """The searcher of `--repeats auto`: every configuration of the grid, with seeds added
    until its CI half-width is at most `--target-ci` or it has `--max-repeats` seeds."""
    from study.search.adaptive import SeedsUntilNarrow, grid_configs

    assert opts.target_ci is not None  # check_options refuses auto without it
    return SeedsUntilNarrow(grid_configs(grid_space(space)),
                            Rule(opts.target_ci, opts.max_repeats), first_seed=opts.seed,
                            stacked=True, metric=space.metric, mode=space.mode)


def expected_trials(opts: RunOptions, space: SearchSpace) -> int:
    """Number of trials a study of resolved options runs (`--repeats auto`: at least)."""
    if opts.repeats == AUTO:
        return grid_size(space)  # each configuration's first seeds train as one trial
    if opts.search == "grid":
        return grid_size(space) * opts.num_samples
    return opts.num_samples
