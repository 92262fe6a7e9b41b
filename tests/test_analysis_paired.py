"""Paired comparisons (analysis/paired.py) against scipy, statsmodels and a seeded simulation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.anova import AnovaRM
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from analysis.paired import compare_matched, repeated_measures_f
from analysis.power import paired_power, simulated_power
from analysis.stats import adjust_holm

SEEDS = [0, 1, 2, 3, 4]
A = [80.2, 81.9, 79.4, 82.6, 80.8]
B = [78.9, 80.1, 78.6, 80.7, 79.9]


def test_two_arms_sharing_seeds_are_paired_as_scipy_pairs_them() -> None:
    result = compare_matched({"a": A, "b": B}, {"a": SEEDS, "b": SEEDS})
    assert result.test == "paired" and result.why.startswith("paired: the arms ran the same 5")
    (pair,) = result.pairs
    reference = stats.ttest_rel(A, B)
    ci = reference.confidence_interval()
    assert pair.p_value == pytest.approx(reference.pvalue, rel=1e-9)
    assert (pair.low, pair.high) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert pair.difference == pytest.approx(np.mean(np.subtract(A, B)))
    assert pair.correlation == pytest.approx(stats.pearsonr(A, B).statistic)
    assert pair.sd_diff == pytest.approx(np.std(np.subtract(A, B), ddof=1))
    # power of the paired test: exactly the one-sample t power of the differences
    effect = TTestPower().solve_power(effect_size=None, nobs=5, alpha=0.05, power=0.8)
    assert pair.detectable == pytest.approx(effect * pair.sd_diff, rel=1e-5)
    needed = TTestPower().solve_power(effect_size=2.0 / pair.sd_diff, nobs=None, alpha=0.05,
                                      power=0.8)
    assert pair.seeds_needed == max(2, math.ceil(needed))


def test_blocks_are_matched_by_key_not_by_position() -> None:
    shuffled = compare_matched({"a": A, "b": B[::-1]}, {"a": SEEDS, "b": SEEDS[::-1]})
    assert shuffled.p_value == pytest.approx(stats.ttest_rel(A, B).pvalue)


def test_paired_power_gains_as_the_issue_simulated() -> None:
    # Issue, item 5: n = 5, SD 1.5, a 2-point difference: Welch power 0.43, paired 0.62 at a
    # seed correlation of 0.5 and 0.93 at 0.8; the paired test keeps its size.
    rng = np.random.default_rng(5)
    reps = 20_000
    assert simulated_power(2.0, 1.5, 1.5, 5, 5) == pytest.approx(0.43, abs=0.01)
    for rho, expected in ((0.5, 0.62), (0.8, 0.93)):
        shared = rng.standard_normal((reps, 5))
        own = rng.standard_normal((2, reps, 5))
        a = 1.5 * (math.sqrt(rho) * shared + math.sqrt(1 - rho) * own[0])
        b = 1.5 * (math.sqrt(rho) * shared + math.sqrt(1 - rho) * own[1])
        hits = stats.ttest_rel(a + 2.0, b, axis=1).pvalue < 0.05
        assert np.mean(hits) == pytest.approx(expected, abs=0.015)
        sd_diff = 1.5 * math.sqrt(2 * (1 - rho))
        assert paired_power(2.0, sd_diff, 5) == pytest.approx(np.mean(hits), abs=0.012)
        size = np.mean(stats.ttest_rel(a, b, axis=1).pvalue < 0.05)
        assert size == pytest.approx(0.05, abs=0.006)


def test_unmatched_seeds_fall_back_to_welch_and_say_why() -> None:
    result = compare_matched({"a": A, "b": B}, {"a": SEEDS, "b": [10, 11, 12, 13, 14]})
    assert result.test == "welch" and "share fewer than two seeds" in result.why
    assert result.p_value == pytest.approx(stats.ttest_ind(A, B, equal_var=False).pvalue)
    # one seed missing from an arm (it diverged): still paired, on the four shared seeds
    partial = compare_matched({"a": A, "b": B[:4]}, {"a": SEEDS, "b": SEEDS[:4]})
    assert partial.test == "paired" and "1 run(s) without a partner left out" in partial.why
    assert partial.p_value == pytest.approx(stats.ttest_rel(A[:4], B[:4]).pvalue)


def test_many_arms_use_a_repeated_measures_anova_and_holm_paired_pairs() -> None:
    c = [77.0, 79.5, 76.8, 79.9, 78.2]
    arms = {"a": A, "b": B, "c": c}
    result = compare_matched(arms, dict.fromkeys(arms, SEEDS))
    assert result.test == "repeated-measures"
    long = pd.DataFrame([{"seed": s, "arm": name, "acc": v} for name, values in arms.items()
                         for s, v in zip(SEEDS, values, strict=True)])
    table = AnovaRM(long, "acc", "seed", within=["arm"]).fit().anova_table
    assert result.statistic == pytest.approx(table["F Value"].iloc[0], rel=1e-9)
    assert result.p_value == pytest.approx(table["Pr > F"].iloc[0], rel=1e-9)
    raw = [stats.ttest_rel(arms[x], arms[y]).pvalue for x, y in (("a", "b"), ("a", "c"),
                                                                 ("b", "c"))]
    assert [q.p_value for q in result.pairs] == pytest.approx(
        list(multipletests(raw, method="holm")[1]), rel=1e-9)
    ci = stats.ttest_rel(A, c).confidence_interval(1 - 0.05 / 3)
    assert (result.pairs[1].low, result.pairs[1].high) == pytest.approx((ci.low, ci.high))
    assert result.pairs[0].power is not None
    assert result.pairs[0].power.alpha == pytest.approx(0.05 / 3)
    (adjusted,) = adjust_holm([result])
    assert adjusted.pairs[0].power.alpha == pytest.approx(0.05 / 3)


def test_repeated_measures_f_by_hand() -> None:
    values = np.array([[1.0, 2.0, 4.0], [2.0, 2.5, 5.0], [1.5, 3.5, 4.5]])
    f, df1, df2, p = repeated_measures_f(values)
    # by hand: arm means 1.5, 8/3, 4.5, grand mean 26/9; SS arms = 3 * sum (mean - 26/9)^2
    # = 123.5/9, SS blocks = 12.5/9, SS total = 143/9, so SS error = 7/9
    assert (df1, df2) == (2, 4)
    assert f == pytest.approx((123.5 / 9 / 2) / (7 / 9 / 4), rel=1e-9)
    assert p == pytest.approx(stats.f.sf(f, 2, 4))
