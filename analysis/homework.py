"""The homework's comparisons (loss; batch size; depth), answered with repeats.

The homework ran one model per setting and changed one factor at a time from its baseline
(CE loss, batch size 32, 3 hidden layers). Here each comparison's arms are the trials that differ
in that factor only: the other homework factors are held at the baseline when the study has the
baseline's value, and otherwise averaged over (marginalised), which the comparison's `note` says.
Any other parameter that varies within an arm (a searched learning rate, say) is marginalised
too, and named in the note. Identical runs (same configuration, same seed: a study resumed
twice, a copied trial) count once, in the statistics and in every count of failures.

Arms that ran the same seeds are compared paired (`analysis.paired`), else unpaired; each arm
has a seed CI and a test-set CI (`analysis.uncertainty`), and its diverged share.

`collect_*` return DataFrames; `plot_*` draw them on an Axes and return it.
"""

from __future__ import annotations

import json
import math
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from analysis.paired import compare_matched
from analysis.plotting import Axes, new_axes, plt
from analysis.results import CONFIG_KEYS, column_name
from analysis.stats import ArmTest, adjust_holm, mean_ci
from analysis.uncertainty import combined_half_width, difference_test_set_ci, test_set_ci
from study.core.names import IN_PROGRESS, RunStatus

BASELINE: dict[str, Any] = {"loss": "ce", "batch_size": 32, "depth": 3}
# What the homework reported, per arm: (test accuracy %, label). None: no number reported.
# Its baseline run (CE, batch 32, depth 3) reported "100 %": a two-logit CE head scored with the
# BCE rule `sigmoid(out) > 0.5` broadcast against (B, 1) labels, not a real accuracy.
BUG = "scoring bug"
HOMEWORK: dict[str, dict[Any, tuple[float | None, str]]] = {
    "loss": {"bce": (71.5, "71.5 %"), "ce": (100.0, f'"100 %" ({BUG})')},
    "batch_size": {2: (None, "not reported"), 16: (74.0, "74 %"), 32: (100.0, f'"100 %" ({BUG})'),
                   128: (72.25, "72.25 %")},
    "depth": {3: (100.0, f'"100 %" ({BUG})'), 5: (72.0, "72 %")},
}
TITLES = {"loss": "Loss: BCE vs CE", "batch_size": "Batch size",
          "depth": "Depth (hidden layers)"}
CURVE_METRICS = ("train_accuracy", "val_accuracy", "train_loss", "val_loss")
METRIC_LABELS = {"train_accuracy": "training accuracy (%)",
                 "val_accuracy": "validation accuracy (%)", "train_loss": "training loss",
                 "val_loss": "validation loss", "test_accuracy": "test accuracy (%)"}
# Trials whose numbers describe their arm: finished runs. Stopped trials have no test score, and
# diverged or errored ones measure a failure, not the setting; the report counts them apart.
USABLE = (RunStatus.COMPLETED,)
CURVE_STATUSES = (RunStatus.COMPLETED, RunStatus.STOPPED, RunStatus.UNFINISHED)


class Comparison(NamedTuple):
    """One homework comparison: the factor, its arms, their trials, and how they were chosen."""

    factor: str
    title: str
    arms: list[Any]  # the factor's values, in order
    trials: pd.DataFrame  # the trials of the comparison (all statuses), factor column = arm
    held: dict[str, Any]  # other homework factors held at the baseline
    marginalised: list[str]  # parameters that vary within an arm, averaged over
    note: str


def arm_label(factor: str, value: Any) -> str:
    """Human label of an arm: `BCE`, `batch 16`, `5 layers`."""
    if factor == "loss":
        return str(value).upper()
    if factor == "batch_size":
        return f"batch {value}"
    if factor == "depth":
        return f"{value} layers"
    return f"{factor}={value}"


