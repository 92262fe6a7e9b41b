"""The two uncertainties (analysis/uncertainty.py) against scipy, statsmodels and simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

from analysis import uncertainty
from analysis.stats import mean_ci


def test_binomial_test_set_ci_is_clopper_pearson() -> None:
    # 85 % of 624 images: the binomial standard error alone is 1.4 points
    ci = uncertainty.test_set_ci(85.0, 624)
    low, high = proportion_confint(530, 624, alpha=0.05, method="beta")
    assert (ci.low, ci.high) == pytest.approx((low * 100, high * 100), rel=1e-9)
    assert ci.method == "exact binomial over 624 test images"
    assert math.sqrt(0.85 * 0.15 / 624) * 100 == pytest.approx(1.43, abs=0.01)
    assert ci.half_width == pytest.approx(1.96 * 1.43, abs=0.1)
    assert math.isnan(uncertainty.test_set_ci(85.0, None).half_width)


def test_bootstrap_over_images_matches_scipy_bootstrap() -> None:
    rng = np.random.default_rng(3)
    easy = rng.random(624) < 0.85  # the images most seeds get right
    seeds = [np.where(rng.random(624) < 0.9, easy, ~easy) for _ in range(3)]
    ci = uncertainty.test_set_ci(float(np.mean(seeds)) * 100, 624, seeds)
    assert ci.method == "bootstrap over 624 test images"
    per_image = np.mean(seeds, axis=0)
    reference = stats.bootstrap((per_image,), np.mean, n_resamples=20_000, method="percentile",
                                random_state=np.random.default_rng(4)).confidence_interval
    assert ci.low == pytest.approx(reference.low * 100, abs=0.15)
    assert ci.high == pytest.approx(reference.high * 100, abs=0.15)
    assert ci.low < np.mean(seeds) * 100 < ci.high


def test_combined_interval_adds_in_quadrature() -> None:
    assert uncertainty.combined_half_width(3.0, 4.0) == pytest.approx(5.0)
    assert uncertainty.combined_half_width(3.0, math.nan) == 3.0
    assert math.isnan(uncertainty.combined_half_width(math.nan, 4.0))


def _false_alarms(seeds: int, rule: str, studies: int = 3_000) -> float:
    """Share of simulated studies with no selection and no shift whose gap is flagged: true
    accuracy 85 % on both splits, 624 validation and 624 test images; each study draws its two
    image sets (a binomial offset each) and its seeds (a quality shared by both splits, plus
    each seed's own scatter on each set)."""
    rng = np.random.default_rng([11, seeds])
    se = math.sqrt(0.85 * 0.15 / 624) * 100
    flagged = 0
    for _ in range(studies):
        offset_val, offset_test = rng.normal(0, se, 2)
        quality = rng.normal(0, 1.0, seeds)
        val = 85 + offset_val + quality + rng.normal(0, 0.7, seeds)
        test = 85 + offset_test + quality + rng.normal(0, 0.7, seeds)
        gap = val.mean() - test.mean()
        if rule == "seed CI":  # the old rule: the gap against the test accuracy's seed CI
            limit = mean_ci(list(test)).half_width
        else:
            limit = uncertainty.gap_noise(list(val - test), val.mean(), test.mean(), 624,
                                          624).total
        flagged += abs(gap) > limit
    return flagged / studies


@pytest.mark.parametrize("seeds", [3, 5, 10])
def test_the_gap_is_read_against_both_image_sets_and_the_seeds(seeds: int) -> None:
    # Issue, item 7: read against the seed CI alone, the warning fires in 20 % / 41 % / 60 % of
    # studies with no selection and no shift at 3 / 5 / 10 seeds; against its whole noise, in
    # about 5 % (a little less: the t interval of the gaps is wide at few seeds).
    old = _false_alarms(seeds, "seed CI")
    assert old > 0.15 and old > {3: 0.15, 5: 0.3, 10: 0.45}[seeds]
    assert _false_alarms(seeds, "gap noise") < 0.07


def test_adaptive_rule_coverage_matches_the_projects_own_rule() -> None:
    # Issue, item 8: simulated with the project's own rule (Rule.decide, seed by seed), the
    # intervals `--repeats auto` ends with cover about 0.91 at tight targets, not 0.95.
    from study.search.seed_rule import Rule, half_width

    rule = Rule(target_ci=1.0, max_repeats=10, first_seeds=3)
    rng = np.random.default_rng(12)
    covered, studies = 0, 12_000
    for _ in range(studies):
        values: list[float] = []
        while rule.decide(values, len(values), 0)[0]:
            values.append(float(rng.normal(0.0, 2.0)))
        covered += abs(np.mean(values)) <= half_width(values)
    reference = covered / studies
    ours = uncertainty.adaptive_coverage(1.0, 2.0, 3, 10)
    assert reference == pytest.approx(0.91, abs=0.015)
    assert ours == pytest.approx(reference, abs=0.012)
    assert uncertainty.adaptive_coverage(100.0, 2.0, 3, 10) == pytest.approx(0.95, abs=0.005)


def test_divergence_rate_and_intention_to_treat() -> None:
    import pandas as pd

    from analysis.homework import divergence
    from analysis.report_design import failures_section

    runs = pd.DataFrame({"status": ["completed"] * 4 + ["diverged", "stopped"],
                         "test_accuracy": [80.0, 81.0, 79.0, 80.0, 50.0, math.nan]})
    failed = divergence(runs)
    low, high = proportion_confint(1, 5, alpha=0.05, method="beta")
    assert failed["n_ended"] == 5 and failed["diverged_rate"] == pytest.approx(20.0)
    assert (failed["diverged_low"], failed["diverged_high"]) == pytest.approx(
        (low * 100, high * 100))
    itt = mean_ci([80.0, 81.0, 79.0, 80.0, 50.0])
    assert failed["itt_mean"] == pytest.approx(itt.mean) and failed["itt_n"] == 5
    assert failed["itt_ci"] == pytest.approx(itt.half_width)
    record = {"title": "Loss", "arms": [{"label": "BCE", "n_diverged": 1, **failed}]}
    text = "\n".join(failures_section([record]))
    assert "| Loss | BCE | 1/5 | 20 (1–72) | 74.00 ± " in text
    assert failures_section([{"title": "Loss", "arms": [{"label": "CE", "n_diverged": 0}]}]) == []


def test_a_difference_on_the_same_images_has_a_narrower_test_set_interval() -> None:
    rng = np.random.default_rng(21)
    easy = rng.random(624) < 0.85
    a = np.where(rng.random(624) < 0.95, easy, ~easy).astype(float)
    b = np.where(rng.random(624) < 0.95, easy, ~easy).astype(float)
    half = uncertainty.difference_test_set_ci(a, b)
    # the normal approximation of the paired (per-image) difference of proportions
    by_hand = 1.96 * np.std(a - b, ddof=1) / math.sqrt(624) * 100
    assert half == pytest.approx(by_hand, rel=0.06)
    alone = uncertainty.test_set_ci(a.mean() * 100, 624, [a]).half_width
    assert half < alone  # the images both get right or wrong cancel
    assert math.isnan(uncertainty.difference_test_set_ci(a, b[:10]))
