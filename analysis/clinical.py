"""The clinical readout of the best configuration, from its runs' saved per-image test scores.

Each run keeps, with its final checkpoint, one P(pneumonia) per test image for the weights it
was scored with, and the decision it took (PREDICTIONS_FILE). From those of the best
configuration's runs (one per seed) this module computes the ROC and precision-recall curves
with AUROC and average precision, the confusion matrix and sensitivity, specificity, PPV and
NPV at the trials' decision threshold, and calibration (a reliability diagram, expected
calibration error, Brier score); `clinical_section` writes them into report.md with 95 %
intervals over seeds and over the finite test set, and `plot_clinical` draws them, each seed a
thin line and their mean bold.

Written with numpy alone: these are a few cumulative sums over sorted scores, and the report
does not pay for scikit-learn's import (the tests check every number against independent
computations).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from analysis.plotting import plt
from analysis.predictions import from_predictions
from analysis.stats import mean_ci
from analysis.uncertainty import combined_half_width
from study.core.names import FIGURES_DIR
from study.core.threshold import ThresholdRule, parse_threshold

DECISION_THRESHOLD = 0.5  # the trials' rule (study.training.metrics.THRESHOLD; that imports torch)
DEFAULT_RULE = ThresholdRule("fixed", DECISION_THRESHOLD)
CALIBRATION_BINS = 10  # equal-width bins of P(pneumonia) for the reliability diagram and ECE
FIGURE = "clinical_best"  # figures/clinical_best.png


class SeedScores(NamedTuple):
    """One run's per-image test scores: P(pneumonia), the decision taken, the labels (1 =
    pneumonia), in the test set's order; and the same weights' validation scores and labels
    where the run saved them (they choose the operating threshold)."""

    seed: int
    prob: np.ndarray
    predicted: np.ndarray
    labels: np.ndarray
    val_prob: np.ndarray | None = None
    val_labels: np.ndarray | None = None


class Clinical(NamedTuple):
    """The readout of one configuration over its seeds, at its operating thresholds."""

    seeds: list[SeedScores]
    table: pd.DataFrame  # one row per metric: mean, seed_ci, test_ci, combined_ci, per_seed
    rule: str  # how each seed's threshold was chosen (study.core.threshold)
    thresholds: list[float]  # each seed's, chosen on its validation scores
    decided: list[np.ndarray]  # each seed's test decisions at its threshold
    note: str = ""  # why the rule asked for could not be applied, if it could not


def read_scores(trial_dir: Path, seed: Any) -> SeedScores | None:
    """Seed `seed`'s saved test scores from the trial's last checkpoint that holds them; None
    where none does or the file cannot be read (`predictions.from_predictions`)."""
    def scores(saved: Any) -> SeedScores:
        seeds = [int(s) for s in saved["seeds"]]
        index = seeds.index(int(seed)) if seed is not None and int(seed) in seeds else 0
        val = ((saved["val_prob"][index].astype(float), saved["val_labels"].astype(bool))
               if "val_prob" in saved.files and "val_labels" in saved.files else (None, None))
        return SeedScores(seeds[index], saved["prob"][index].astype(float),
                          saved["predicted"][index].astype(bool), saved["labels"].astype(bool),
                          *val)

    return from_predictions(trial_dir, scores)


# --- the numbers ----------------------------------------------------------------------------


def roc_curve(labels: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold, from (0, 0) to
    (1, 1); tied scores form one step, so the area is the Mann-Whitney AUROC."""
    tp, fp = _cumulative(labels, prob)
    return (np.r_[0.0, fp / fp[-1]] if fp[-1] else np.r_[0.0, fp],
            np.r_[0.0, tp / tp[-1]] if tp[-1] else np.r_[0.0, tp])


def auroc(labels: np.ndarray, prob: np.ndarray) -> float:
    """Area under the ROC curve; NaN where the test set lacks a class."""
    labels = np.asarray(labels, dtype=bool)
    if labels.all() or not labels.any():
        return math.nan
    fpr, tpr = roc_curve(labels, prob)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))  # the trapezoids


def pr_curve(labels: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) at every distinct threshold, highest first."""
    tp, fp = _cumulative(labels, prob)
    positives = tp[-1] if len(tp) else 0
    return tp / max(positives, 1), tp / np.maximum(tp + fp, 1)


def average_precision(labels: np.ndarray, prob: np.ndarray) -> float:
    """Average precision (the step area under the precision-recall curve: each threshold's
    precision weighted by the recall it adds); NaN without positives."""
    labels = np.asarray(labels, dtype=bool)
    if not labels.any():
        return math.nan
    recall, precision = pr_curve(labels, prob)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _cumulative(labels: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives above each distinct score, highest score first."""
    labels, prob = np.asarray(labels, dtype=bool), np.asarray(prob, dtype=float)
    order = np.argsort(-prob, kind="mergesort")
    prob, labels = prob[order], labels[order]
    last = np.r_[np.nonzero(np.diff(prob))[0], len(prob) - 1]  # each distinct score's end
    tp = np.cumsum(labels)[last].astype(float)
    return tp, (last + 1) - tp


