"""Comparisons of arms that share seeds: paired differences, seed as a block.

Seed s gives the same initialisation stream and data order in every arm, so two arms' runs of
seed s are a matched pair: the seed-to-seed noise they share cancels in their difference.
Where every arm ran the same seeds (the blocks: seed, and whatever else is marginalised, so a
pair differs in the compared factor alone):

- **Two arms: the paired t-test** of the per-seed differences a - b, its t-interval, and the
  seeds' correlation between the arms (how much noise the pairing removed). At n = 5, SD 1.5
  and a 2-point difference a Welch test has power 0.43; paired, 0.62 at a seed correlation of
  0.5 and 0.93 at 0.8, at the same size.
- **More arms: a repeated-measures ANOVA** (the arms' F with seed as block: the two-way ANOVA
  without replication that statsmodels' `AnovaRM` fits) for the comparison, and paired t-tests
  of every pair, Holm-adjusted over the comparison's pairs, with Bonferroni-level intervals.
- **Otherwise** (seeds do not match: a diverged or missing seed in most of an arm, another seed
  range, repeated blocks) the unpaired Welch / Games-Howell of `analysis.stats`.

The comparison says which test it ran and why (`ArmTest.why`).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from scipy import stats

from analysis.stats import (
    ALPHA,
    TARGET_DIFFERENCE,
    ArmTest,
    PairTest,
    compare_arms,
    hedges_g,
    holm,
    verdict,
    with_power,
)

MATCHED_SHARE = 0.75  # pair only when the shared seeds are at least this share of every arm


def seed_correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r of two arms' values over their shared seeds; NaN where either is flat."""
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(stats.pearsonr(x, y).statistic)


def paired_pair(name_a: str, x: np.ndarray, name_b: str, y: np.ndarray,
                target: float = TARGET_DIFFERENCE, confidence: float = 0.95, arms: int = 2,
                alpha: float = ALPHA) -> PairTest:
    """The paired t-test of a - b over matched seeds (scipy's `ttest_rel`) with its
    `confidence` t-interval, the seeds' correlation, Hedges' g and power at `alpha`."""
    result = stats.ttest_rel(x, y)
    ci = result.confidence_interval(confidence)
    diff = x - y
    pair = PairTest(name_a, name_b, len(x), len(y), float(diff.mean()), float(ci.low),
                    float(ci.high), hedges_g(x, y), float(result.statistic), float(len(x) - 1),
                    float(result.pvalue), math.nan, math.nan, None, target,
                    sd_a=float(x.std(ddof=1)), sd_b=float(y.std(ddof=1)), test="paired",
                    correlation=seed_correlation(x, y), sd_diff=float(diff.std(ddof=1)),
                    arms=arms)
    return with_power(pair, alpha)


def repeated_measures_f(values: np.ndarray) -> tuple[float, float, float, float]:
    """F, its two degrees of freedom and p of the arms (columns) in a (blocks x arms) table:
    the two-way ANOVA without replication, blocks as the second factor."""
    n, k = values.shape
    grand = values.mean()
    ss_arms = n * float(((values.mean(0) - grand) ** 2).sum())
    ss_blocks = k * float(((values.mean(1) - grand) ** 2).sum())
    ss_error = float(((values - grand) ** 2).sum()) - ss_arms - ss_blocks
    df1, df2 = k - 1, (k - 1) * (n - 1)
    if ss_error <= 0:
        return math.nan, df1, df2, math.nan
    f = (ss_arms / df1) / (ss_error / df2)
    return f, df1, df2, float(stats.f.sf(f, df1, df2))


