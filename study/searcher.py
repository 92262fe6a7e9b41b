"""Ray Tune's OptunaSearch, told what an early-stopped trial means."""

from __future__ import annotations

import math

import optuna
from ray.tune.search.optuna import OptunaSearch

from study.ray_compat import optuna_trial_open, tell_optuna
from study.space import PARAM_NAMES


class StudyOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna a trial stopped early by the scheduler was PRUNED.

    Ray tells such a trial COMPLETE with its partial metric, so TPE would rank an epoch-3
    accuracy of a stopped trial against finished runs as if it were final. Told PRUNED (its
    intermediate values were reported every epoch), TPE ranks it below every completed trial,
    which is what the scheduler's decision means. A non-finite metric, or a diverged trial
    (whose NaN outputs still score a finite accuracy), is told as FAIL.
    A trial stacking several seeds (`repeats`) reports their mean, so Optuna judges a
    configuration by its mean over seeds; a diverged seed makes that mean NaN (FAIL).
    """

    def suggest(self, trial_id: str) -> dict | str | None:
        """Return the trial's config: config keys only, without Optuna's helper parameters.

        Ray merges the define-by-run function's return value over every name suggested to
        Optuna, so per-layer widths would also arrive as `width_0`, `width_1`, ... and a choice
        of width lists as `width_index`, which are not TrialConfig fields.
        """
        config = super().suggest(trial_id)
        if isinstance(config, dict):
            config = {k: v for k, v in config.items() if k in PARAM_NAMES or k.startswith("__")}
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        result = result or {}
        # Ray hands searchers the result flattened (`config/epochs`); accept the nested form too.
        planned = result.get("config/epochs", (result.get("config") or {}).get("epochs"))
        stopped_early = (
            not error and "epoch" in result and planned is not None
            and result["epoch"] < planned and "diverged" not in result
        )
        value = result.get(self.metric)
        bad_value = ((isinstance(value, float) and not math.isfinite(value))
                     or bool(result.get("diverged")))
        if (stopped_early or bad_value) and optuna_trial_open(self, trial_id):
            states = optuna.trial.TrialState
            tell_optuna(self, trial_id, states.PRUNED if stopped_early else states.FAIL)
            return
        super().on_trial_complete(trial_id, result=result or None, error=error)
