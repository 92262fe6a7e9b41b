"""The stopping rule of `study run --repeats auto`: when an arm (one configuration) of a grid
has seeds enough. Pure: the searcher (search.adaptive) applies it while the study runs, and the
report applies it again to the results on disk to say where each arm stopped and why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from study.errors import StudyError

FIRST_SEEDS = 3  # with 2 seeds the t interval (t = 12.7) is too erratic to judge an arm by
DEFAULT_MAX_REPEATS = 10
CI_METRIC = "test_accuracy"  # the metric whose CI the report's comparisons show


def half_width(values: Sequence[float], confidence: float = 0.95) -> float:
    """The t-interval half-width of the mean of `values` (the report's CI); NaN for n < 2."""
    import numpy as np
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return math.nan
    return float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / len(x) ** 0.5)


@dataclass(frozen=True)
class Rule:
    """The stopping rule: seeds to start with, the target half-width and the cap."""

    target_ci: float  # points: an arm is done when its 95 % CI half-width is at most this
    max_repeats: int = DEFAULT_MAX_REPEATS  # seeds (tries) per arm at most
    first_seeds: int = FIRST_SEEDS  # seeds every arm gets before it is judged

    def __post_init__(self) -> None:
        if not (math.isfinite(self.target_ci) and self.target_ci > 0):
            raise StudyError(f"--target-ci must be a number > 0, got {self.target_ci:g}")
        if self.max_repeats < 2:
            raise StudyError(f"--max-repeats must be >= 2 (a CI needs two seeds), got "
                             f"{self.max_repeats}")

    def to_dict(self, metric: str = CI_METRIC) -> dict[str, object]:
        """The rule as study.json and the searcher's saved state keep it, with the `metric`
        whose CI it judges."""
        return {"target_ci": self.target_ci, "max_repeats": self.max_repeats,
                "first_seeds": self.first_seeds, "metric": metric}

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> Rule:
        """The rule `to_dict` wrote (a missing `first_seeds` is the default)."""
        return cls(float(values["target_ci"]), int(values["max_repeats"]),  # type: ignore[arg-type]
                   int(values.get("first_seeds", FIRST_SEEDS)))  # type: ignore[arg-type]

    @property
    def start(self) -> int:
        return min(self.first_seeds, self.max_repeats)

    def describe(self) -> str:
        """The rule in one sentence, for the report."""
        return (f"every configuration started with {self.start} seeds; while the 95 % CI "
                f"half-width of its test accuracy was above {self.target_ci:g} points, it got "
                f"one more seed, up to {self.max_repeats} seeds (failed or diverged seeds "
                "count towards the cap)")

    def decide(self, values: Sequence[float], tries: int, running: int) -> tuple[bool, str]:
        """Return (wants another seed now, why the arm stands where it does).

        `values`: the arm's finished, finite metric values; `tries`: seeds finished or failed;
        `running`: seeds still training.
        """
        started = tries + running
        hw = half_width(values)
        if started < self.start:
            return True, f"starting: {started} of {self.start} first seeds"
        if running:
            return False, f"waiting for {running} running seed(s)"
        if len(values) >= 2 and hw <= self.target_ci:
            if hw == 0:
                return False, (f"stopped: every one of its {len(values)} seeds scored the same "
                               "(no spread, so no CI to speak of)")
            return False, (f"stopped: half-width {hw:.2f} <= target {self.target_ci:g} at "
                           f"{len(values)} seeds")
        if tries >= self.max_repeats:
            width = f"half-width {hw:.2f}" if math.isfinite(hw) else "no CI"
            return False, (f"stopped at the cap of {self.max_repeats} seeds ({width} > target "
                           f"{self.target_ci:g}"
                           + (f"; {tries - len(values)} failed" if tries > len(values) else "")
                           + ")")
        width = f"half-width {hw:.2f}" if math.isfinite(hw) else "fewer than 2 usable seeds"
        return True, f"adding a seed: {width} > target {self.target_ci:g}"


AUTO = "auto"  # `--repeats auto`: seeds on demand
SEEDS_ON_DEMAND = "seeds_on_demand"  # study.json key: the rule, for the report to restate


def parse_repeats(text: str) -> int | str:
    """`--repeats`: a number of seeds, or `auto` (seeds on demand, with `--target-ci`)."""
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        return int(text)
    except ValueError:
        raise StudyError(f"--repeats must be a whole number or 'auto', got {text!r}") from None
