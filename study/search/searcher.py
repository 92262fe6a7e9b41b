"""Ray Tune's OptunaSearch, told what an early-stopped trial means."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from study.core.atomic_fs import note_refused_write
from study.core.names import SAMPLERS
from study.core.ray_compat import optuna_trial, optuna_trial_open, tell_optuna
from study.search.space import PARAM_NAMES, Constraint


class StudyOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna a trial stopped early by the scheduler was PRUNED.

    Ray tells such a trial COMPLETE with its partial metric, so TPE would rank an epoch-3
    accuracy of a stopped trial against finished runs as if it were final. Told PRUNED (its
    intermediate values were reported every epoch), TPE ranks it below every completed trial,
    which is what the scheduler's decision means. A non-finite metric, or a diverged trial
    (whose NaN outputs still score a finite accuracy), is told as FAIL.
    A trial stacking several seeds (`repeats`) reports their mean, so Optuna judges a
    configuration by its mean over seeds; a diverged seed makes that mean NaN (FAIL).

    With `storage_file`, the Optuna study lives in that file as the search goes (`live_storage`:
    an Optuna journal, or SQLite for a `.db`; `optuna-dashboard <file>` shows it live) under
    `study_name`; a searcher built on a file that already holds the study continues it, every
    earlier trial seen by TPE.
    Each Optuna trial carries the Ray trial id as its user attribute `trial_id`.

    With a list of metrics (and modes) the Optuna study is multi-objective. With
    `constraints`, each trial's constraint values are set on it (`Trial.set_constraint`, one
    per constraint, named as written: `val_sensitivity >= 0.9`; <= 0 is feasible) before it is
    told, where TPE and GP learn the feasible region from (Optuna 5 deprecates the samplers'
    `constraints_func` for this). A trial whose objective or constrained metric is not finite
    is told as FAIL.
    """

    def __init__(self, *args: Any, storage_file: str | Path | None = None,
                 study_name: str | None = None, constraints: tuple[Constraint, ...] = (),
                 **kwargs: Any) -> None:
        self.study_constraints = tuple(constraints)
        if storage_file is not None:
            kwargs["storage"] = live_storage(storage_file)
            kwargs["study_name"] = study_name or Path(storage_file).resolve().parent.name
        super().__init__(*args, **kwargs)

    def suggest(self, trial_id: str) -> dict | str | None:
        """Return the trial's config: config keys only, without Optuna's helper parameters.

        Ray merges the define-by-run function's return value over every name suggested to
        Optuna, so per-layer widths would also arrive as `width_0`, `width_1`, ... and a choice
        of width lists as `width_index`, which are not TrialConfig fields. Where the live
        storage refuses the write (`_refused`), no trial is suggested for now.
        """
        try:
            config = super().suggest(trial_id)
        except OSError as exc:
            _refused(exc)
            return None
        ot_trial = optuna_trial(self, trial_id)
        if ot_trial is not None and "trial_id" not in ot_trial.user_attrs:
            ot_trial.set_user_attr("trial_id", trial_id)
        if isinstance(config, dict):
            config = {k: v for k, v in config.items() if k in PARAM_NAMES or k.startswith("__")}
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # A trial resumed from its checkpoint reports again the epochs after it, which Optuna
        # already holds; it keeps the first value and warns about each: expected, so not shown.
        # After a killed driver, the live storage may hold a trial as finished that the
        # restored searcher state (saved earlier) still has running: its results are known.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The reported value is ignored",
                                    category=UserWarning)
            try:
                super().on_trial_result(trial_id, result)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass
            except OSError as exc:
                _refused(exc)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        try:
            self._complete(trial_id, result, error)
        except OSError as exc:
            _refused(exc)

    def _complete(self, trial_id: str, result: dict | None, error: bool) -> None:
        result = result or {}
        # Ray hands searchers the result flattened (`config/epochs`); accept the nested form too.
        planned = result.get("config/epochs", (result.get("config") or {}).get("epochs"))
        stopped_early = (
            not error and "epoch" in result and planned is not None
            and result["epoch"] < planned and "diverged" not in result
        )
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        values = [result.get(m) for m in [*metrics, *(c.metric for c in self.study_constraints)]]
        bad_value = (any(isinstance(v, float) and not math.isfinite(v) for v in values)
                     or bool(result.get("diverged")))
        ot_trial = optuna_trial(self, trial_id)
        if self.study_constraints and result and not bad_value and ot_trial is not None \
                and optuna_trial_open(self, trial_id):
            for c in self.study_constraints:
                ot_trial.set_constraint(str(c), c.violation(_number(result.get(c.metric))))
        if (stopped_early or bad_value) and optuna_trial_open(self, trial_id):
            states = optuna.trial.TrialState
            tell_optuna(self, trial_id, states.PRUNED if stopped_early else states.FAIL)
            return
        super().on_trial_complete(trial_id, result=result or None, error=error)


