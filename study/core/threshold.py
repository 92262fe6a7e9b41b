"""The operating-threshold rule: how a run's decision threshold on P(pneumonia) is chosen.

`--threshold` takes a fixed threshold (`0.5`, the trials' own rule and the default) or a rule
applied to each run's validation scores, never its test scores: `youden` (the threshold that
maximises sensitivity + specificity - 1), `sensitivity:S` (the highest threshold whose
sensitivity is at least S, so the best specificity that keeps it) or `specificity:S` (the
lowest threshold whose specificity is at least S). The report applies the chosen threshold to
the run's test scores (analysis.clinical).
"""

from __future__ import annotations

from typing import NamedTuple

RULE_HELP = "youden, sensitivity:S, specificity:S (S between 0 and 1) or a threshold in (0, 1)"


class ThresholdRule(NamedTuple):
    kind: str  # "fixed", "youden", "sensitivity" or "specificity"
    value: float | None  # the threshold (fixed) or the target rate; None for youden

    def __str__(self) -> str:
        if self.kind == "fixed":
            return f"{self.value:g}"
        return self.kind if self.value is None else f"{self.kind}:{self.value:g}"


def parse_threshold(text: str) -> ThresholdRule:
    """The rule `text` names; ValueError (its message says what is accepted) otherwise."""
    words = str(text).strip().lower()
    if words == "youden":
        return ThresholdRule("youden", None)
    kind, _, target = words.partition(":")
    try:
        if kind in ("sensitivity", "specificity") and target:
            value = float(target)
        elif not target:
            kind, value = "fixed", float(kind)
        else:
            raise ValueError
    except ValueError:
        raise ValueError(f"must be {RULE_HELP}, got {text!r}") from None
    if not 0 < value < 1 if kind == "fixed" else not 0 < value <= 1:
        raise ValueError(f"must be {RULE_HELP}, got {text!r} (out of range)")
    return ThresholdRule(kind, value)
