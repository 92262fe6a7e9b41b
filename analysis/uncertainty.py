"""Two uncertainties of a test accuracy: the seeds', and the finite test set's.

The seed CI (t interval over an arm's seeds) says how much another set of seeds could move the
mean, on these test images. It is conditional on the one test set: on 624 images at 85 % the
binomial standard error alone is 1.4 points, which more seeds never shrink. So each arm and the
best configuration also get:

- **the test-set CI**: a bootstrap over test images of the seed-mean accuracy, from the runs'
  saved per-image predictions (the same images for every seed, so an image's correctness is
  averaged over seeds first); where no predictions were saved, the exact (Clopper-Pearson)
  binomial interval of the mean accuracy over the number of test images;
- **one combined interval**, the two half-widths added in quadrature (independent sources,
  normal approximation).

The validation-test gap is judged the same way (`gap_noise`): against the seed spread of the
per-seed gaps *and* both finite image sets, so a gap that two samples of images make alone is
not called a sign of selection or shift.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats

from analysis.stats import finite, mean_ci

BOOTSTRAP = 4_000  # resamples of the test images
BOOT_SEED = 7_919  # one fixed stream: the same interval every report


class TestSetCI(NamedTuple):
    """The test-set interval of a mean accuracy (points) and how it was computed."""

    low: float
    high: float
    half_width: float  # half the interval's length
    method: str  # "bootstrap over N test images" or "exact binomial over N test images"


def test_set_ci(mean: float, n_images: int | None, correct: Sequence[np.ndarray] = (),
                confidence: float = 0.95) -> TestSetCI:
    """The `confidence` interval of the seed-mean test accuracy (`mean`, points) from the
    finite test set: a percentile bootstrap over images of `correct` (one 0/1 array per seed,
    the same images in the same order), else Clopper-Pearson over `n_images`."""
    rows = [np.asarray(c, dtype=float) for c in correct if c is not None and len(c)]
    if rows and len({len(r) for r in rows}) == 1:
        per_image = np.mean(rows, axis=0)  # each image's correctness, averaged over seeds
        n = len(per_image)
        draws = bootstrap_means(per_image, np.random.default_rng(BOOT_SEED)) * 100
        tail = (1 - confidence) / 2
        low, high = np.quantile(draws, [tail, 1 - tail])
        return TestSetCI(float(low), float(high), float(high - low) / 2,
                         f"bootstrap over {n} test images")
    if not n_images or not math.isfinite(mean):
        return TestSetCI(math.nan, math.nan, math.nan, "unknown (number of test images)")
    k = int(round(mean / 100 * n_images))
    ci = stats.binomtest(k, n_images).proportion_ci(confidence, method="exact")
    return TestSetCI(ci.low * 100, ci.high * 100, (ci.high - ci.low) * 50,
                     f"exact binomial over {n_images} test images")


def bootstrap_means(values: np.ndarray, rng: np.random.Generator,
                    resamples: int = BOOTSTRAP) -> np.ndarray:
    """The means of `resamples` bootstrap resamples of `values` (drawn with replacement, as
    many as there are values). A resample is fixed by how often it draws each distinct value,
    which is multinomial: drawn so, seed-averaged 0/1 scores (a few distinct values) cost
    microseconds where drawing every image index cost a fiftieth of a second."""
    distinct, counts = np.unique(np.asarray(values, dtype=float), return_counts=True)
    n = int(counts.sum())
    return rng.multinomial(n, counts / n, size=resamples) @ distinct / n


def combined_half_width(seed_half: float, test_half: float) -> float:
    """Both half-widths in quadrature; the seed one alone where the test set's is unknown
    (NaN where the seeds' is: one seed gives no seed interval to combine)."""
    if not math.isfinite(test_half):
        return seed_half
    if not math.isfinite(seed_half):
        return math.nan
    return math.hypot(seed_half, test_half)


class GapNoise(NamedTuple):
    """The noise a validation-test gap is read against, as 95 % half-widths (points)."""

    seeds: float  # the t interval of the per-seed gaps
    validation_images: float  # binomial, the finite validation set
    test_images: float  # binomial, the finite test set
    total: float  # all three in quadrature


def gap_noise(gaps: Sequence[float], val: float, test: float, n_val: int | None,
              n_test: int | None, confidence: float = 0.95) -> GapNoise:
    """The 95 % half-width of the noise in a mean validation-test gap (points): the seeds'
    spread of the per-seed gaps (t interval) and each finite image set's binomial error at
    its accuracy (`val`, `test`, points), in quadrature. An unknown set size counts 0."""
    z = float(stats.norm.ppf(1 - (1 - confidence) / 2))
    seeds = mean_ci(list(finite(gaps)), confidence).half_width

    def images(acc: float, n: int | None) -> float:
        if not n or not math.isfinite(acc):
            return 0.0
        p = min(max(acc / 100, 0.0), 1.0)
        return z * math.sqrt(p * (1 - p) / n) * 100

    parts = (0.0 if not math.isfinite(seeds) else seeds, images(val, n_val),
             images(test, n_test))
    total = math.sqrt(sum(p * p for p in parts)) if any(parts) else math.nan
    return GapNoise(seeds, parts[1], parts[2], total)


def adaptive_coverage(target: float, sd: float, first: int, cap: int, reps: int = 20_000,
                      confidence: float = 0.95) -> float:
    """The simulated coverage of the 95 % t interval that `--repeats auto` ends with: seeds
    drawn one at a time from a normal with this `sd`, from `first` seeds on, until the
    half-width is at most `target` or `cap` seeds (the rule of `study.search.seed_rule`,
    without failures). Stopping when an interval happens to be narrow makes it cover less than
    `confidence`. NaN where `sd` is not positive."""
    if not (sd > 0 and math.isfinite(sd)) or cap < 2:
        return math.nan
    rng = np.random.default_rng([BOOT_SEED, first, cap])
    draws = rng.standard_normal((reps, cap)) * sd
    n = np.arange(1, cap + 1)
    sums, squares = np.cumsum(draws, 1), np.cumsum(draws**2, 1)
    means = sums / n
    with np.errstate(invalid="ignore", divide="ignore"):
        var = (squares - n * means**2) / (n - 1)
        t = stats.t.ppf(0.5 + confidence / 2, np.maximum(n - 1, 1))
        half = t * np.sqrt(np.maximum(var, 0) / n)
    judged = (n >= max(2, min(first, cap)))[None, :]
    done = judged & (half <= target)
    done[:, -1] = True  # the cap
    stop = done.argmax(1)
    rows = np.arange(reps)
    return float(np.mean(np.abs(means[rows, stop]) <= half[rows, stop]))


def difference_test_set_ci(per_image_a: np.ndarray, per_image_b: np.ndarray,
                           confidence: float = 0.95) -> float:
    """The test-set 95 % half-width (points) of the difference a - b of two arms' mean test
    accuracies scored on the same images: a bootstrap over images of each image's
    correctness difference (each arm's averaged over its seeds), so the images both arms find
    easy or hard cancel. NaN unless both cover the same number of images."""
    a, b = np.asarray(per_image_a, dtype=float), np.asarray(per_image_b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        return math.nan
    draws = bootstrap_means(a - b, np.random.default_rng(BOOT_SEED + 1)) * 100
    tail = (1 - confidence) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return float(high - low) / 2
