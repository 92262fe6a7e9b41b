"""report.md's sections on the grid as a whole: the factorial table, and failed seeds per arm.

Pure functions of the numbers (`analysis.factorial`, the homework's arm records), like
`analysis.report_sections`, which places them in the report.
"""

from __future__ import annotations

import math
from typing import Any

from analysis.factorial import Factorial


def _num(value: Any, digits: int = 2, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return text.replace("-", "−")


def _p(value: Any) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def factorial_section(result: Factorial | None) -> list[str]:
    """The factorial analysis of the grid: ANOVA terms, main effects, interactions."""
    if result is None:
        return []
    block = ("with the seed as a block (seed s: the same initial weights and data order in "
             "every configuration)") if result.blocked else "without a seed block"
    lines = ["### Every run at once: the factorial model", "",
             f"Beside the one-factor-at-a-time table above, one linear model of all {result.n} "
             f"runs' test accuracy, `{result.formula}` (statsmodels OLS, sum coding), "
             f"{block}: every run informs every factor, and the interactions say whether one "
             "factor's effect depends on another's. A main effect is a level's mean minus the "
             "baseline's, averaged over the other factors' levels alike; an interaction, how "
             f"much a difference changes from one level of the other factor to the baseline's. "
             f"95 % CIs and p from the model ({result.residual_df:g} residual df), not "
             "Holm-adjusted.", "",
             "| Term | df | F | p |", "| --- | --- | --- | --- |"]
    for row in result.anova.itertuples():
        if row.term == "residual":
            continue
        lines.append(f"| {row.term} | {row.df:g} | {_num(row.F)} | {_p(row.p_value)} |")
    lines += ["", "| Effect | Contrast | Estimate (points, 95 % CI) | p |",
              "| --- | --- | --- | --- |"]
    for row in result.effects.itertuples():
        estimate = _num(row.estimate, signed=True)
        lines.append(f"| {row.kind}: {row.term} | {row.contrast} | {estimate} "
                     f"[{_num(row.ci_low, signed=True)}, {_num(row.ci_high, signed=True)}] | "
                     f"{_p(row.p_value)} |")
    lines.append("")
    return lines


def failures_section(comparisons: list[dict[str, Any]]) -> list[str]:
    """Diverged seeds per arm: the rate with its exact CI, and the intention-to-treat mean that
    keeps them at their last good score (only where some arm had one)."""
    arms = [(c["title"], a) for c in comparisons for a in c["arms"]]
    if not any(a.get("n_diverged") for _, a in arms):
        return []
    lines = ["### Diverged seeds", "",
             "The means above leave a diverged seed out: they describe the setting when it "
             "trains. How often it does not, with the exact (Clopper-Pearson) 95 % CI of the "
             "rate, and the *intention-to-treat* mean that keeps each diverged seed at its last "
             "good score (the test accuracy of the weights it had kept when it diverged):", "",
             "| Comparison | Arm | Diverged / ended | Rate % (95 % CI) | "
             "Test accuracy %, intention to treat (mean ± 95 % CI, n) |",
             "| --- | --- | --- | --- | --- |"]
    title = None
    for name, a in arms:
        itt = _num(a.get("itt_mean"))
        if a.get("itt_ci") is not None and math.isfinite(a.get("itt_ci") or math.nan):
            itt += f" ± {_num(a['itt_ci'])}"
        lines.append(f"| {name if name != title else ''} | {a['label']} | "
                     f"{a.get('n_diverged', 0)}/{a.get('n_ended', '–')} | "
                     f"{_num(a.get('diverged_rate'), 0)} ({_num(a.get('diverged_low'), 0)}–"
                     f"{_num(a.get('diverged_high'), 0)}) | {itt} (n = {a.get('itt_n', 0)}) |")
        title = name
    lines.append("")
    return lines