def _varying(trials: pd.DataFrame) -> list[str]:
    """Config columns (seed excluded) taking more than one value among `trials`."""
    names = [column_name(k) for k in CONFIG_KEYS if k != "seed"]
    return [c for c in names if c in trials and trials[c].nunique(dropna=True) > 1]


def _py(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def select_comparison(trials: pd.DataFrame, factor: str,
                      searched: list[str] | None = None) -> Comparison | None:
    """Return the trials that answer the homework's question about `factor`, or None.

    Another homework factor is held at the baseline when that leaves two arms or more, and
    marginalised otherwise; so is any `searched` parameter that varies. None when the study
    does not vary `factor` (a comparison needs two arms). Within one model family: the MLP's
    trials where the study trained it (the homework's), else those of the one it trained.
    """
    if "model" in trials and len(trials):
        families = trials["model"].fillna("mlp")
        trials = trials[families == ("mlp" if (families == "mlp").any() else families.iloc[0])]
    if factor not in trials or trials[factor].nunique(dropna=True) < 2:
        return None
    chosen = trials[trials[factor].notna()]
    held: dict[str, Any] = {}
    for other in BASELINE:
        if other == factor or other not in _varying(chosen):
            continue
        at_baseline = chosen[chosen[other] == BASELINE[other]]
        if at_baseline[factor].nunique() >= 2:
            chosen = at_baseline
            held[other] = BASELINE[other]
    if chosen[factor].nunique() < 2:
        return None
    # A searched parameter, or one that varies inside an arm, is averaged over; one that is
    # not searched and varies only with the factor (the deeper arm's widths) is part of the
    # arm's definition.
    searched_columns = {column_name(p) for p in searched or []}
    marginalised = [c for c in _varying(chosen) if c != factor
                    and (c in searched_columns
                         or chosen.groupby(factor)[c].nunique(dropna=True).max() > 1)]
    arms = sorted(chosen[factor].unique(), key=lambda v: (isinstance(v, str), v))
    parts = []
    if held:
        parts.append("held at the homework's baseline: "
                     + ", ".join(f"{k} = {v}" for k, v in held.items()))
    if marginalised:
        parts.append("averaged over (marginalised): " + ", ".join(marginalised))
    if not parts:
        parts.append("every other setting is the same in all arms")
    return Comparison(factor, TITLES.get(factor, factor), [_py(a) for a in arms],
                      chosen.reset_index(drop=True), held, marginalised, "; ".join(parts) + ".")


def homework_number(factor: str, value: Any) -> tuple[float | None, str]:
    """Return the homework's reported test accuracy for an arm and its label."""
    return HOMEWORK.get(factor, {}).get(value, (None, "not run"))


def distinct_runs(trials: pd.DataFrame) -> pd.DataFrame:
    """Return `trials` with identical runs (same configuration and seed) counted once.

    The same configuration with the same seed trains the same model, so a repeat of it adds no
    information about seed-to-seed spread and would narrow the CI falsely. Runs read from disk
    carry `duplicate` marks (`analysis.results.collect_runs`); a table without them keeps the
    last of each.
    """
    if "duplicate" in trials:
        return trials[~trials["duplicate"].astype(bool)]
    keys = [column_name(k) for k in CONFIG_KEYS if column_name(k) in trials]
    if "seed" not in keys or trials.empty:
        return trials
    return trials.loc[~trials[keys].astype(str).duplicated(keep="last")]


def collect_arm_stats(comparison: Comparison, n_test: int | None = None) -> pd.DataFrame:
    """Return one row per arm: n, mean, SD and 95 % CI over seeds of test and best validation
    accuracy, the test-set 95 % CI of the mean (bootstrap over the runs' saved per-image
    predictions, else exact binomial over `n_test` images) and both combined, the per-seed
    test accuracies, trials left out (stopped, diverged, errored, duplicates of another run)
    and the homework's number."""
    rows = []
    for arm in comparison.arms:
        copies = comparison.trials[comparison.trials[comparison.factor] == arm]
        members = distinct_runs(copies)  # a run read twice is counted once, whatever its end
        usable = members[members["status"].isin(USABLE)]
        scored = usable[usable["test_accuracy"].notna()]
        test = mean_ci(scored["test_accuracy"].tolist())
        val = mean_ci(usable["best_val_accuracy"].tolist())
        number, label = homework_number(comparison.factor, arm)
        correct = list(scored["test_correct"]) if "test_correct" in scored else []
        images = test_set_ci(test.mean, n_test,
                             correct if correct and all(c is not None for c in correct) else ())
        failed = divergence(members)
        rows.append({
            **failed,
            "factor": comparison.factor, "arm": arm, "label": arm_label(comparison.factor, arm),
            "n": test.n, "test_mean": test.mean, "test_sd": test.std, "test_ci": test.half_width,
            "val_mean": val.mean, "val_sd": val.std, "val_ci": val.half_width,
            "test_set_low": images.low, "test_set_high": images.high,
            "test_set_ci": images.half_width, "test_set_method": images.method,
            # each image's correctness averaged over the arm's seeds (internal: pairs arms on
            # the same images; never written out)
            "_per_image": (np.mean([np.asarray(c, dtype=float) for c in correct], axis=0)
                           if correct and all(c is not None for c in correct)
                           and len({len(c) for c in correct}) == 1 else None),
            "combined_ci": combined_half_width(test.half_width, images.half_width),
            "test_values": [float(v) for v in scored["test_accuracy"]],
            # each value's block: its seed, and what the comparison marginalises, so runs
            # with the same block in two arms differ in the compared factor alone
            "test_blocks": [block_key(row, comparison.marginalised)
                            for row in scored.to_dict("records")],
            "n_stopped": int((members["status"] == RunStatus.STOPPED).sum()),
            "n_diverged": int((members["status"] == RunStatus.DIVERGED).sum()),
            "n_error": int(members["status"].isin([RunStatus.ERROR,
                                                   RunStatus.NO_RESULTS]).sum()),
            "n_unfinished": int(members["status"].isin(IN_PROGRESS).sum()),
            "n_duplicate": int(len(copies) - len(members)),
            "homework": math.nan if number is None else number,
            "homework_label": label,
        })
    return pd.DataFrame(rows)


def block_key(run: dict[str, Any], marginalised: list[str]) -> str:
    """A run's block in a comparison: its seed and the marginalised settings, as one string."""
    seed = run.get("seed")
    seed = None if seed is None or (isinstance(seed, float) and math.isnan(seed)) else int(seed)
    return json.dumps([seed, *[_py(run.get(c)) for c in marginalised]], default=str)


def divergence(runs: pd.DataFrame) -> dict[str, float]:
    """An arm's diverged share of its ended runs (completed or diverged) with its exact
    (Clopper-Pearson) 95 % CI, and its intention-to-treat test accuracy: the mean over those
    runs, a diverged seed kept at its last good score (the test accuracy of the weights it had
    kept when it diverged; a seed that never had good weights has none and is left out)."""
    ended = runs[runs["status"].isin([RunStatus.COMPLETED, RunStatus.DIVERGED])]
    k, n = int((ended["status"] == RunStatus.DIVERGED).sum()), len(ended)
    low = high = math.nan
    if n:
        ci = binomtest(k, n).proportion_ci(0.95, method="exact")
        low, high = ci.low * 100, ci.high * 100
    itt = mean_ci(ended["test_accuracy"].tolist()) if n else mean_ci([])
    return {"n_ended": n, "diverged_rate": 100 * k / n if n else math.nan,
            "diverged_low": low, "diverged_high": high, "itt_mean": itt.mean,
            "itt_ci": itt.half_width, "itt_n": itt.n}


def compare_test_accuracy(stats: pd.DataFrame) -> ArmTest:
    """The arms' test accuracies compared, before any adjustment across a report
    (`adjust_comparisons`): paired by seed where the arms share their seeds (paired t, or a
    repeated-measures ANOVA with paired pairs), else Welch (two arms) or Games-Howell."""
    arms = {row.label: row.test_values for row in stats.itertuples()}
    blocks = ({row.label: row.test_blocks for row in stats.itertuples()}
              if "test_blocks" in stats else None)
    return compare_matched(arms, blocks)


def adjust_comparisons(results: list[ArmTest]) -> list[ArmTest]:
    """Holm-adjust the comparisons of one report together; verdicts say so."""
    return adjust_holm(results)


PAIR_COLUMNS = ["factor", "a", "b", "n_a", "n_b", "difference", "ci_low", "ci_high",
                "hedges_g", "test", "pair_test", "seed_correlation", "sd_difference", "df",
                "p_value", "p_holm", "detectable_80", "detectable_80_low", "detectable_80_high",
                "seeds_needed", "seeds_needed_low", "seeds_needed_high", "power_alpha",
                "target_difference", "test_set_ci", "combined_ci"]


def collect_pairs(comparison: Comparison, result: ArmTest,
                  stats: pd.DataFrame | None = None) -> pd.DataFrame:
    """Return one row per compared pair: difference a - b (points) with its 95 % CI, Hedges' g,
    the comparison's test and the pair's (paired, welch, games-howell), the seeds' correlation
    and the SD of the per-seed differences (paired), raw and Holm-adjusted p, the difference
    the test run detects with 80 % power at this n and the seeds per arm it needs for the
    target difference (2 points), each with its range over the SD's 95 % interval, and the
    level (Holm step) they are for. With `stats` (`collect_arm_stats`, whose runs saved their
    per-image predictions), also the difference's test-set 95 % half-width (a bootstrap over
    the images both arms were scored on) and the seed and test-set intervals combined."""
    per_image = (dict(zip(stats["label"], stats["_per_image"], strict=True))
                 if stats is not None and "_per_image" in stats else {})
    rows = []
    for q in result.pairs:
        power = q.power
        a, b = per_image.get(q.a), per_image.get(q.b)
        images = difference_test_set_ci(a, b) if a is not None and b is not None else math.nan
        rows.append({
            "factor": comparison.factor, "a": q.a, "b": q.b, "n_a": q.n_a, "n_b": q.n_b,
            "difference": q.difference, "ci_low": q.low, "ci_high": q.high,
            "hedges_g": q.hedges_g, "test": result.test, "pair_test": q.test,
            "seed_correlation": q.correlation, "sd_difference": q.sd_diff, "df": q.df,
            "p_value": q.p_value, "p_holm": q.p_adjusted, "detectable_80": q.detectable,
            "detectable_80_low": power.detectable_low if power else math.nan,
            "detectable_80_high": power.detectable_high if power else math.nan,
            "seeds_needed": q.seeds_needed,
            "seeds_needed_low": power.seeds_needed_low if power else None,
            "seeds_needed_high": power.seeds_needed_high if power else None,
            "power_alpha": power.alpha if power else math.nan, "target_difference": q.target,
            "test_set_ci": images,
            "combined_ci": combined_half_width((q.high - q.low) / 2, images)})
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def collect_arm_curves(comparison: Comparison, epochs: pd.DataFrame) -> pd.DataFrame:
    """Return per arm, epoch and metric: mean and 95 % CI over the arm's seeds, and n.

    Trials stopped early contribute the epochs they ran, so n can fall at later epochs.
    """
    members = comparison.trials[comparison.trials["status"].isin(CURVE_STATUSES)]
    if "duplicate" in members:  # the same run twice draws once
        members = members[~members["duplicate"].astype(bool)]
    # Runs are keyed by trial and seed where both tables have seeds (stacked trials).
    by_seed = "seed" in members and "seed" in epochs
    arm_of = dict(zip(_run_keys(members, by_seed), members[comparison.factor], strict=True))
    columns = ["arm", "label", "epoch", "metric", "mean", "low", "high", "n"]
    rows = []
    if epochs.empty or "trial_id" not in epochs:
        return pd.DataFrame(columns=columns)
    run = _run_keys(epochs, by_seed)
    df = epochs[run.isin(list(arm_of))].copy()
    df["arm"] = run[df.index].map(arm_of)
    for (arm, epoch), group in df.groupby(["arm", "epoch"], sort=True):
        for metric in CURVE_METRICS:
            if metric not in group:
                continue
            ci = mean_ci(group[metric].tolist())
            if ci.n == 0:
                continue
            half = ci.half_width if ci.n > 1 else 0.0
            rows.append({"arm": _py(arm), "label": arm_label(comparison.factor, _py(arm)),
                         "epoch": int(epoch), "metric": metric, "mean": ci.mean,
                         "low": ci.mean - half, "high": ci.mean + half, "n": ci.n})
    return pd.DataFrame(rows, columns=columns)


def _run_keys(df: pd.DataFrame, by_seed: bool) -> pd.Series:
    """`trial_id` (and `seed`) of each row as one string: a run's key in both tables."""
    keys = df["trial_id"].astype(str)
    if by_seed:
        seeds = df["seed"].map(lambda v: "" if pd.isna(v) else str(int(v)))
        keys = keys + "|" + seeds
    return keys


def plot_arm_curves(curves: pd.DataFrame, metric: str, ax: Axes | None = None) -> Axes:
    """Draw `metric` per epoch for each arm: mean line and 95 % CI band over seeds."""
    ax = new_axes(ax, (6.0, 4.0))
    data = curves[curves["metric"] == metric]
    for i, (label, group) in enumerate(data.groupby("label", sort=False)):
        group = group.sort_values("epoch")
        color = f"C{i}"
        n = int(group["n"].max())
        ax.plot(group["epoch"], group["mean"], color=color, marker="o", markersize=3,
                label=f"{label} (n = {n})")
        low, high = group["low"], group["high"]
        if metric.endswith("accuracy"):  # a t interval can pass 100 %; accuracy cannot
            low, high = low.clip(0, 100), high.clip(0, 100)
        ax.fill_between(group["epoch"], low, high, color=color, alpha=0.2, linewidth=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.grid(alpha=0.3)
    if data.empty:
        ax.text(0.5, 0.5, "no epochs reported", ha="center", va="center",
                transform=ax.transAxes)
    else:
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8)
    return ax


def plot_arm_tests(stats: pd.DataFrame, ax: Axes | None = None, title: str = "") -> Axes:
    """Draw test accuracy per arm: our mean with its 95 % CI and each seed as a dot, and the
    homework's single-run number beside it (its "100 %" drawn as the scoring bug it was)."""
    ax = new_axes(ax, (max(5.0, 1.6 * len(stats) + 2), 4.2))
    x = np.arange(len(stats))
    width = 0.38
    means = stats["test_mean"].to_numpy(dtype=float)
    errors = np.nan_to_num(stats["test_ci"].to_numpy(dtype=float), nan=0.0)
    ax.bar(x - width / 2, np.nan_to_num(means, nan=0.0), width, yerr=errors, capsize=4,
           color="C0", alpha=0.85, label="this study: mean ± 95 % CI")
    seeds = [v for row in stats.itertuples() for v in row.test_values]
    low = np.nanmin(np.concatenate([means - errors, seeds, [60.0]]))
    bottom = max(0.0, 10 * math.floor((low - 5) / 10))
    for xi, row in zip(x, stats.itertuples(), strict=True):
        values = row.test_values
        if values:
            jitter = np.linspace(-0.08, 0.08, len(values)) if len(values) > 1 else [0.0]
            ax.scatter(xi - width / 2 + np.asarray(jitter), values, color="black", s=12,
                       zorder=3, label="each seed" if xi == 0 else "_seed")
        else:
            ax.text(xi - width / 2, bottom + 2, "no finished trial", ha="center",
                    va="bottom", fontsize=7, rotation=90)
    first_hw = first_bug = True
    for xi, row in zip(x, stats.itertuples(), strict=True):
        if math.isnan(row.homework):
            ax.text(xi + width / 2, bottom + 2, row.homework_label, ha="center", va="bottom",
                    fontsize=7, rotation=90, color="grey")
            continue
        if BUG in row.homework_label:
            ax.bar(xi + width / 2, row.homework, width, color="white", edgecolor="C3",
                   hatch="xx", label="homework: reported 100 % = scoring bug" if first_bug
                   else "_bug")
            ax.text(xi + width / 2, (bottom + row.homework) / 2, '"100 %"\nscoring\nbug',
                    ha="center", va="center", fontsize=7, color="C3",
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8})
            first_bug = False
        else:
            ax.bar(xi + width / 2, row.homework, width, color="grey", alpha=0.6,
                   label="homework: one run" if first_hw else "_hw")
            ax.text(xi + width / 2, row.homework + 0.5, f"{row.homework:g}", ha="center",
                    va="bottom", fontsize=7)
            first_hw = False
    if bottom < 50:
        ax.axhline(50, color="grey", linestyle=":", linewidth=1)
    ax.set_xticks(x, [f"{row.label}\n(n = {row.n})" for row in stats.itertuples()])
    ax.set_ylim(bottom, 104)
    ax.set_ylabel(METRIC_LABELS["test_accuracy"])
    if title:
        ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16),
              ncol=2 if len(stats) < 3 else 4, frameon=False)
    return ax


