"""The clinical readout's numbers, each against an independent computation (scipy, or the
definition written out as a loop), and its reading of the per-image scores runs save."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import clinical
from analysis.clinical import SeedScores
from study.core.names import PREDICTIONS_FILE


def _draw(rng: np.random.Generator, n: int, prevalence: float, signal: float, ties: bool
          ) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.random(n) < prevalence
    prob = 1 / (1 + np.exp(-(rng.normal(size=n) + signal * (2 * labels - 1))))
    if ties:  # as saved: float16, so neighbouring scores tie
        prob = prob.astype(np.float16).astype(float)
    return labels, prob


def scores(seed: int, n: int = 300, prevalence: float = 0.4, signal: float = 1.2,
           ties: bool = True) -> SeedScores:
    """A run's test scores and (from the same model, other images) its validation scores."""
    rng = np.random.default_rng(seed)
    labels, prob = _draw(rng, n, prevalence, signal, ties)
    val_labels, val_prob = _draw(rng, n // 2, prevalence, signal, ties)
    return SeedScores(seed, prob, prob >= 0.5, labels, val_prob, val_labels)


def test_auroc_is_mann_whitney_with_ties() -> None:
    s = scores(1)
    assert len(np.unique(s.prob)) < len(s.prob)  # the case that needs care
    u = stats.mannwhitneyu(s.prob[s.labels], s.prob[~s.labels]).statistic
    expected = u / (s.labels.sum() * (~s.labels).sum())
    assert clinical.auroc(s.labels, s.prob) == pytest.approx(expected, abs=1e-12)
    assert math.isnan(clinical.auroc(np.ones(5, bool), np.linspace(0, 1, 5)))
    fpr, tpr = clinical.roc_curve(s.labels, s.prob)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


def test_average_precision_is_its_definition() -> None:
    s = scores(2)
    positives = s.labels.sum()
    expected, recall_before = 0.0, 0.0
    for t in sorted(set(s.prob), reverse=True):  # every distinct threshold, highest first
        flagged = s.prob >= t
        tp = np.sum(flagged & s.labels)
        recall, precision = tp / positives, tp / flagged.sum()
        expected += (recall - recall_before) * precision
        recall_before = recall
    assert clinical.average_precision(s.labels, s.prob) == pytest.approx(expected, abs=1e-12)
    # a perfect ranking has precision 1 at every recall
    assert clinical.average_precision(s.labels, s.labels * 0.5 + 0.25) == pytest.approx(1.0)


def test_calibration_error_and_brier_are_their_definitions() -> None:
    s = scores(3, ties=False)
    table, ece, brier = clinical.calibration(s.labels, s.prob)
    expected = 0.0
    for b in range(10):
        inside = (s.prob >= b / 10) & ((s.prob < (b + 1) / 10) if b < 9 else (s.prob <= 1))
        if inside.any():
            expected += inside.sum() / len(s.prob) * abs(s.labels[inside].mean()
                                                         - s.prob[inside].mean())
            assert table.loc[b, "n"] == inside.sum()
    assert ece == pytest.approx(expected, abs=1e-12)
    assert brier == pytest.approx(np.mean((s.prob - s.labels) ** 2), abs=1e-12)
    assert table["n"].sum() == len(s.prob)
    # perfectly calibrated in expectation: P itself decides the label
    rng = np.random.default_rng(0)
    p = rng.random(200_000)
    assert clinical.calibration(rng.random(200_000) < p, p)[1] < 0.01


def test_rates_and_their_intervals() -> None:
    seeds = [scores(s) for s in (4, 5, 6)]
    table = clinical.readout(seeds).table.set_index("metric")
    per_seed = []
    for s in seeds:
        tp = np.sum(s.predicted & s.labels)
        tn = np.sum(~s.predicted & ~s.labels)
        fp = np.sum(s.predicted & ~s.labels)
        fn = np.sum(~s.predicted & s.labels)
        per_seed.append({"sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp),
                         "ppv": tp / (tp + fp), "npv": tn / (tn + fn)})
    frame = pd.DataFrame(per_seed)
    for name in frame:
        values = frame[name].to_numpy()
        assert table.loc[name, "mean"] == pytest.approx(values.mean())
        t = stats.t.ppf(0.975, len(values) - 1)
        assert table.loc[name, "seed_ci"] == pytest.approx(
            t * values.std(ddof=1) / math.sqrt(len(values)))
        assert table.loc[name, "per_seed"] == [round(v, 4) for v in values]
    # sensitivity over the test images: Clopper-Pearson at the seed-mean counts
    positives = [int(s.labels.sum()) for s in seeds]
    k = round(np.mean([np.sum(s.predicted & s.labels) for s in seeds]))
    n = round(np.mean(positives))
    low = stats.beta.ppf(0.025, k, n - k + 1)
    high = stats.beta.ppf(0.975, k + 1, n - k)
    assert table.loc["sensitivity", "test_ci"] == pytest.approx((high - low) / 2, rel=1e-6)
    assert table.loc["sensitivity", "combined_ci"] == pytest.approx(
        math.hypot(table.loc["sensitivity", "seed_ci"], table.loc["sensitivity", "test_ci"]))
    assert math.isnan(table.loc["auroc", "test_ci"])  # no binomial interval for an area
    assert table.loc["auroc", "mean"] == pytest.approx(
        np.mean([clinical.auroc(s.labels, s.prob) for s in seeds]))


def save_scores(folder: Path, seeds: list[SeedScores]) -> None:
    """The file a trial writes (study.training.checkpoint.save_predictions' layout)."""
    folder.mkdir(parents=True)
    buffer = io.BytesIO()
    val = {} if seeds[0].val_prob is None else {
        "val_prob": np.stack([s.val_prob for s in seeds]).astype(np.float16),
        "val_labels": seeds[0].val_labels.astype(np.uint8)}
    np.savez(buffer, prob=np.stack([s.prob for s in seeds]).astype(np.float16),
             predicted=np.stack([s.predicted for s in seeds]).astype(np.uint8),
             labels=seeds[0].labels.astype(np.uint8),
             seeds=np.asarray([s.seed for s in seeds], dtype=np.int64), **val)
    (folder / PREDICTIONS_FILE).write_bytes(buffer.getvalue())


def test_the_best_configurations_runs_are_read_from_their_trials(tmp_path: Path) -> None:
    base = scores(7)
    stacked = [base._replace(seed=s, prob=np.clip(base.prob + 0.01 * s, 0, 1)) for s in (0, 1)]
    save_scores(tmp_path / "trial_a" / "checkpoint_000003", stacked)
    save_scores(tmp_path / "trial_b" / "checkpoint_000003", [base._replace(seed=5)])
    (tmp_path / "trial_c" / "checkpoint_000001").mkdir(parents=True)  # saved nothing
    runs = pd.DataFrame({"trial_id": ["a", "a", "b", "c", "other"],
                         "seed": [0, 1, 5, 9, 0],
                         "trial_dir": ["trial_a", "trial_a", "trial_b", "trial_c", "trial_x"]})
    best = {"trial_ids": ["a", "b", "c"], "seeds": [0, 1, 5, 9]}
    found = clinical.collect_clinical(tmp_path, runs, best)
    assert found is not None
    assert [s.seed for s in found.seeds] == [0, 1, 5]
    assert np.allclose(found.seeds[1].prob, stacked[1].prob.astype(np.float16), atol=1e-3)
    assert np.array_equal(found.seeds[2].val_labels, base.val_labels)
    assert np.allclose(found.seeds[2].val_prob, base.val_prob, atol=1e-3)
    assert clinical.collect_clinical(tmp_path, runs, best, "youden").rule == "youden"
    assert clinical.collect_clinical(tmp_path, runs, None) is None
    assert clinical.collect_clinical(tmp_path, runs, {"trial_ids": ["c"], "seeds": [9]}) is None
    (tmp_path / "trial_b" / "checkpoint_000003" / PREDICTIONS_FILE).write_bytes(b"not npz")
    again = clinical.collect_clinical(tmp_path, runs, best)
    assert again is not None and [s.seed for s in again.seeds] == [0, 1]
    lines = "\n".join(clinical.clinical_section(again, {"clinical_best.png": "the figure"}))
    assert "from each of its 2 run(s)" in lines and "](figures/clinical_best.png)" in lines
    assert "| Sensitivity | " in lines and "| Brier score | " in lines


def test_the_threshold_is_the_trials_decision_rule() -> None:
    from study.training.metrics import THRESHOLD

    assert clinical.DECISION_THRESHOLD == THRESHOLD


def test_the_figure_draws_every_panel() -> None:
    found = clinical.readout([scores(s) for s in (8, 9)])
    fig = clinical.plot_clinical(found)
    try:
        titles = [ax.get_title() for ax in fig.axes]
        assert titles[0] == "ROC curve (test)" and "Precision-recall" in titles[1]
        assert "Confusion matrix at the threshold 0.5 (the trials' own)" in titles[2]
        assert "ECE" in titles[3]
        counts = [float(t.get_text()) for t in fig.axes[2].texts]
        assert sum(counts) == pytest.approx(300)  # mean counts over seeds: every test image
    finally:
        from analysis.plotting import plt

        plt.close(fig)


def _rates(labels: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    return (float(np.mean(predicted[labels])), float(np.mean(~predicted[~labels])))


@pytest.mark.parametrize("rule", ["youden", "sensitivity:0.9", "specificity:0.85", "0.3"])
def test_the_threshold_is_chosen_on_validation_by_its_rule(rule: str) -> None:
    from study.core.threshold import parse_threshold

    s = scores(10)
    parsed = parse_threshold(rule)
    t = clinical.choose_threshold(parsed, s.val_labels, s.val_prob)
    # the rule's definition, by brute force over every candidate threshold
    candidates = sorted(set(s.val_prob)) + [np.nextafter(max(s.val_prob), 2)]
    rates = {c: _rates(s.val_labels, s.val_prob >= c) for c in candidates}
    if parsed.kind == "youden":
        best = max(sens + spec for sens, spec in rates.values())
        assert sum(rates[t]) == pytest.approx(best)
    elif parsed.kind == "sensitivity":
        assert rates[t][0] >= 0.9
        assert t == max(c for c, (sens, _) in rates.items() if sens >= 0.9)
    elif parsed.kind == "specificity":
        assert rates[t][1] >= 0.85
        assert t == min(c for c, (_, spec) in rates.items() if spec >= 0.85)
    else:
        assert t == 0.3
    found = clinical.readout([s], rule)
    assert found.thresholds == [t] and found.rule == str(parsed)
    table = found.table.set_index("metric")
    sens, spec = _rates(s.labels, s.prob >= t)  # applied to test, never chosen there
    assert table.loc["sensitivity", "mean"] == pytest.approx(sens)
    assert table.loc["specificity", "mean"] == pytest.approx(spec)
    assert table.loc["threshold", "per_seed"] == [round(t, 4)]
    words = "\n".join(clinical.clinical_section(found, {}))
    assert {"youden": "maximising Youden's J", "sensitivity:0.9": "keeping sensitivity >= 0.9",
            "specificity:0.85": "keeping specificity >= 0.85", "0.3": "threshold 0.3"}[rule] \
        in words
    clinical.plot_clinical(clinical.readout([s, scores(12)], rule))
    from analysis.plotting import plt

    plt.close("all")


def test_a_rule_needs_the_runs_validation_scores() -> None:
    s = scores(11)._replace(val_prob=None, val_labels=None)
    found = clinical.readout([s], "youden")
    assert found.thresholds == [0.5] and found.rule == "0.5"
    assert "saved no validation scores" in found.note and "not youden" in found.note
    section = "\n".join(clinical.clinical_section(found, {}))
    assert "Note: the runs saved no validation scores" in section


@pytest.mark.parametrize("text", ["0", "1", "1.5", "youden:2", "sensitivity", "spec:0.9",
                                  "sensitivity:0", "sensitivity:1.1", "nan", ""])
def test_a_bad_threshold_rule_is_refused_with_what_is_accepted(text: str) -> None:
    from study.core.threshold import parse_threshold

    with pytest.raises(ValueError, match="must be youden, sensitivity:S, specificity:S"):
        parse_threshold(text)
