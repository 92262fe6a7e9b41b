"""Small statistics for repeats: mean, standard deviation, t-based 95 % CI, and arm comparisons.

Two arms are compared with Welch's t-test (no equal-variance assumption: arms such as batch size
2 and 128 need not spread alike); more than two with a one-way ANOVA. Each comparison ends in a
plain sentence a reader of the homework can quote.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats

ALPHA = 0.05


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


class ArmTest(NamedTuple):
    """The outcome of comparing arms: which test, its statistic and p-value, and a verdict."""

    test: str  # "welch", "anova", or "none" when no test could be run
    statistic: float
    p_value: float
    ns: tuple[int, ...]  # finite values per arm, in the order the arms were given
    verdict: str


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
    std = float(x.std(ddof=1))
    t = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1))
    return MeanCI(float(x.mean()), std, t * std / math.sqrt(n), n)


def _format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"


def _format_n(ns: Sequence[int]) -> str:
    return f"n = {ns[0]} per arm" if len(set(ns)) == 1 else f"n = {'/'.join(map(str, ns))}"


def compare_arms(arms: Mapping[str, Sequence[float]], alpha: float = ALPHA) -> ArmTest:
    """Compare the arms' values: Welch's t-test for two arms, one-way ANOVA for more.

    Returns the test, its statistic and p-value, and a verdict such as
    "no significant difference at alpha = 0.05 (p = 0.41, n = 3 per arm)". Arms need at least
    two finite values each; otherwise the verdict says why no test was run.
    """
    names = list(arms)
    samples = [finite(arms[name]) for name in names]
    ns = tuple(len(s) for s in samples)
    if len(samples) < 2:
        return ArmTest("none", math.nan, math.nan, ns,
                          f"not tested: {len(samples)} arm(s), a comparison needs two")
    if min(ns) < 2:
        short = ", ".join(f"{name} (n = {n})" for name, n in zip(names, ns, strict=True) if n < 2)
        return ArmTest("none", math.nan, math.nan, ns,
                          f"not tested: fewer than 2 values in {short}")
    test = "welch" if len(samples) == 2 else "anova"
    if all(np.ptp(s) == 0 for s in samples):
        # Every arm constant: the tests divide by zero variance. Equal constants are no
        # difference at all; different constants are as different as data can be.
        if len({float(s[0]) for s in samples}) == 1:
            return ArmTest(test, math.nan, 1.0, ns,
                              f"no difference: every value is {samples[0][0]:g} "
                              f"({_format_n(ns)})")
        return ArmTest(test, math.inf, 0.0, ns,
                          f"significant difference at alpha = {alpha:g} (every arm constant, "
                          f"zero variance, {_format_n(ns)})")
    with warnings.catch_warnings():
        # scipy warns of precision loss when values are nearly identical; p stays usable
        warnings.simplefilter("ignore", RuntimeWarning)
        if test == "welch":
            statistic, p = stats.ttest_ind(samples[0], samples[1], equal_var=False)
        else:
            statistic, p = stats.f_oneway(*samples)
    statistic, p = float(statistic), float(p)
    if p < alpha:
        means = [float(s.mean()) for s in samples]
        order = f"highest: {names[int(np.argmax(means))]}"
        if len(samples) > 2:
            order += f", lowest: {names[int(np.argmin(means))]}"
        verdict = (f"significant difference at alpha = {alpha:g} ({_format_p(p)}, "
                   f"{_format_n(ns)}; {order})")
    else:
        verdict = (f"no significant difference at alpha = {alpha:g} ({_format_p(p)}, "
                   f"{_format_n(ns)})")
    return ArmTest(test, statistic, p, ns, verdict)
