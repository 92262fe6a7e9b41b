"""More seeds on demand: a Ray Tune searcher that adds seeds to a grid's configurations until
each one's 95 % CI is narrow enough (`study run --repeats auto --target-ci W`).

Every configuration of the grid is an arm. Each starts with FIRST_SEEDS seeds; when all of an
arm's trials have finished, the arm gets one more seed while the 95 % t-interval half-width of
its `ci_metric` is wider than `target_ci` points and it has run fewer than `max_repeats` seeds.
When no arm wants another seed and none is running, `suggest` returns `Searcher.FINISHED` and
Ray Tune ends the study. Seeds are numbered from the study's `--seed` in every arm alike, so
arms are comparable seed by seed as under `--repeats N`.

The rule reads only each arm's spread, never which arm is ahead, so it chooses no
configuration; but an interval that stopped because it happened to be narrow covers a little
less often than 95 %, which is why the report states the rule beside it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher

from study.errors import StudyError
from study.seed_rule import CI_METRIC, Rule, half_width

STATE_VERSION = 1


@dataclass
class Arm:
    """One configuration of the grid and what its seeds gave so far."""

    config: dict[str, Any]
    values: dict[int, float] = field(default_factory=dict)  # seed -> finished metric value
    failed: list[int] = field(default_factory=list)  # seeds that errored, diverged or gave NaN
    running: dict[str, list[int]] = field(default_factory=dict)  # trial id -> its seeds

    @property
    def tries(self) -> int:
        return len(self.values) + len(self.failed)

    @property
    def running_seeds(self) -> int:
        return sum(len(s) for s in self.running.values())


def _seed_values(result: Mapping[str, Any], metric: str,
                 seeds: Sequence[int]) -> dict[int, float | None]:
    """The metric per seed from a trial's last result: one seed's `metric`, or, for a trial
    that trained several seeds at once, its `seed_metrics` (nested or as Ray flattens it)."""
    per_seed = (result.get("seed_metrics") or {}).get(metric)
    if per_seed is None:
        per_seed = result.get(f"seed_metrics/{metric}")
    if per_seed is not None and len(seeds) > 1:
        values = list(per_seed)
    else:
        values = [result.get(metric)] * len(seeds) if len(seeds) == 1 else [None] * len(seeds)
    out: dict[int, float | None] = {}
    for seed, value in zip(seeds, values, strict=False):
        ok = isinstance(value, (int, float)) and math.isfinite(value)
        out[seed] = float(value) if ok else None
    return out


class SeedsUntilNarrow(Searcher):
    """Ray Tune searcher over a fixed list of configurations that adds seeds to each until its
    CI half-width reaches the target or the cap (see the module docstring)."""

    CKPT_FILE_TMPL = "searcher-state-{}.json"  # JSON, never a pickle

    def __init__(self, configs: Sequence[Mapping[str, Any]], rule: Rule, first_seed: int = 0,
                 ci_metric: str = CI_METRIC, metric: str | None = None,
                 mode: str | None = None) -> None:
        super().__init__(metric=metric, mode=mode)
        if not configs:
            raise StudyError("--repeats auto needs at least one configuration in the grid")
        self.rule = rule
        self.first_seed = first_seed
        self.ci_metric = ci_metric
        self.arms = [Arm({k: v for k, v in c.items() if k != "seed"}) for c in configs]
        self._arm_of: dict[str, int] = {}  # trial id -> arm index

    # --- Ray Tune's Searcher API ----------------------------------------------------------

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        """The next (configuration, seed) for an arm that wants one; None while every arm
        that could still want one is waiting for running seeds; FINISHED when all are done."""
        waiting = False
        for index, arm in enumerate(self.arms):
            wants, _ = self.rule.decide(list(arm.values.values()), arm.tries, arm.running_seeds)
            if wants:
                seed = self.first_seed + arm.tries + arm.running_seeds
                arm.running[trial_id] = [seed]
                self._arm_of[trial_id] = index
                return {**arm.config, "seed": seed}
            waiting = waiting or arm.running_seeds > 0
        return None if waiting else Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        index = self._arm_of.pop(trial_id, None)
        if index is None:
            return
        arm = self.arms[index]
        seeds = arm.running.pop(trial_id, [])
        result = result or {}
        diverged = bool(result.get("diverged"))
        for seed, value in _seed_values(result, self.ci_metric, seeds).items():
            if error or diverged or value is None:
                arm.failed.append(seed)
            else:
                arm.values[seed] = value

    # --- state, as JSON -------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "rule": {"target_ci": self.rule.target_ci, "max_repeats": self.rule.max_repeats,
                     "first_seeds": self.rule.first_seeds},
            "first_seed": self.first_seed,
            "ci_metric": self.ci_metric,
            "arms": [{"config": a.config, "values": {str(s): v for s, v in a.values.items()},
                      "failed": a.failed, "running": a.running} for a in self.arms],
            "arm_of": self._arm_of,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        try:
            if state["version"] != STATE_VERSION:
                raise ValueError(f"version {state['version']!r}")
            rule = Rule(float(state["rule"]["target_ci"]), int(state["rule"]["max_repeats"]),
                        int(state["rule"]["first_seeds"]))
            arms = [Arm(dict(a["config"]), {int(s): float(v) for s, v in a["values"].items()},
                        [int(s) for s in a["failed"]],
                        {str(t): [int(s) for s in seeds] for t, seeds in a["running"].items()})
                    for a in state["arms"]]
            arm_of = {str(t): int(i) for t, i in state["arm_of"].items()}
            first_seed, ci_metric = int(state["first_seed"]), str(state["ci_metric"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StudyError(f"searcher state is not a seeds-on-demand state ({exc})") from None
        self.rule, self.arms, self._arm_of = rule, arms, arm_of
        self.first_seed, self.ci_metric = first_seed, ci_metric

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps(self.get_state()))

    def restore(self, checkpoint_path: str) -> None:
        try:
            state = json.loads(Path(checkpoint_path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StudyError(f"{checkpoint_path}: cannot be read as JSON ({exc})") from None
        if not isinstance(state, dict):
            raise StudyError(f"{checkpoint_path}: not a seeds-on-demand state")
        self.set_state(state)

    # --- for people -----------------------------------------------------------------------

    def standings(self) -> list[dict[str, Any]]:
        """One row per arm: its configuration, seeds, half-width and where it stands, why."""
        rows = []
        for arm in self.arms:
            values = list(arm.values.values())
            wants, why = self.rule.decide(values, arm.tries, arm.running_seeds)
            rows.append({"config": arm.config, "n": len(values), "tries": arm.tries,
                         "half_width": half_width(values), "done": not wants
                         and not arm.running_seeds, "why": why})
        return rows


def grid_configs(param_space: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every configuration of a grid `param_space` (grid_search and sample_from resolved the
    way Ray's own grid search resolves them)."""
    from ray.tune.search.variant_generator import generate_variants

    return [dict(config) for _, config in generate_variants(dict(param_space))]
