"""Statistics of analysis/stats.py against scipy, statsmodels and hand computation.

References: scipy's Welch t-test and its CI, t interval, Tukey HSD and studentized range;
statsmodels' Holm (`multipletests`), two-sample t power (`TTestIndPower`) and bias-corrected
standardised mean difference; a Monte Carlo of the Welch test where no closed form applies.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special, stats
from statsmodels.stats.meta_analysis import effectsize_smd
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower

from analysis.power import simulated_power, unpaired_power
from analysis.stats import (
    adjust_holm,
    compare_arms,
    games_howell,
    hedges_g,
    holm,
    mean_ci,
)

DIFFERENT = ([70.1, 71.0, 69.8, 70.6, 70.3], [80.2, 79.5, 81.0, 80.4, 79.9])
EQUAL = ([70.1, 71.0, 69.8, 70.6, 70.3], [70.4, 69.9, 70.8, 70.2, 70.5])
# Shaped like the real run (3 seeds per arm): batch 2 spreads ~20x wider than 128.
BATCH = {"batch 2": [58.0, 66.0, 68.25], "batch 16": [83.5, 84.5, 83.75],
         "batch 32": [80.5, 82.5, 84.75], "batch 128": [82.5, 82.75, 83.0]}


@pytest.mark.parametrize("values", [[1.0, 2.0, 4.0], [70.0, 72.5, 71.0, 69.0, 75.5],
                                    list(np.linspace(0, 1, 30))])
def test_mean_ci_matches_scipy_t_interval(values: list[float]) -> None:
    ci = mean_ci(values)
    low, high = stats.t.interval(0.95, df=len(values) - 1, loc=np.mean(values),
                                 scale=stats.sem(values))
    assert ci.n == len(values)
    assert ci.mean == pytest.approx(np.mean(values))
    assert ci.std == pytest.approx(np.std(values, ddof=1))
    assert ci.low == pytest.approx(low)
    assert ci.high == pytest.approx(high)


def test_mean_ci_by_hand() -> None:
    # mean 2, sd 1, n 3: half-width = t(0.975, 2) * 1 / sqrt(3) = 4.302653 / 1.732051
    ci = mean_ci([1.0, 2.0, 3.0])
    assert ci.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)


def test_mean_ci_drops_missing_values_and_handles_small_n() -> None:
    assert mean_ci([1.0, float("nan"), None, 3.0, float("inf")]).n == 2  # type: ignore[list-item]
    one = mean_ci([5.0])
    assert one.mean == 5.0 and math.isnan(one.half_width) and one.n == 1
    assert mean_ci([]).n == 0


def _welch_by_hand(a: list[float], b: list[float]) -> tuple[float, float, float]:
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return float(t), float(2 * stats.t.sf(abs(t), df)), float(df)


@pytest.mark.parametrize("pair", [DIFFERENT, EQUAL, ([82.5, 83.0, 84.5], [80.5, 82.5, 84.75]),
                                  ([1.0, 2.0, 3.5], [2.0, 4.0, 6.0, 7.0])],
                         ids=["different", "equal", "issue-like", "unequal-n"])
def test_welch_difference_and_ci_match_scipy(pair: tuple[list[float], list[float]]) -> None:
    result = compare_arms({"a": pair[0], "b": pair[1]})
    t, p, df = _welch_by_hand(*pair)
    reference = stats.ttest_ind(pair[0], pair[1], equal_var=False)
    ci = reference.confidence_interval(0.95)
    (q,) = result.pairs
    assert result.test == "welch"
    assert result.statistic == pytest.approx(t) == pytest.approx(reference.statistic)
    assert result.p_value == pytest.approx(p) == pytest.approx(reference.pvalue)
    assert q.df == pytest.approx(df) == pytest.approx(reference.df)
    assert q.difference == pytest.approx(np.mean(pair[0]) - np.mean(pair[1]))
    assert (q.low, q.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert result.ns == (len(pair[0]), len(pair[1]))


def test_hedges_g_by_hand_and_against_statsmodels() -> None:
    a, b = [82.5, 83.0, 84.5], [80.5, 82.5, 84.75]
    # pooled SD from the two sample variances (df 2 each), J exact for df = 4:
    # J = Gamma(2) / (sqrt(2) Gamma(1.5)) = 1 / (1.414214 * 0.886227) = 0.797885
    va, vb = np.var(a, ddof=1), np.var(b, ddof=1)
    d = (np.mean(a) - np.mean(b)) / math.sqrt((va + vb) / 2)
    j = special.gamma(2) / (math.sqrt(2) * special.gamma(1.5))
    assert j == pytest.approx(0.797885, rel=1e-6)
    assert hedges_g(a, b) == pytest.approx(j * d)
    # statsmodels uses the approximation J = 1 - 3 / (4 N - 9): within 0.3 % at N = 6
    approx, _ = effectsize_smd(np.mean(a), np.std(a, ddof=1), 3, np.mean(b), np.std(b, ddof=1), 3)
    assert hedges_g(a, b) == pytest.approx(approx, rel=3e-3)
    x, y = DIFFERENT
    approx, _ = effectsize_smd(np.mean(x), np.std(x, ddof=1), 5, np.mean(y), np.std(y, ddof=1), 5)
    assert hedges_g(x, y) == pytest.approx(approx, rel=1e-3)
    assert hedges_g(y, x) == pytest.approx(-hedges_g(x, y))
    assert math.isnan(hedges_g([1.0, 1.0], [2.0, 2.0])) and math.isnan(hedges_g([1.0], [2.0, 3]))


def test_games_howell_by_hand() -> None:
    # A textbook-sized example worked through by hand:
    #   A = 10, 12, 14 (mean 12, var 4);  B = 20, 21, 22 (mean 21, var 1);
    #   C = 15, 19, 23, 27 (mean 21, var 80/3).
    # A - B: SE^2 = 4/3 + 1/3 = 5/3; t = -9 / 1.290994 = -6.971370; df = (5/3)^2 /
    #   ((4/3)^2/2 + (1/3)^2/2) = 2.777778 / 0.944444 = 2.941176; q = |t| sqrt(2) = 9.858921.
    # A - C: SE^2 = 4/3 + 20/3 = 8; t = -9 / 2.828427 = -3.181981; df = 64 / (16/9/2 + 400/9/3)
    #   = 64 / 15.703704 = 4.075472.
    samples = {"A": np.array([10.0, 12, 14]), "B": np.array([20.0, 21, 22]),
               "C": np.array([15.0, 19, 23, 27])}
    pairs = {(p.a, p.b): p for p in games_howell(samples)}
    ab, ac, bc = pairs["A", "B"], pairs["A", "C"], pairs["B", "C"]
    assert ab.difference == pytest.approx(-9.0) and ab.statistic == pytest.approx(-6.971370)
    assert ab.df == pytest.approx(2.941176, rel=1e-6)
    assert ab.p_value == pytest.approx(stats.studentized_range.sf(9.858921, 3, 2.941176),
                                       rel=1e-4)
    assert ac.statistic == pytest.approx(-3.181981) and ac.df == pytest.approx(4.075472)
    assert bc.difference == 0 and bc.p_value == pytest.approx(1.0)
    half = stats.studentized_range.ppf(0.95, 3, 2.941176) / math.sqrt(2) * math.sqrt(5 / 3)
    assert (ab.low, ab.high) == (pytest.approx(-9 - half, rel=1e-4),
                                 pytest.approx(-9 + half, rel=1e-4))
    # a significant pair's simultaneous CI excludes 0, a non-significant one's includes it
    for p in pairs.values():
        assert (p.p_value < 0.05) == (p.low > 0 or p.high < 0)


def test_games_howell_with_two_arms_is_welch() -> None:
    # the studentized range of 2 arms is sqrt(2) |t|: Games-Howell reduces to Welch exactly
    a, b = np.array(DIFFERENT[0]), np.array([75.0, 79.5, 84.0, 80.4, 71.9])
    (p,) = games_howell({"a": a, "b": b})
    reference = stats.ttest_ind(a, b, equal_var=False)
    ci = reference.confidence_interval(0.95)
    assert p.p_value == pytest.approx(reference.pvalue, rel=1e-6)
    assert (p.low, p.high) == (pytest.approx(ci.low, rel=1e-6), pytest.approx(ci.high, rel=1e-6))


def test_games_howell_statistic_matches_tukey_hsd_when_spreads_are_equal() -> None:
    # Equal n and equal sample variances: Games-Howell's per-pair SE equals Tukey's pooled one,
    # so its q read at Tukey's df (N - k) must give scipy's tukey_hsd p-values; its own df is
    # Welch's (2n - 2), so its p-values are a little larger.
    base = np.array([0.0, 1.0, 3.0, 4.0])
    arms = {"a": base + 70, "b": base + 72.5, "c": base + 76}
    reference = stats.tukey_hsd(*arms.values())
    names = list(arms)
    for p in games_howell(arms):
        i, j = names.index(p.a), names.index(p.b)
        q = abs(p.statistic) * math.sqrt(2)
        assert stats.studentized_range.sf(q, 3, 12 - 3) == pytest.approx(reference.pvalue[i, j])
        assert p.difference == pytest.approx(reference.statistic[i, j])
        assert p.p_value == pytest.approx(stats.studentized_range.sf(q, 3, 6))
        assert p.p_value >= reference.pvalue[i, j]


def test_holm_matches_statsmodels() -> None:
    p = [0.01, 0.04, 0.03, 0.20, 0.005, 0.5]
    _, expected, _, _ = multipletests(p, method="holm")
    np.testing.assert_allclose(holm(p), expected)
    # no test (NaN) is not part of the family
    with_gap = holm([0.01, math.nan, 0.04, 0.03])
    _, expected, _, _ = multipletests([0.01, 0.04, 0.03], method="holm")
    assert math.isnan(with_gap[1])
    np.testing.assert_allclose(with_gap[[0, 2, 3]], expected)


def test_adjust_holm_rewrites_verdicts_and_pairs() -> None:
    results = [compare_arms({"BCE": DIFFERENT[0], "CE": DIFFERENT[1]}),
               compare_arms(BATCH),
               compare_arms({"3 layers": EQUAL[0], "5 layers": EQUAL[1]}),
               compare_arms({"x": [1.0], "y": [2.0, 3.0]})]
    adjusted = adjust_holm(results)
    _, expected, _, _ = multipletests([r.p_value for r in results[:3]], method="holm")
    np.testing.assert_allclose([r.p_adjusted for r in adjusted[:3]], expected)
    assert all(r.family == 3 for r in adjusted)
    assert math.isnan(adjusted[3].p_adjusted) and adjusted[3].verdict.startswith("cannot tell")
    assert "Holm-adjusted over 3 comparisons" in adjusted[0].verdict
    batch = adjusted[1]
    for pair in batch.pairs:  # a pair is never more significant than its comparison
        assert pair.p_adjusted == pytest.approx(max(pair.p_value, batch.p_adjusted))
    assert adjusted[0].pairs[0].p_adjusted == pytest.approx(adjusted[0].p_adjusted)


def test_batch_arms_use_games_howell_and_name_each_pair() -> None:
    result = compare_arms(BATCH)
    assert result.test == "games-howell" and len(result.pairs) == 6
    assert result.p_value == pytest.approx(min(p.p_value for p in result.pairs))
    # A one-way ANOVA pools batch 2's spread with the others' and is very sure (p < 0.001);
    # with each pair's own spread only batch 2 vs 32 is below 0.05, and barely.
    assert stats.f_oneway(*BATCH.values()).pvalue < 0.001
    assert 0.04 < result.p_value < 0.05
    assert result.verdict == (
        "significant difference at alpha = 0.05 (p = 0.046, n = 3 per arm; highest: batch 16, "
        "lowest: batch 2; pairs that differ: batch 2 vs batch 32)")
    wide = next(p for p in result.pairs if (p.a, p.b) == ("batch 2", "batch 16"))
    narrow = next(p for p in result.pairs if (p.a, p.b) == ("batch 16", "batch 128"))
    assert wide.detectable > 15 > narrow.detectable
    assert narrow.seeds_needed == 4 and wide.seeds_needed > 30
    # three comparisons in one report: after Holm the batch sizes are no longer "different"
    adjusted = adjust_holm([compare_arms({"BCE": [82.5, 83.0, 84.5], "CE": BATCH["batch 32"]}),
                            result, compare_arms({"3": BATCH["batch 32"], "5": [75, 83, 87]})])
    assert adjusted[1].p_adjusted == pytest.approx(3 * result.p_value)
    assert adjusted[1].verdict.startswith("no significant difference")
    assert "Holm-adjusted over 3 comparisons: p = 0.14" in adjusted[1].verdict


def _welch_p(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return stats.ttest_ind(a, b, axis=1, equal_var=False).pvalue


def _games_howell_p(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """The Games-Howell p of pair (a, b) among k arms, row by row, from scipy's range."""
    va, vb = a.var(axis=1, ddof=1) / a.shape[1], b.var(axis=1, ddof=1) / b.shape[1]
    df = (va + vb) ** 2 / (va**2 / (a.shape[1] - 1) + vb**2 / (b.shape[1] - 1))
    q = np.abs(a.mean(1) - b.mean(1)) / np.sqrt(va + vb) * math.sqrt(2)
    return stats.studentized_range.sf(q, k, df)


