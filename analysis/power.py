"""Power and seeds needed for the test a comparison actually runs, with a range at small n.

- **Welch** (two arms, unpaired): no closed form, since Welch's degrees of freedom are
  themselves estimated from the sample. Simulated: each replicate's arm means and variances are
  drawn directly (normal and chi-square), the test's critical value depends only on the
  variances, so power at any difference d is the share of replicates with |d + e| > c·SE, and
  the same seeded replicates serve every d (common random numbers: power rises with d).
  The noncentral t with Welch's df, the textbook figure, overstates it: at n = 3, SD 2 it
  puts 80 % power at 6.14 points where the Welch test needs about 7.1.
- **Games-Howell** (more arms, unpaired): the pair's statistic is Welch's, compared with the
  studentized range over the comparison's k arms at the strictest Holm step (alpha / family):
  a lower bound, since later Holm steps are easier.
- **Paired** (arms share seeds): the paired t-test is a one-sample t-test of the per-seed
  differences, whose power is exactly the noncentral t with n - 1 degrees of freedom (the
  formula statsmodels' `TTestPower` uses); with more arms, at the strictest Holm step over
  the comparison's pairs and the report's family.
- **Range**: the SD is itself an estimate. The figures scale with it, so they are shown at
  both ends of its 95 % chi-square interval too: at n = 3 the SD could be 0.5 to 6 times the
  observed one, and the detectable difference with it.

Nothing here draws or prints.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
from scipy import interpolate, optimize, stats

ALPHA = 0.05
POWER = 0.8  # the conventional power at which a "detectable difference" is quoted
MAX_SEEDS = 10_000  # beyond this, "seeds needed" is reported as more than this
REPS = 20_000  # simulated replicates: power to about +-0.003 at 0.8
SIM_SEED = 20_260  # one fixed stream: the same numbers every report


class Power(NamedTuple):
    """What a test could have found: the difference detected with 80 % power at this n, the
    seeds per arm (or pairs) a target difference needs, and both at the ends of the SD's 95 %
    interval (low SD: smaller figures)."""

    test: str  # "welch", "games-howell" or "paired"
    alpha: float  # the level the figures are for (the Holm step used, where adjusted)
    detectable: float
    detectable_low: float
    detectable_high: float
    seeds_needed: int | None
    seeds_needed_low: int | None
    seeds_needed_high: int | None


def sd_interval(df: int, confidence: float = 0.95) -> tuple[float, float]:
    """Return the factors (low, high) by which the true SD may differ from one estimated with
    `df` degrees of freedom: the `confidence` chi-square interval of sigma / s."""
    if df < 1:
        return math.nan, math.nan
    tail = (1 - confidence) / 2
    return (math.sqrt(df / stats.chi2.ppf(1 - tail, df)),
            math.sqrt(df / stats.chi2.ppf(tail, df)))


# --- unpaired: Welch and Games-Howell, simulated -------------------------------------------


# Where the studentized range's quantile is tabulated: a monotone cubic through these, in log
# quantile against log df, is within 0.2 % of scipy's quantile for 1 <= df <= 10^4.
DF_GRID = np.array([1, 1.25, 1.5, 1.75, 2, 2.5, 3, 3.5, 4, 5, 6, 8, 10, 14, 20, 30, 50, 100,
                    300, 1e4])


@functools.lru_cache(maxsize=64)
def _range_quantile(k: int, alpha: float) -> interpolate.PchipInterpolator:
    """log of the studentized range's upper `alpha` quantile for k arms, against log df;
    cached: scipy's ppf takes a tenth of a second a call."""
    quantiles = [stats.studentized_range.ppf(1 - alpha, k, g) for g in DF_GRID]
    return interpolate.PchipInterpolator(np.log(DF_GRID), np.log(quantiles))


def _critical(test: str, k: int, alpha: float, df: np.ndarray) -> np.ndarray:
    """Critical |t| per replicate's df: Welch's t quantile, or a Games-Howell pair's (the
    studentized range's quantile / sqrt 2)."""
    if test == "welch":
        return stats.t.ppf(1 - alpha / 2, df)
    log_df = np.log(np.clip(df, DF_GRID[0], DF_GRID[-1]))
    return np.exp(_range_quantile(k, alpha)(log_df)) / math.sqrt(2)


def _replicates(sd_a: float, sd_b: float, n_a: int, n_b: int, test: str, k: int,
                alpha: float, reps: int) -> tuple[np.ndarray, np.ndarray]:
    """Per replicate: the noise e of the observed difference and the critical |difference|."""
    rng = np.random.default_rng([SIM_SEED, n_a, n_b])
    mean_a, mean_b = rng.standard_normal(reps) / math.sqrt(n_a), \
        rng.standard_normal(reps) / math.sqrt(n_b)
    var_a = sd_a**2 * rng.chisquare(n_a - 1, reps) / (n_a - 1)
    var_b = sd_b**2 * rng.chisquare(n_b - 1, reps) / (n_b - 1)
    va, vb = var_a / n_a, var_b / n_b
    se = np.sqrt(va + vb)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    df = np.nan_to_num(df, nan=1.0).clip(1.0, 1e6)
    return sd_a * mean_a - sd_b * mean_b, _critical(test, k, alpha, df) * se