def plot_comparison_curves(comparison: Comparison, curves: pd.DataFrame) -> plt.Figure:
    """Return a 2x2 figure: training and validation accuracy and loss per epoch, per arm."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True)
    for ax, metric in zip(axes.flat, CURVE_METRICS, strict=True):
        plot_arm_curves(curves, metric, ax=ax)
        ax.set_title(METRIC_LABELS[metric].split(" (")[0].capitalize())
        if metric in ("train_accuracy", "val_accuracy"):
            ax.set_xlabel("")  # the shared epoch axis is labelled below
    fig.suptitle(f"{comparison.title}: mean and 95 % CI over seeds (t distribution; "
                 f"accuracy bands clipped to 100 %)\n({comparison.note})", fontsize=10)
    fig.tight_layout()
    return fig


def comparison_record(comparison: Comparison, stats: pd.DataFrame,
                      result: ArmTest) -> dict[str, Any]:
    """A JSON-ready record of one comparison (for the report and summary/homework.json)."""
    stopped = comparison.trials.loc[comparison.trials["status"] == RunStatus.STOPPED,
                                    "trial_id"]
    arms = []
    for row in stats.to_dict("records"):
        arms.append({k: (None if isinstance(v, float) and math.isnan(v) else _py(v))
                     for k, v in row.items() if not k.startswith("_")})
    pairs = [{k: (None if isinstance(v, float) and math.isnan(v) else _py(v))
              for k, v in row.items()} for row in collect_pairs(comparison, result, stats)
             .astype(object).to_dict("records")]
    return {"factor": comparison.factor, "title": comparison.title, "note": comparison.note,
            "held": comparison.held, "marginalised": comparison.marginalised,
            "test": result.test, "why": result.why,
            "p_value": None if math.isnan(result.p_value) else result.p_value,
            "p_holm": None if math.isnan(result.p_adjusted) else result.p_adjusted,
            "family": result.family, "excluded": list(result.excluded),
            "verdict": result.verdict, "stopped_trials": sorted(stopped),
            "arms": json.loads(json.dumps(arms, default=str)),
            "pairs": json.loads(json.dumps(pairs, default=str))}