def confusion(labels: np.ndarray, predicted: np.ndarray) -> dict[str, int]:
    """TP, FP, TN, FN of `predicted` (True = pneumonia)."""
    labels, predicted = np.asarray(labels, dtype=bool), np.asarray(predicted, dtype=bool)
    return {"tp": int(np.sum(predicted & labels)), "fp": int(np.sum(predicted & ~labels)),
            "tn": int(np.sum(~predicted & ~labels)), "fn": int(np.sum(~predicted & labels))}


def calibration(labels: np.ndarray, prob: np.ndarray, bins: int = CALIBRATION_BINS
                ) -> tuple[pd.DataFrame, float, float]:
    """The reliability table (per equal-width bin of P: its images, mean P, fraction that
    have pneumonia), the expected calibration error (the bins' |fraction - mean P| weighted
    by their images) and the Brier score (mean squared error of P)."""
    labels, prob = np.asarray(labels, dtype=float), np.asarray(prob, dtype=float)
    which = np.minimum((prob * bins).astype(int), bins - 1)  # P = 1 falls in the last bin
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(which, prob, bins) / count
        observed = np.bincount(which, labels, bins) / count
    table = pd.DataFrame({"low": np.arange(bins) / bins, "high": np.arange(1, bins + 1) / bins,
                          "n": count, "mean_p": mean_p, "observed": observed})
    filled = count > 0
    ece = float(np.sum(count[filled] * np.abs(observed[filled] - mean_p[filled])) / len(prob))
    return table, ece, float(np.mean((prob - labels) ** 2))


# (name, numerator, denominator) of the rates at the threshold, from the confusion counts
RATES = (("sensitivity", "tp", ("tp", "fn")), ("specificity", "tn", ("tn", "fp")),
         ("ppv", "tp", ("tp", "fp")), ("npv", "tn", ("tn", "fn")))


def choose_threshold(rule: ThresholdRule, labels: np.ndarray, prob: np.ndarray) -> float:
    """The threshold `rule` picks on these (validation) scores: a run predicts pneumonia for
    P >= threshold. Candidates are the distinct scores; Youden's J ties go to the higher one;
    a target no threshold reaches gives the lowest score (everything positive) for a
    sensitivity, and just above the highest (nothing positive) for a specificity."""
    if rule.kind == "fixed":
        return float(rule.value)  # type: ignore[arg-type]
    labels, prob = np.asarray(labels, dtype=bool), np.asarray(prob, dtype=float)
    candidates = np.unique(prob)[::-1]  # highest first, as `_cumulative` counts
    tp, fp = _cumulative(labels, prob)
    sensitivity = tp / max(int(labels.sum()), 1)
    specificity = 1 - fp / max(int((~labels).sum()), 1)
    if rule.kind == "youden":
        return float(candidates[int(np.argmax(sensitivity + specificity - 1))])
    if rule.kind == "sensitivity":
        reached = np.nonzero(sensitivity >= rule.value)[0]
        return float(candidates[reached[0]] if len(reached) else candidates[-1])
    reached = np.nonzero(specificity >= rule.value)[0]  # specificity falls as t falls
    return float(candidates[reached[-1]] if len(reached) else np.nextafter(candidates[0], 2))