def _usable(value: object) -> bool:
    try:
        return value is not None and math.isfinite(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _matched(values: Mapping[str, Sequence[float]], blocks: Mapping[str, Sequence[Hashable]]
             ) -> tuple[dict[str, dict[Hashable, float]] | None, str]:
    """Each arm's value per block, where the arms can be paired; else None and why not."""
    by_block: dict[str, dict[Hashable, float]] = {}
    for name, arm in values.items():
        keys = list(blocks[name])
        if len(set(keys)) < len(keys):
            return None, f"{name} ran a seed more than once in this comparison"
        by_block[name] = {k: float(v) for k, v in zip(keys, arm, strict=True) if _usable(v)}
    common = set.intersection(*(set(v) for v in by_block.values()))
    if len(common) < 2:
        return None, "the arms share fewer than two seeds"
    short = [name for name, v in by_block.items() if len(common) < MATCHED_SHARE * len(v)]
    if short:
        return None, (f"only {len(common)} seeds are shared, too few of {', '.join(short)}'s "
                      f"{max(len(by_block[s]) for s in short)}")
    return {name: {k: v[k] for k in common} for name, v in by_block.items()}, ""


def compare_matched(arms: Mapping[str, Sequence[float]],
                    blocks: Mapping[str, Sequence[Hashable]] | None = None,
                    alpha: float = ALPHA, target: float = TARGET_DIFFERENCE) -> ArmTest:
    """Compare arms paired by `blocks` (each value's seed, as a key) where they share them,
    else unpaired (`analysis.stats.compare_arms`); `why` says which and why."""
    counts = {n: sum(map(_usable, v)) for n, v in arms.items()}
    usable = {n: v for n, v in arms.items() if counts[n] >= 2}
    if blocks is None or len(usable) < 2:
        return compare_arms(arms, alpha, target)._replace(
            why="unpaired: no seeds to match the arms by")
    matched, reason = _matched(usable, blocks)
    if matched is None:
        result = compare_arms(arms, alpha, target)
        return result._replace(why=f"unpaired ({result.test}): {reason}")
    order = sorted(next(iter(matched.values())), key=str)
    table = np.array([[matched[name][b] for name in usable] for b in order])
    diffs = [table[:, i] - table[:, j] for i in range(len(usable))
             for j in range(i + 1, len(usable))]
    if any(np.ptp(d) == 0 for d in diffs):
        result = compare_arms(arms, alpha, target)
        return result._replace(why=f"unpaired ({result.test}): the per-seed differences of a "
                                   "pair do not spread, so a paired test has no error to use")
    names = list(usable)
    ns = tuple(counts.values())
    excluded = tuple(f"{n} (n = {counts[n]})" for n in arms if n not in usable)
    left_out = sum(counts[n] for n in names) - table.size
    why = (f"paired: the arms ran the same {len(order)} seeds (seed s: the same initial weights "
           "and data order in every arm), so each seed's difference cancels the noise they share"
           + (f"; {left_out} run(s) without a partner left out" if left_out else ""))
    means = tuple((name, float(table[:, i].mean())) for i, name in enumerate(names))
    if len(names) == 2:
        pair = paired_pair(names[0], table[:, 0], names[1], table[:, 1], target)
        result = ArmTest("paired", pair.statistic, pair.p_value, ns, "", (pair,),
                         excluded=excluded, means=means, why=why)
        return result._replace(verdict=verdict(result, alpha))
    k = len(names)
    count = k * (k - 1) // 2
    f, _, _, p_f = repeated_measures_f(table)
    raw = [paired_pair(names[i], table[:, i], names[j], table[:, j], target,
                       1 - alpha / count, k, alpha / count)
           for i in range(k) for j in range(i + 1, k)]
    within = holm([q.p_value for q in raw])
    pairs = tuple(q._replace(p_value=float(p)) for q, p in zip(raw, within, strict=True))
    why += (f"; {k} arms: a repeated-measures ANOVA (seed as block) for the comparison, paired "
            f"pairs Holm-adjusted over its {count} pairs (intervals at 1 - {alpha:g}/{count})")
    if not math.isfinite(p_f):  # no residual spread at all: the pairs' smallest p stands in
        p_f = float(min(q.p_value for q in pairs))
    result = ArmTest("repeated-measures", f, p_f, ns, "", pairs, excluded=excluded,
                     means=means, why=why)
    return result._replace(verdict=verdict(result, alpha))