def _refused(exc: OSError) -> None:
    """The live storage refused a write (a full disk, a folder made read-only): kept with the
    storage path's refused writes, which stop the study (`study.engine.storage_faults`);
    raised in Ray's run loop it would end the study with a traceback instead."""
    note_refused_write(str(exc.filename or "the Optuna storage"), exc)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan


def live_storage(path: str | Path) -> optuna.storages.BaseStorage:
    """The Optuna storage in `path`: SQLite for a `.db` file, else an Optuna journal file (each
    call an appended line: cheap enough to write every epoch of every trial)."""
    if Path(path).suffix == ".db":
        return optuna.storages.RDBStorage(storage_url(path))
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(Path(path).resolve())))


def storage_url(path: str | Path) -> str:
    """The SQLAlchemy URL of an SQLite file, as Optuna and optuna-dashboard take it."""
    return f"sqlite:///{Path(path).resolve()}"


def sampler_settings(name: str, seed: int, n_startup_trials: int) -> dict[str, Any]:
    """Every setting of the sampler `name` that a study's meaning depends on, written out (the
    defaults of TPE changed in Optuna 5.0: multivariate, constant liar), so that study.json
    says what was run and `make_sampler` builds the same under a later Optuna."""
    if name == "tpe":
        return {"sampler": "TPESampler", "seed": seed, "n_startup_trials": n_startup_trials,
                "multivariate": True, "group": True, "constant_liar": True,
                "n_ei_candidates": 24, "optuna": optuna.__version__}
    if name == "gp":
        return {"sampler": "GPSampler", "seed": seed, "n_startup_trials": n_startup_trials,
                "deterministic_objective": False, "independent_sampler": "RandomSampler",
                "optuna": optuna.__version__}
    if name == "random":
        return {"sampler": "RandomSampler", "seed": seed, "optuna": optuna.__version__}
    raise ValueError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}")


def make_sampler(settings: dict[str, Any]) -> optuna.samplers.BaseSampler:
    """The sampler that `settings` (from `sampler_settings`) describe. Optuna marks TPE's
    multivariate, group and constant-liar options experimental and warns on every run; they
    are chosen on purpose here, so that warning is not shown."""
    kind, seed = settings["sampler"], settings["seed"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if kind == "TPESampler":
            return optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=settings["n_startup_trials"],
                multivariate=settings["multivariate"], group=settings["group"],
                constant_liar=settings["constant_liar"],
                n_ei_candidates=settings["n_ei_candidates"])
        if kind == "GPSampler":
            # conditional parameters (per-layer widths) fall outside the GP's joint space and
            # are drawn at random, as `independent_sampler` says; that is expected, not news
            return optuna.samplers.GPSampler(
                seed=seed, n_startup_trials=settings["n_startup_trials"],
                deterministic_objective=settings["deterministic_objective"],
                independent_sampler=optuna.samplers.RandomSampler(seed=seed),
                warn_independent_sampling=False)
        if kind == "RandomSampler":
            return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {kind!r}")


def tpe_sampler(seed: int, n_startup_trials: int) -> optuna.samplers.TPESampler:
    """TPE as studies use it: multivariate and grouped, with the constant liar for parallel
    trials (`sampler_settings("tpe", ...)`)."""
    sampler = make_sampler(sampler_settings("tpe", seed, n_startup_trials))
    assert isinstance(sampler, optuna.samplers.TPESampler)
    return sampler