def test_detectable_difference_is_that_of_the_welch_test_run() -> None:
    # Bug 2: at n = 3, SD 2 the report said 6.14 points (the pooled Student-t figure); a Monte
    # Carlo of the Welch test gives power 0.70 there, and 0.80 only at about 7.1.
    student = TTestIndPower().solve_power(effect_size=None, nobs1=3, alpha=0.05, power=0.8) * 2
    assert student == pytest.approx(6.14, abs=0.01)
    rng = np.random.default_rng(1)
    reps = 40_000
    a, b = rng.normal(0, 2, (reps, 3)), rng.normal(0, 2, (reps, 3))
    assert np.mean(_welch_p(a + student, b) < 0.05) == pytest.approx(0.70, abs=0.015)
    result = compare_arms({"a": [70.0, 72.0, 74.0], "b": [60.0, 62.0, 64.0]})  # SD 2 each
    (pair,) = result.pairs
    assert pair.test == "welch" and pair.power is not None
    assert pair.detectable == pytest.approx(7.05, abs=0.1)
    assert np.mean(_welch_p(a + pair.detectable, b) < 0.05) == pytest.approx(0.80, abs=0.012)
    # the SD's own 95 % interval (chi-square, 4 df) carries over to the detectable difference
    low, high = math.sqrt(4 / stats.chi2.ppf(0.975, 4)), math.sqrt(4 / stats.chi2.ppf(0.025, 4))
    assert pair.power.detectable_low == pytest.approx(pair.detectable * low)
    assert pair.power.detectable_high == pytest.approx(pair.detectable * high)
    # seeds needed: the smallest n whose simulated Welch power reaches 0.8 at 2 points
    n = pair.seeds_needed
    assert n is not None and simulated_power(2.0, 2.0, 2.0, n, n) >= 0.8 \
        > simulated_power(2.0, 2.0, 2.0, n - 1, n - 1)
    a, b = rng.normal(2.0, 2, (reps, n)), rng.normal(0, 2, (reps, n))
    assert np.mean(_welch_p(a, b) < 0.05) == pytest.approx(0.8, abs=0.02)


