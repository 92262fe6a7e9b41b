"""Small statistics for repeats: mean, standard deviation and t-based 95 % CI."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats


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


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> MeanCI:
    """Return the mean and its `confidence` CI from the t distribution; NaN width for n < 2."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = len(x)
    if n == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0)
    if n == 1:
        return MeanCI(float(x[0]), math.nan, math.nan, 1)
    std = float(x.std(ddof=1))
    t = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1))
    return MeanCI(float(x.mean()), std, t * std / math.sqrt(n), n)