def simulated_power(difference: float, sd_a: float, sd_b: float, n_a: int, n_b: int,
                    test: str = "welch", k: int = 2, alpha: float = ALPHA,
                    reps: int = REPS) -> float:
    """Return the simulated power of the two-sided Welch test (or a Games-Howell pair among `k`
    arms) at `alpha` to detect `difference` with these SDs and n (normal values)."""
    noise, crit = _replicates(sd_a, sd_b, n_a, n_b, test, k, alpha, reps)
    return float(np.mean(np.abs(difference + noise) > crit))


def _simulated_detectable(sd_a: float, sd_b: float, n_a: int, n_b: int, test: str, k: int,
                          alpha: float, power: float, reps: int) -> float:
    noise, crit = _replicates(sd_a, sd_b, n_a, n_b, test, k, alpha, reps)

    def short(d: float) -> float:
        return float(np.mean(np.abs(d + noise) > crit)) - power

    high = float(np.median(crit)) + 1e-9
    while short(high) < 0:
        high *= 2
    low = 0.0
    while high - low > 1e-4 * high:  # bisection: power is a step function of d
        mid = (low + high) / 2
        low, high = (mid, high) if short(mid) < 0 else (low, mid)
    return high


def _unpaired_needed(difference: float, sd_a: float, sd_b: float, test: str, k: int,
                     alpha: float, power: float, reps: int) -> int | None:
    if not (sd_a > 0 or sd_b > 0) or difference <= 0:
        return None

    def enough(n: int) -> bool:
        return simulated_power(difference, sd_a, sd_b, n, n, test, k, alpha, reps) >= power

    return _smallest(enough, 2)


# --- paired: the noncentral t, exact -------------------------------------------------------


def paired_power(difference: float, sd_diff: float, n: int, alpha: float = ALPHA) -> float:
    """Return the exact power of the two-sided paired t-test (n pairs, SD of the differences
    `sd_diff`) at `alpha` to detect a mean difference `difference`."""
    df = n - 1
    crit = float(stats.t.ppf(1 - alpha / 2, df))
    nc = difference / (sd_diff / math.sqrt(n))
    return float(stats.nct.sf(crit, df, nc) + stats.nct.sf(crit, df, -nc))


def _paired_detectable(sd_diff: float, n: int, alpha: float, power: float) -> float:
    high = sd_diff
    while paired_power(high, sd_diff, n, alpha) < power:
        high *= 2
    return float(optimize.brentq(lambda d: paired_power(d, sd_diff, n, alpha) - power,
                                 0.0, high, xtol=1e-10))


def _smallest(enough: object, start: int, limit: int = MAX_SEEDS) -> int | None:
    """The smallest n >= start with enough(n), by doubling then bisection; None past limit."""
    assert callable(enough)
    if not enough(limit):
        return None
    low, high = start - 1, start
    while not enough(high):
        low, high = high, min(limit, high * 2)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return high


# --- the figures a report shows ------------------------------------------------------------


def unpaired_power(sd_a: float, sd_b: float, n_a: int, n_b: int, target: float,
                   test: str = "welch", k: int = 2, alpha: float = ALPHA,
                   power: float = POWER, reps: int = REPS) -> Power:
    """Power figures of a Welch test (two arms) or a Games-Howell pair (among `k` arms) at
    `alpha` (the strictest Holm step where the report adjusts): NaN / None for n < 2 or no
    spread in either arm."""
    low_f, high_f = sd_interval(n_a + n_b - 2)
    if min(n_a, n_b) < 2 or not (sd_a > 0 or sd_b > 0):
        return Power(test, alpha, math.nan, math.nan, math.nan, None, None, None)
    detectable = _simulated_detectable(sd_a, sd_b, n_a, n_b, test, k, alpha, power, reps)
    needed = [_unpaired_needed(target, sd_a * f, sd_b * f, test, k, alpha, power, reps // 4)
              for f in (1.0, low_f, high_f)]
    return Power(test, alpha, detectable, detectable * low_f, detectable * high_f, *needed)


def paired_power_figures(sd_diff: float, n: int, target: float, alpha: float = ALPHA,
                         power: float = POWER) -> Power:
    """Power figures of a paired t-test of n pairs at `alpha` (exact noncentral t)."""
    low_f, high_f = sd_interval(n - 1)
    if n < 2 or not sd_diff > 0:
        return Power("paired", alpha, math.nan, math.nan, math.nan, None, None, None)
    detectable = _paired_detectable(sd_diff, n, alpha, power)

    def needed(sd: float) -> int | None:
        if target <= 0:
            return None
        return _smallest(lambda m: paired_power(target, sd, m, alpha) >= power, 2)

    return Power("paired", alpha, detectable, detectable * low_f, detectable * high_f,
                 needed(sd_diff), needed(sd_diff * low_f), needed(sd_diff * high_f))