@pytest.mark.slow
def test_games_howell_power_is_at_the_holm_step_and_matches_a_simulation() -> None:
    # Bug 2, many arms: a 4-arm Games-Howell pair at the printed 6.14 has power about 0.36.
    # (scipy's studentized_range.sf takes ~8 ms a row: 1,500 simulated studies per check, the
    # binomial error of a power near 0.8 then 0.010)
    rng = np.random.default_rng(2)
    reps = 1_500
    a, b = rng.normal(0, 2, (reps, 3)), rng.normal(0, 2, (reps, 3))
    assert np.mean(_games_howell_p(a + 6.14, b, 4) < 0.05) == pytest.approx(0.36, abs=0.03)
    arms = {"w": [70.0, 72.0, 74.0], "x": [60.0, 62.0, 64.0], "y": [50.0, 52.0, 54.0],
            "z": [40.0, 42.0, 44.0]}
    result = compare_arms(arms)
    pair = result.pairs[0]
    assert pair.power is not None and pair.power.test == "games-howell"
    assert np.mean(_games_howell_p(a + pair.detectable, b, 4) < 0.05) == pytest.approx(
        0.8, abs=0.025)
    # in a report of three comparisons the pair is read at Holm's strictest step, alpha / 3
    (adjusted, *_) = adjust_holm([result, compare_arms(DIFFERENT_ARMS), compare_arms(EQUAL_ARMS)])
    later = adjusted.pairs[0]
    assert later.power is not None and later.power.alpha == pytest.approx(0.05 / 3)
    hits = _games_howell_p(a + later.detectable, b, 4) < 0.05 / 3
    assert np.mean(hits) == pytest.approx(0.8, abs=0.025)


