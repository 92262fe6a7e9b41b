"""Small statistics for repeats: CIs, arm comparisons, effect sizes, power, many-test adjustment.

What a comparison of arms (seeds of one setting against seeds of another) reports, and why:

- **Difference of means with its 95 % CI** from Welch's t (no equal-variance assumption: at
  n = 3 an arm such as batch size 2 spreads twenty times wider than batch size 128).
- **Hedges' g**, the standardised difference with its small-sample correction (Cohen's d
  overstates the effect by about 20 % at n = 3 per arm).
- **More than two arms: Games-Howell pairs.** Tukey's HSD assumes every arm spreads alike and
  uses one pooled variance; with unequal spreads its intervals are too narrow for the wide arm
  and too wide for the narrow ones. Games-Howell gives each pair its own Welch standard error
  and degrees of freedom and takes its critical value from the studentized range over all the
  comparison's arms, so its pairs are already adjusted among themselves. The comparison's own
  p-value is its smallest pair p-value (the range test of "all arms equal").
- **Holm across the report**: one p-value per comparison, adjusted together, so three
  comparisons at alpha 0.05 do not give three 5 % chances of a false "significant". A pair of a
  many-arm comparison is read only where its comparison is significant after Holm; its adjusted
  p-value is the larger of its Games-Howell p and its comparison's Holm-adjusted p.
- **Could we have seen it**: the smallest difference the test that was run (Welch, or a
  Games-Howell pair among the comparison's arms, at the strictest Holm step of the report)
  detects with 80 % power at the observed n and spreads, and the seeds per arm a stated
  difference (2 points by default) would need, each with its range over the SD's own 95 %
  interval (`analysis.power`: simulated, since Welch's df is estimated too).
- **No spread in one arm** (every seed the same: an arm collapsed to the majority class) is
  compared: the other arm's spread carries the test. Only an arm with fewer than two values,
  or a pair whose arms both have no spread, gets "cannot tell".
- **Arms that share seeds** are compared paired (`analysis.paired`), which uses this module's
  types and verdicts.

`collect`-style functions return NamedTuples; nothing here draws or prints.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from scipy import special, stats

from analysis.power import ALPHA, POWER, Power, unpaired_power
from study.search.seed_rule import half_width

TARGET_DIFFERENCE = 2.0  # points of accuracy: the difference the seeds-needed column is for


class MeanCI(NamedTuple):
    """Mean, sample standard deviation, CI half-width (t distribution) and n."""

    mean: float
    std: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width


class PairTest(NamedTuple):
    """Two arms a and b compared: difference a - b with its CI, effect size, test and power."""

    a: str
    b: str
    n_a: int
    n_b: int
    difference: float  # mean(a) - mean(b)
    low: float  # 95 % CI of the difference: Welch (two arms) or Games-Howell (more)
    high: float
    hedges_g: float  # standardised difference (pooled SD), small-sample corrected
    statistic: float  # Welch's t of a - b
    df: float  # Welch-Satterthwaite degrees of freedom
    p_value: float  # Welch (two arms) or Games-Howell (adjusted over the comparison's pairs)
    p_adjusted: float  # after Holm across the report (NaN until `adjust_holm`)
    detectable: float  # smallest difference the test run finds with 80 % power (points)
    seeds_needed: int | None  # seeds per arm (pairs) for 80 % power at TARGET_DIFFERENCE
    target: float  # the difference `seeds_needed` is for
    power: Power | None = None  # the figures with their ranges, and the test they are for
    sd_a: float = math.nan
    sd_b: float = math.nan
    test: str = "welch"  # "welch", "games-howell", "paired" (this pair's own test)
    correlation: float = math.nan  # paired: the seeds' correlation between the two arms
    sd_diff: float = math.nan  # paired: SD of the per-seed differences
    arms: int = 2  # arms of the comparison the pair belongs to


class ArmTest(NamedTuple):
    """The outcome of comparing arms: which test, its statistic and p-values, pairs, verdict."""

    test: str  # "welch", "games-howell", or "none" when no test could be run
    statistic: float
    p_value: float
    ns: tuple[int, ...]  # finite values per arm, in the order the arms were given
    verdict: str
    pairs: tuple[PairTest, ...] = ()
    p_adjusted: float = math.nan  # Holm-adjusted across the report (NaN until adjusted)
    family: int = 1  # how many comparisons were adjusted together
    excluded: tuple[str, ...] = ()  # arms left out of the test, with the reason
    means: tuple[tuple[str, float], ...] = ()  # (arm, mean) of the arms tested
    why: str = ""  # why this test: seeds shared across arms or not
    flat: tuple[str, ...] = ()  # arms compared although every value is the same


def finite(values: Sequence[float]) -> np.ndarray:
    """Return the finite values of `values` (None, NaN and inf dropped) as a float array."""
    out = []
    for v in values:
        if v is None:
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out.append(f)
    return np.asarray(out, dtype=float)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> MeanCI:
    """Return the mean and its `confidence` CI from the t distribution; NaN width for n < 2."""
    x = finite(values)
    n = len(x)
    if n == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0)
    if n == 1:
        return MeanCI(float(x[0]), math.nan, math.nan, 1)
    return MeanCI(float(x.mean()), float(x.std(ddof=1)), half_width(x, confidence), n)


# --- effect size, power -------------------------------------------------------------------


def hedges_g(a: Sequence[float], b: Sequence[float]) -> float:
    """Return Hedges' g of a - b: Cohen's d (pooled SD) times the exact correction J(df).

    J(df) = Gamma(df/2) / (sqrt(df/2) Gamma((df-1)/2)), df = n_a + n_b - 2 (Hedges 1981);
    the familiar 1 - 3/(4 df - 1) approximates it. NaN for n < 2 or zero pooled SD.
    """
    x, y = finite(a), finite(b)
    df = len(x) + len(y) - 2
    if len(x) < 2 or len(y) < 2:
        return math.nan
    pooled = math.sqrt(((len(x) - 1) * x.var(ddof=1) + (len(y) - 1) * y.var(ddof=1)) / df)
    if pooled == 0:
        return math.nan
    j = math.exp(special.gammaln(df / 2) - special.gammaln((df - 1) / 2)) / math.sqrt(df / 2)
    return float(j * (x.mean() - y.mean()) / pooled)


def _welch_se_df(sd_a: float, sd_b: float, n_a: int, n_b: int) -> tuple[float, float]:
    va, vb = sd_a**2 / n_a, sd_b**2 / n_b
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    return se, df


def pair_power(pair: PairTest, alpha: float = ALPHA) -> Power:
    """The power figures of `pair` for the test it ran, at `alpha` (a Holm step)."""
    from analysis.power import paired_power_figures

    if pair.test == "paired":
        return paired_power_figures(pair.sd_diff, pair.n_a, pair.target, alpha)
    return unpaired_power(pair.sd_a, pair.sd_b, pair.n_a, pair.n_b, pair.target, pair.test,
                          pair.arms, alpha)


def with_power(pair: PairTest, alpha: float = ALPHA) -> PairTest:
    """`pair` with its power figures (detectable, seeds needed, their ranges) at `alpha`."""
    power = pair_power(pair, alpha)
    return pair._replace(power=power, detectable=power.detectable,
                         seeds_needed=power.seeds_needed)


# --- comparisons --------------------------------------------------------------------------


def _format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.1 else f"p = {p:.2f}"


def _format_n(ns: Sequence[int]) -> str:
    return f"n = {ns[0]} per arm" if len(set(ns)) == 1 else f"n = {'/'.join(map(str, ns))}"


def _unusable(name: str, x: np.ndarray) -> str | None:
    return f"{name} (n = {len(x)})" if len(x) < 2 else None


def _flat(name: str, x: np.ndarray) -> str | None:
    return f"{name} (every value {x[0]:g}, no spread)" if len(x) and np.ptp(x) == 0 else None


def _pair(name_a: str, name_b: str, x: np.ndarray, y: np.ndarray, p_value: float,
          low: float, high: float, target: float, test: str = "welch", arms: int = 2
          ) -> PairTest:
    sd_a, sd_b = float(x.std(ddof=1)), float(y.std(ddof=1))
    se, df = _welch_se_df(sd_a, sd_b, len(x), len(y))
    diff = float(x.mean() - y.mean())
    pair = PairTest(name_a, name_b, len(x), len(y), diff, low, high, hedges_g(x, y), diff / se,
                    df, p_value, math.nan, math.nan, None, target, sd_a=sd_a, sd_b=sd_b,
                    test=test, arms=arms)
    return with_power(pair)


def welch_pair(name_a: str, x: np.ndarray, name_b: str, y: np.ndarray,
               target: float = TARGET_DIFFERENCE, confidence: float = 0.95) -> PairTest:
    """Welch's t-test of a - b with its CI (scipy), Hedges' g and power figures."""
    with warnings.catch_warnings():
        # scipy warns of precision loss when values are nearly identical; p stays usable
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_ind(x, y, equal_var=False)
        ci = result.confidence_interval(confidence)
    return _pair(name_a, name_b, x, y, float(result.pvalue), float(ci.low), float(ci.high),
                 target)


def games_howell(samples: Mapping[str, np.ndarray], target: float = TARGET_DIFFERENCE,
                 confidence: float = 0.95) -> list[PairTest]:
    """Games-Howell: every pair a - b with its own Welch SE and df; p and simultaneous CI from
    the studentized range over all k arms (scipy has Tukey's HSD, which pools the variances,
    but not this unequal-variance form, so the few lines are written here)."""
    names = list(samples)
    k = len(names)
    pairs = []
    for i in range(k):
        for j in range(i + 1, k):
            x, y = samples[names[i]], samples[names[j]]
            if np.ptp(x) == 0 and np.ptp(y) == 0:
                continue  # neither arm spreads: no standard error, "cannot tell" for the pair
            se, df = _welch_se_df(float(x.std(ddof=1)), float(y.std(ddof=1)), len(x), len(y))
            diff = float(x.mean() - y.mean())
            q = abs(diff) / se * math.sqrt(2)
            p = float(stats.studentized_range.sf(q, k, df))
            half = float(stats.studentized_range.ppf(confidence, k, df)) / math.sqrt(2) * se
            pairs.append(_pair(names[i], names[j], x, y, min(1.0, p), diff - half, diff + half,
                               target, "games-howell", k))
    return pairs


def compare_arms(arms: Mapping[str, Sequence[float]], alpha: float = ALPHA,
                 target: float = TARGET_DIFFERENCE) -> ArmTest:
    """Compare the arms' values: Welch's t-test for two arms, Games-Howell pairs for more.

    Returns the test, its statistic and p-value (for more arms: the smallest pair p-value),
    every pair with difference, CI, Hedges' g, detectable difference and seeds needed, and a
    verdict at `alpha` before any adjustment (`adjust_holm` rewrites it for a report). An arm
    with fewer than two values is left out; an arm without spread is compared on the other
    arms' spread; with fewer than two arms left, or none that spreads, the verdict is
    "cannot tell".
    """
    names = list(arms)
    samples = {name: finite(arms[name]) for name in names}
    ns = tuple(len(s) for s in samples.values())
    if len(samples) < 2:
        return ArmTest("none", math.nan, math.nan, ns,
                       f"cannot tell: {len(samples)} arm(s), a comparison needs two")
    excluded = tuple(r for name, s in samples.items() if (r := _unusable(name, s)))
    usable = {name: s for name, s in samples.items() if _unusable(name, s) is None}
    flat = tuple(r for name, s in usable.items() if (r := _flat(name, s)))
    if len(usable) < 2 or len(flat) == len(usable):
        return ArmTest("none", math.nan, math.nan, ns,
                       "cannot tell: too few values or no spread in "
                       + ", ".join([*excluded, *flat]), excluded=(*excluded, *flat))
    if len(usable) == 2:
        (name_a, x), (name_b, y) = usable.items()
        pairs = [welch_pair(name_a, x, name_b, y, target)]
        test, statistic = "welch", pairs[0].statistic
    else:
        pairs = games_howell(usable, target)
        test = "games-howell"
        statistic = max(abs(p.statistic) for p in pairs) * math.sqrt(2)  # studentized range q
    p_value = min(p.p_value for p in pairs)
    means = tuple((name, float(s.mean())) for name, s in usable.items())
    result = ArmTest(test, float(statistic), float(p_value), ns, "", tuple(pairs),
                     excluded=excluded, means=means, flat=flat)
    return result._replace(verdict=verdict(result, alpha))


def verdict(result: ArmTest, alpha: float = ALPHA) -> str:
    """A plain sentence for `result`, using its Holm-adjusted p-value where it has one."""
    if result.test == "none":
        return result.verdict
    means = dict(result.means)
    adjusted = not math.isnan(result.p_adjusted)
    p = result.p_adjusted if adjusted else result.p_value
    n_of = {q.a: q.n_a for q in result.pairs} | {q.b: q.n_b for q in result.pairs}
    where = f"{_format_p(result.p_value)}, {_format_n([n_of[name] for name in means])}"
    if adjusted and result.family > 1:
        where += f"; Holm-adjusted over {result.family} comparisons: {_format_p(p)}"
    tail = "; cannot tell for " + ", ".join(result.excluded) if result.excluded else ""
    if result.flat:
        tail += ("; no spread in " + ", ".join(result.flat)
                 + ": its SD of 0 is an estimate too, so the test leans on the other arm's")
    if p < alpha:
        order = f"highest: {max(means, key=means.get)}"
        if len(means) > 2:
            order += f", lowest: {min(means, key=means.get)}"
            sig = [f"{q.a} vs {q.b}" for q in result.pairs
                   if max(q.p_value, p) < alpha]
            order += "; pairs that differ: " + ", ".join(sig)
        return f"significant difference at alpha = {alpha:g} ({where}; {order}){tail}"
    detectable = [q.detectable for q in result.pairs if math.isfinite(q.detectable)]
    power = ""
    if detectable:
        low, high = min(detectable), max(detectable)
        size = (f"a difference of {low:.1f} points" if len(detectable) == 1
                else f"differences of {low:.1f} to {high:.1f} points")
        kind = result.pairs[0].test if result.pairs else result.test
        power = (f"; at this n only {size} or more would be found with {POWER * 100:g} % power "
                 f"by the {kind} test")
    return f"no significant difference at alpha = {alpha:g} ({where}){power}{tail}"


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment; NaN p-values (no test) stay NaN and do not count.

    scipy has only false-discovery-rate adjustments (`false_discovery_control`), and
    statsmodels' `multipletests` would be a dependency for these few lines.
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    index = np.flatnonzero(~np.isnan(p))
    m = len(index)
    order = index[np.argsort(p[index], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, (m - rank) * p[i])
        out[i] = min(1.0, running)
    return out


def _adjusted_pair(pair: PairTest, p_comparison: float, family: int,
                   alpha: float) -> PairTest:
    """A pair read after Holm: its adjusted p, and its power at the strictest Holm step
    (alpha / family for the comparison; a paired many-arm pair also alpha / its pairs)."""
    pair = pair._replace(p_adjusted=float(max(pair.p_value, p_comparison)))
    steps = family
    if pair.test == "paired" and pair.arms > 2:
        steps = pair.arms * (pair.arms - 1) // 2
    return with_power(pair, alpha / max(1, steps)) if steps > 1 else pair


def adjust_holm(results: Sequence[ArmTest], alpha: float = ALPHA) -> list[ArmTest]:
    """Adjust the comparisons of one report together (Holm) and rewrite their verdicts.

    Every pair gets an adjusted p-value: for two arms the comparison's; for more, the larger
    of its Games-Howell p and its comparison's adjusted p (a pair is read only where its
    comparison is significant). Each pair's power figures are recomputed at the strictest
    Holm step of the family (`_adjusted_pair`).
    """
    adjusted = holm([r.p_value for r in results])
    family = int(np.sum(~np.isnan(adjusted)))
    out = []
    for result, p_adj in zip(results, adjusted, strict=True):
        if result.test == "none":
            out.append(result._replace(family=family))
            continue
        pairs = tuple(_adjusted_pair(q, float(p_adj), family, alpha) for q in result.pairs)
        updated = result._replace(pairs=pairs, p_adjusted=float(p_adj), family=family)
        out.append(updated._replace(verdict=verdict(updated, alpha)))
    return out