def readout(seeds: Sequence[SeedScores], rule: ThresholdRule | str = DEFAULT_RULE) -> Clinical:
    """Every number of the readout at each seed's threshold (chosen by `rule` on its own
    validation scores), per seed and as a mean with its 95 % intervals: over seeds (t), over
    the test images (Clopper-Pearson at the mean's counts, for the rates) and both in
    quadrature. Without validation scores (runs saved before they were kept) the trials' own
    threshold is used, and `note` says so."""
    rule = parse_threshold(rule) if isinstance(rule, str) else rule
    note = ""
    if rule.kind != "fixed" and any(s.val_prob is None for s in seeds):
        note = (f"the runs saved no validation scores, so the threshold is the trials' own "
                f"{DECISION_THRESHOLD:g}, not {rule}")
        rule = ThresholdRule("fixed", DECISION_THRESHOLD)
    thresholds, decided = [], []
    for s in seeds:
        t = choose_threshold(rule, s.val_labels, s.val_prob) if rule.kind != "fixed" \
            else float(rule.value)  # type: ignore[arg-type]
        thresholds.append(t)
        # at the trials' own threshold, their own decisions (taken before rounding to float16)
        decided.append(s.predicted if t == DECISION_THRESHOLD else s.prob >= t)
    rows: dict[str, list[float]] = {name: [] for name, _, _ in RATES}
    tests: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in RATES}
    extra: dict[str, list[float]] = {"auroc": [], "average_precision": [], "ece": [],
                                     "brier": [], "threshold": thresholds}
    for s, predicted in zip(seeds, decided, strict=True):
        counts = confusion(s.labels, predicted)
        for name, top, bottom in RATES:
            n = sum(counts[k] for k in bottom)
            rows[name].append(counts[top] / n if n else math.nan)
            tests[name].append((counts[top], n))
        extra["auroc"].append(auroc(s.labels, s.prob))
        extra["average_precision"].append(average_precision(s.labels, s.prob))
        _, ece, brier = calibration(s.labels, s.prob)
        extra["ece"].append(ece)
        extra["brier"].append(brier)
    records = []
    for name, values in {**rows, **extra}.items():
        ci = mean_ci(values)
        test_half = math.nan
        if name in tests and tests[name]:
            k = sum(a for a, _ in tests[name]) / len(tests[name])
            n = int(round(sum(b for _, b in tests[name]) / len(tests[name])))
            if n:
                interval = scipy_stats.binomtest(int(round(k)), n).proportion_ci(method="exact")
                test_half = (interval.high - interval.low) / 2
        records.append({"metric": name, "mean": ci.mean, "seed_ci": ci.half_width,
                        "test_ci": test_half,
                        "combined_ci": combined_half_width(ci.half_width, test_half),
                        "per_seed": [round(v, 4) for v in values], "n_seeds": len(values)})
    return Clinical(list(seeds), pd.DataFrame(records), str(rule), thresholds, decided, note)


def collect_clinical(exp_dir: Path, runs: pd.DataFrame, best: dict[str, Any] | None,
                     rule: ThresholdRule | str = DEFAULT_RULE) -> Clinical | None:
    """The readout of the best configuration's runs (each of its seeds' saved scores); None
    where there is no best configuration or none of its runs saved scores."""
    if best is None or runs is None or runs.empty or "trial_dir" not in runs:
        return None
    ids, seeds = set(best.get("trial_ids") or []), set(best.get("seeds") or [])
    chosen = runs[runs["trial_id"].isin(ids)]
    if seeds and "seed" in chosen:
        chosen = chosen[chosen["seed"].isin(seeds)]
    scores = []
    for _, run in chosen.iterrows():
        found = read_scores(Path(exp_dir) / str(run["trial_dir"]), run.get("seed"))
        if found is not None:
            scores.append(found)
    return readout(scores, rule) if scores else None


# --- the figure and the section --------------------------------------------------------------