DIFFERENT_ARMS = {"BCE": DIFFERENT[0], "CE": DIFFERENT[1]}
EQUAL_ARMS = {"BCE": EQUAL[0], "CE": EQUAL[1]}


def test_power_figures_for_degenerate_spreads() -> None:
    assert math.isnan(unpaired_power(0.0, 0.0, 3, 3, 2.0).detectable)
    assert math.isnan(unpaired_power(1.0, 1.0, 1, 3, 2.0).detectable)
    assert unpaired_power(0.0, 0.0, 3, 3, 2.0).seeds_needed is None
    assert unpaired_power(50.0, 50.0, 3, 3, 1e-6).seeds_needed is None  # more than MAX_SEEDS


def test_clearly_different_pair_is_significant() -> None:
    result = compare_arms({"BCE": DIFFERENT[0], "CE": DIFFERENT[1]})
    assert result.p_value < 1e-6
    assert result.verdict == ("significant difference at alpha = 0.05 (p < 0.001, n = 5 per arm; "
                              "highest: CE)")


def test_not_significant_verdict_says_what_could_have_been_seen() -> None:
    result = compare_arms({"BCE": EQUAL[0], "CE": EQUAL[1]})
    (pair,) = result.pairs
    assert result.p_value > 0.5
    assert result.verdict == (
        f"no significant difference at alpha = 0.05 (p = {result.p_value:.2f}, n = 5 per arm); "
        f"at this n only a difference of {pair.detectable:.1f} points or more would be found "
        "with 80 % power by the welch test")


