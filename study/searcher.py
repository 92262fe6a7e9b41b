"""Ray Tune's OptunaSearch, told what an early-stopped trial means."""

from __future__ import annotations

import math

import optuna
from ray.tune.search.optuna import OptunaSearch


class StudyOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna a trial stopped early by the scheduler was PRUNED.

    Ray tells such a trial COMPLETE with its partial metric, so TPE would rank an epoch-3
    accuracy of a stopped trial against finished runs as if it were final. Told PRUNED (its
    intermediate values were reported every epoch), TPE ranks it below every completed trial,
    which is what the scheduler's decision means. A non-finite metric is told as FAIL.
    Under `Repeater`, Optuna is told the mean over repeats and this check does not apply.
    """

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        config = (result or {}).get("config") or {}
        stopped_early = (
            not error and result is not None and "epoch" in result and "epochs" in config
            and result["epoch"] < config["epochs"] and "diverged" not in result
        )
        value = (result or {}).get(self.metric)
        bad_value = isinstance(value, float) and not math.isfinite(value)
        if (stopped_early or bad_value) and trial_id in self._ot_trials \
                and trial_id not in self._completed_trials:
            state = optuna.trial.TrialState.PRUNED if stopped_early else optuna.trial.TrialState.FAIL
            self._ot_study.tell(self._ot_trials[trial_id], state=state)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result=result, error=error)
