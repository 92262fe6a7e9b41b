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
from study.search.seed_rule import CI_METRIC, Rule, half_width

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


def _per_seed(result: Mapping[str, Any], metric: str) -> list[Any] | None:
    """A metric's per-seed list from a trial's `seed_metrics`, nested or as Ray flattens it."""
    nested = (result.get("seed_metrics") or {}).get(metric)
    return list(nested) if nested is not None else result.get(f"seed_metrics/{metric}")


def _seed_values(result: Mapping[str, Any], metric: str,
                 seeds: Sequence[int]) -> dict[int, float | None]:
    """The metric per seed from a trial's last result (None: failed or diverged).

    A trial that trained several seeds at once reports each seed's values in `seed_metrics`
    (and per-seed `diverged` flags there); a one-seed trial may report only `metric`.
    """
    values = _per_seed(result, metric)
    if values is None or len(values) != len(seeds):
        values = [result.get(metric)] * len(seeds) if len(seeds) == 1 else [None] * len(seeds)
    diverged = _per_seed(result, "diverged")
    if diverged is None or len(diverged) != len(seeds):
        diverged = [result.get("diverged")] * len(seeds)
    out: dict[int, float | None] = {}
    for seed, value, bad in zip(seeds, values, diverged, strict=True):
        ok = isinstance(value, (int, float)) and math.isfinite(value) and not bad
        out[seed] = float(value) if ok else None
    return out


class SeedsUntilNarrow(Searcher):
    """Ray Tune searcher over a fixed list of configurations that adds seeds to each until its
    CI half-width reaches the target or the cap (see the module docstring)."""

    CKPT_FILE_TMPL = "searcher-state-{}.json"  # JSON, never a pickle

    def __init__(self, configs: Sequence[Mapping[str, Any]], rule: Rule, first_seed: int = 0,
                 ci_metric: str = CI_METRIC, stacked: bool = False, metric: str | None = None,
                 mode: str | None = None) -> None:
        """`stacked`: trials train several seeds at once (a `repeats` config key); an arm's
        first seeds then go out as one trial, and each later seed as a trial of its own."""
        super().__init__(metric=metric, mode=mode)
        self.stacked = stacked
        if not configs:
            raise StudyError("--repeats auto needs at least one configuration in the grid")
        self.rule = rule
        self.first_seed = first_seed
        self.ci_metric = ci_metric
        self.arms = [Arm({k: v for k, v in c.items() if k not in ("seed", "repeats")})
                     for c in configs]
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
                count = self.rule.start if self.stacked and seed == self.first_seed else 1
                arm.running[trial_id] = list(range(seed, seed + count))
                self._arm_of[trial_id] = index
                return {**arm.config, "seed": seed, **({"repeats": count} if self.stacked
                                                        else {})}
            waiting = waiting or arm.running_seeds > 0
        return None if waiting else Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        index = self._arm_of.pop(trial_id, None)
        if index is None:
            return
        arm = self.arms[index]
        seeds = arm.running.pop(trial_id, [])
        for seed, value in _seed_values(result or {}, self.ci_metric, seeds).items():
            if error or value is None:
                arm.failed.append(seed)
            else:
                arm.values[seed] = value

    # --- state, as JSON -------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "rule": self.rule.to_dict(),
            "first_seed": self.first_seed,
            "ci_metric": self.ci_metric,
            "stacked": self.stacked,
            "arms": [{"config": a.config, "values": {str(s): v for s, v in a.values.items()},
                      "failed": a.failed, "running": a.running} for a in self.arms],
            "arm_of": self._arm_of,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        try:
            if state["version"] != STATE_VERSION:
                raise ValueError(f"version {state['version']!r}")
            rule = Rule.from_dict(state["rule"])
            arms = [Arm(dict(a["config"]), {int(s): float(v) for s, v in a["values"].items()},
                        [int(s) for s in a["failed"]],
                        {str(t): [int(s) for s in seeds] for t, seeds in a["running"].items()})
                    for a in state["arms"]]
            arm_of = {str(t): int(i) for t, i in state["arm_of"].items()}
            first_seed, ci_metric = int(state["first_seed"]), str(state["ci_metric"])
            stacked = bool(state["stacked"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StudyError(f"searcher state is not a seeds-on-demand state ({exc})") from None
        self.rule, self.arms, self._arm_of = rule, arms, arm_of
        self.first_seed, self.ci_metric, self.stacked = first_seed, ci_metric, stacked

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
