"""Statistics of analysis/stats.py against scipy and hand computation on constructed data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from analysis.stats import compare_arms, mean_ci

DIFFERENT = ([70.1, 71.0, 69.8, 70.6, 70.3], [80.2, 79.5, 81.0, 80.4, 79.9])
EQUAL = ([70.1, 71.0, 69.8, 70.6, 70.3], [70.4, 69.9, 70.8, 70.2, 70.5])


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


def _welch_by_hand(a: list[float], b: list[float]) -> tuple[float, float]:
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return float(t), float(2 * stats.t.sf(abs(t), df))


@pytest.mark.parametrize("pair", [DIFFERENT, EQUAL], ids=["different", "equal"])
def test_welch_matches_hand_and_scipy(pair: tuple[list[float], list[float]]) -> None:
    result = compare_arms({"a": pair[0], "b": pair[1]})
    t, p = _welch_by_hand(*pair)
    scipy_result = stats.ttest_ind(pair[0], pair[1], equal_var=False)
    assert result.test == "welch"
    assert result.statistic == pytest.approx(t) == pytest.approx(scipy_result.statistic)
    assert result.p_value == pytest.approx(p) == pytest.approx(scipy_result.pvalue)
    assert result.ns == (5, 5)


def test_clearly_different_pair_is_significant() -> None:
    result = compare_arms({"BCE": DIFFERENT[0], "CE": DIFFERENT[1]})
    assert result.p_value < 1e-6
    assert result.verdict == ("significant difference at alpha = 0.05 (p < 0.001, n = 5 per arm; "
                              "highest: CE)")


def test_clearly_equal_pair_is_not_significant() -> None:
    result = compare_arms({"BCE": EQUAL[0], "CE": EQUAL[1]})
    assert result.p_value > 0.5
    assert result.verdict == (f"no significant difference at alpha = 0.05 "
                              f"(p = {result.p_value:.2f}, n = 5 per arm)")


def test_anova_for_more_than_two_arms_matches_scipy() -> None:
    arms = {"2": [60.0, 62.0, 58.0], "16": [74.0, 75.0, 73.5], "128": [72.0, 71.0, 73.0]}
    result = compare_arms(arms)
    expected = stats.f_oneway(*arms.values())
    assert result.test == "anova"
    assert result.statistic == pytest.approx(expected.statistic)
    assert result.p_value == pytest.approx(expected.pvalue)
    assert result.verdict.startswith("significant difference") and "highest: 16" in result.verdict


def test_unequal_arm_sizes_are_named() -> None:
    result = compare_arms({"a": [1.0, 2.0, 3.0], "b": [1.5, 2.5]})
    assert "n = 3/2" in result.verdict


@pytest.mark.parametrize("arms, start", [
    ({"a": [70.0], "b": [71.0, 72.0]}, "not tested: fewer than 2 values in a (n = 1)"),
    ({"a": [70.0, 71.0]}, "not tested: 1 arm(s)"),
    ({"a": [50.0, 50.0], "b": [50.0, 50.0]}, "no difference: every value is 50"),
    ({"a": [50.0, 50.0], "b": [60.0, 60.0]}, "significant difference at alpha = 0.05 (every"),
])
def test_degenerate_arms_give_a_plain_verdict(arms: dict[str, list[float]], start: str) -> None:
    assert compare_arms(arms).verdict.startswith(start)