def plot_clinical(clinical: Clinical) -> Any:
    """ROC, precision-recall, the confusion matrix at the threshold (mean counts over seeds)
    and the reliability diagram, in one figure; each seed a thin line, the mean bold."""
    fig, axes = plt.subplots(2, 2, figsize=(10.0, 8.6))
    (roc_ax, pr_ax), (cm_ax, cal_ax) = axes
    grid = np.linspace(0, 1, 201)
    tprs, precisions = [], []
    for s in clinical.seeds:
        fpr, tpr = roc_curve(s.labels, s.prob)
        recall, precision = pr_curve(s.labels, s.prob)
        roc_ax.step(fpr, tpr, where="post", color="tab:blue", alpha=0.35, lw=0.8)
        pr_ax.step(recall, precision, where="post", color="tab:orange", alpha=0.35, lw=0.8)
        tprs.append(np.interp(grid, fpr, tpr))
        # precision where the recall first reaches each grid value
        index = np.minimum(np.searchsorted(recall, grid), len(precision) - 1)
        precisions.append(precision[index])
    table = clinical.table.set_index("metric")["mean"]
    roc_ax.plot(grid, np.mean(tprs, 0), color="tab:blue", lw=2.2,
                label=f"mean of {len(clinical.seeds)} seed(s), AUROC {table['auroc']:.3f}")
    roc_ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    roc_ax.set(xlabel="1 - specificity (false positive rate)",
               ylabel="sensitivity (true positive rate)", title="ROC curve (test)")
    pr_ax.plot(grid, np.mean(precisions, 0), color="tab:orange", lw=2.2,
               label=f"mean, average precision {table['average_precision']:.3f}")
    prevalence = float(np.mean(clinical.seeds[0].labels))
    pr_ax.axhline(prevalence, color="grey", lw=0.8, ls="--", label=f"prevalence {prevalence:.2f}")
    pr_ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)",
              title="Precision-recall curve (test)", ylim=(0, 1.02))
    pr_ax.legend(loc="lower left", fontsize=8)
    for s, predicted in zip(clinical.seeds, clinical.decided, strict=True):  # operating points
        point = confusion(s.labels, predicted)
        roc_ax.plot(point["fp"] / max(point["fp"] + point["tn"], 1),
                    point["tp"] / max(point["tp"] + point["fn"], 1), "o", color="black", ms=4)
    roc_ax.plot([], [], "o", color="black", ms=4, label=f"operating points ({clinical.rule})")
    roc_ax.legend(loc="lower right", fontsize=8)
    counts = pd.DataFrame([confusion(s.labels, d) for s, d in
                           zip(clinical.seeds, clinical.decided, strict=True)]).mean()
    matrix = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]])
    cm_ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        cm_ax.text(j, i, f"{value:.1f}", ha="center", va="center",
                   color="white" if value > matrix.max() / 2 else "black")
    cm_ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["normal", "pneumonia"],
              yticklabels=["normal", "pneumonia"], xlabel="predicted", ylabel="true",
              title=f"Confusion matrix at the threshold {_rule_words(clinical)}\n"
                    "(mean counts over seeds)")
    cal_ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    for s in clinical.seeds:
        bins, _, _ = calibration(s.labels, s.prob)
        filled = bins[bins["n"] > 0]
        cal_ax.plot(filled["mean_p"], filled["observed"], marker="o", ms=3, color="tab:green",
                    alpha=0.5, lw=0.8)
    pooled, _, _ = calibration(np.concatenate([s.labels for s in clinical.seeds]),
                               np.concatenate([s.prob for s in clinical.seeds]))
    pooled = pooled[pooled["n"] > 0]
    cal_ax.plot(pooled["mean_p"], pooled["observed"], marker="o", color="tab:green", lw=2.2,
                label="all seeds' images together")
    cal_ax.legend(loc="upper left", fontsize=8)
    cal_ax.set(xlabel="predicted P(pneumonia)", ylabel="fraction with pneumonia",
               title=f"Reliability: ECE {table['ece']:.3f}, Brier {table['brier']:.3f}",
               xlim=(0, 1), ylim=(0, 1))
    fig.tight_layout()
    return fig


LABELS = {"sensitivity": "Sensitivity", "specificity": "Specificity", "ppv": "PPV",
          "npv": "NPV", "auroc": "AUROC", "average_precision": "Average precision (AUPRC)",
          "ece": "Expected calibration error", "brier": "Brier score",
          "threshold": "Threshold (on P(pneumonia))"}


def _rule_words(clinical: Clinical) -> str:
    """The rule as report.md and the figure say it."""
    rule = parse_threshold(clinical.rule)
    if rule.kind == "fixed":
        return f"{rule.value:g}" + (" (the trials' own)" if rule.value == DECISION_THRESHOLD
                                    else "")
    if rule.kind == "youden":
        return "chosen on validation maximising Youden's J (sensitivity + specificity - 1)"
    return f"chosen on validation keeping {rule.kind} >= {rule.value:g}"


def clinical_section(clinical: Clinical | None, figures: dict[str, str]) -> list[str]:
    """report.md's section on the best configuration's test scores, or nothing without them."""
    if clinical is None:
        return []

    def cell(value: float) -> str:
        return "–" if not math.isfinite(value) else f"± {value:.3f}"

    lines = ["## Clinical readout of the best configuration", "",
             f"On the test split, from each of its {len(clinical.seeds)} run(s)' saved "
             f"per-image scores (the weights each run was scored with); the rates at "
             f"P(pneumonia) >= the threshold {_rule_words(clinical)} (`--threshold`; each "
             "run's from its own validation scores, the test split chose nothing)."
             + (f" Note: {clinical.note}." if clinical.note else "")
             + " The intervals are 95 %: over seeds (t), over the finite test set (exact "
             "binomial at the seed-mean counts) and both together.", "",
             "| Metric | Mean | Seeds | Test images | Both | Per seed |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for row in clinical.table.itertuples():
        lines.append(f"| {LABELS.get(row.metric, row.metric)} | {row.mean:.3f} | "
                     f"{cell(row.seed_ci)} | {cell(row.test_ci)} | {cell(row.combined_ci)} | "
                     f"{', '.join(f'{v:.3f}' for v in row.per_seed)} |")
    lines.append("")
    name = f"{FIGURE}.png"
    if name in figures:
        lines += [f"![{figures[name]}]({FIGURES_DIR}/{name})", ""]
    return lines