def test_unequal_arm_sizes_are_named() -> None:
    result = compare_arms({"a": [1.0, 2.0, 3.0], "b": [1.5, 2.5]})
    assert "n = 3/2" in result.verdict


@pytest.mark.parametrize("arms, start", [
    ({"a": [70.0], "b": [71.0, 72.0]}, "cannot tell: too few values or no spread in a (n = 1)"),
    ({"a": [70.0, 71.0]}, "cannot tell: 1 arm(s)"),
    ({"a": [50.0, 50.0], "b": [50.0, 50.0]}, "cannot tell: too few values or no spread in a "
                                             "(every value 50, no spread), b (every value 50"),
    ({"a": [50.0, 50.0], "b": [60.0, 60.0]}, "cannot tell"),
])
def test_degenerate_arms_never_get_a_verdict(arms: dict[str, list[float]], start: str) -> None:
    result = compare_arms(arms)
    assert result.verdict.startswith(start) and result.test == "none"
    assert math.isnan(result.p_value) and result.pairs == ()


def test_a_degenerate_arm_is_left_out_of_a_many_arm_comparison() -> None:
    result = compare_arms({"a": [70.0], "b": [71.0, 72.0, 73.0], "c": [80.0, 81.0, 80.5]})
    assert result.test == "welch" and result.excluded == ("a (n = 1)",)
    assert [(p.a, p.b) for p in result.pairs] == [("b", "c")]
    assert result.verdict.endswith("; cannot tell for a (n = 1)")


def test_an_arm_without_spread_is_compared() -> None:
    # Bug 4: an arm collapsed to the majority class, [62.5, 62.5, 62.5], against a working one
    # is a clear difference (Welch p = 0.001), not "cannot tell".
    flat, working = [62.5, 62.5, 62.5], [80.1, 81.3, 79.2]
    reference = stats.ttest_ind(flat, working, equal_var=False)
    assert reference.pvalue == pytest.approx(0.001, abs=0.0005)
    result = compare_arms({"collapsed": flat, "working": working})
    assert result.test == "welch" and result.p_value == pytest.approx(reference.pvalue)
    (pair,) = result.pairs
    ci = reference.confidence_interval()
    assert (pair.low, pair.high) == pytest.approx((ci.low, ci.high))
    assert result.verdict.startswith("significant difference") and "no spread in" in result.verdict
    many = compare_arms({"collapsed": flat, "also": [50.0] * 3, "working": working})
    assert many.test == "games-howell"
    assert [(q.a, q.b) for q in many.pairs] == [("collapsed", "working"), ("also", "working")]
