"""report.md's text: each section of the study report, written in Markdown from the numbers.

Pure functions of the summary (`analysis.summary.summarise`), the homework's comparisons and the
figures that were drawn: they read no files and write none, so the report's wording can be
tested on small tables, and `analysis.report` only decides what goes where.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.clinical import Clinical, clinical_section
from analysis.factorial import Factorial
from analysis.pareto import pareto_section
from analysis.report_design import factorial_section, failures_section
from analysis.stats import mean_ci
from analysis.summary import SUMMARY_METRICS, config_columns, seed_standings, validation_source
from analysis.uncertainty import adaptive_coverage, gap_noise
from study.core.names import (
    BEST_CONFIG_JSON,
    BEST_CONFIG_YAML,
    FIGURES_DIR,
    HOMEWORK_CSV,
    LEADERBOARD,
    META_FILE,
    MODEL_FILE,
    OPTUNA_DB,
    REPORT_HTML,
    RunStatus,
)
from study.search.seed_rule import SEEDS_ON_DEMAND

# --- numbers for people -------------------------------------------------------------------


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def _mean_ci(mean: float, half: float, digits: int = 2) -> str:
    if mean is None or not math.isfinite(mean):
        return "–"
    if half is None or not math.isfinite(half):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def status_counts(trials: pd.DataFrame) -> str:
    if trials.empty:
        return "none"
    counts = trials["status"].value_counts()
    words = {RunStatus.UNFINISHED: "unfinished (interrupted)"}
    return ", ".join(f"{n} {words.get(status, status)}" for status, n in counts.items())


def _homework_section(comparisons: list[dict[str, Any]], search: str | None,
                      scheduler: str | None) -> list[str]:
    lines = ["## The homework's questions", ""]
    if not comparisons:
        lines += ["This study does not vary the loss, the batch size or the depth, so none of the "
                  "homework's comparisons can be drawn from it. Run "
                  "`study run --space homework --search grid --repeats 3` for them.", ""]
        return lines
    lines += [
        "The homework changed one factor at a time from its baseline (CE loss, batch size 32, "
        "3 hidden layers) and ran each setting once. Here each comparison's arms differ in that "
        "factor only: the other homework factors are **held at the baseline** where the study "
        "ran the baseline's value, and **averaged over (marginalised)** where it did not; each "
        "comparison below says which. Test accuracy is that of the weights with the best "
        "validation loss, over the arm's finished repeats (seeds); the CI is the 95 % t "
        "interval.",
        "",
        "The homework's baseline run (CE, batch 32, depth 3) reported \"100 %\": a two-logit CE "
        "head scored with the BCE rule `sigmoid(out) > 0.5` broadcast against `(B, 1)` labels. "
        "That is a scoring bug, not an accuracy; this project scores both losses through one "
        "function, so it cannot happen here.",
        "",
    ]
    if search != "grid":
        lines += [f"**Observational:** this study's configurations were chosen by {search} "
                  "search, not laid out as a grid, so its arms also differ in whatever the search "
                  "sampled for the other parameters (listed as marginalised), and a searcher "
                  "samples good regions more often. Treat these verdicts as hints; run "
                  "`study run --space homework --search grid --repeats 3` for a controlled "
                  "comparison.", ""]
    left_out = len({t for c in comparisons for t in c["stopped_trials"]})
    if left_out:
        lines += [f"**Warning:** {left_out} trial(s) in these comparisons were stopped early by "
                  f"the scheduler ({scheduler}) and have no test score, so their arms have fewer "
                  "repeats than the study ran, and the survivors are the lucky ones. Rerun the "
                  "grid with `--scheduler fifo` (the default for `--search grid`) for an "
                  "unbiased comparison.", ""]
    methods = sorted({a.get("test_set_method") or "" for c in comparisons for a in c["arms"]})
    lines += ["Two uncertainties per arm: the **seed CI** (another set of seeds, on these test "
              "images) and the **test-set CI** (another sample of test images: "
              + "; ".join(m for m in methods if m) + "), which more seeds never shrink; "
              "*combined* adds the two in quadrature.", "",
              "| Comparison | Arm | n | Test accuracy % (mean ± 95 % CI over seeds) | SD | "
              "± test set | ± combined | Best val. accuracy % (mean ± 95 % CI) | "
              "Homework (one run) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in comparisons:
        for i, a in enumerate(c["arms"]):
            extra = []
            for key, word in (("n_stopped", "stopped"), ("n_diverged", "diverged"),
                              ("n_error", "errored"), ("n_unfinished", "unfinished"),
                              ("n_duplicate", "duplicate run(s) counted once")):
                if a.get(key):
                    extra.append(f"{a[key]} {word}")
            n = f"{a['n']}" + (f" ({', '.join(extra)})" if extra else "")
            lines.append(
                f"| {c['title'] if i == 0 else ''} | {a['label']} | {n} | "
                f"{_mean_ci(a['test_mean'], a['test_ci'])} | {_fmt(a['test_sd'])} | "
                f"{_pm(a.get('test_set_ci'))} | {_pm(a.get('combined_ci'))} | "
                f"{_mean_ci(a['val_mean'], a['val_ci'])} | {a['homework_label']} |")
    lines.append("")
    lines += _differences_section(comparisons)
    return lines


def _differences_section(comparisons: list[dict[str, Any]]) -> list[str]:
    tested = [c for c in comparisons if c["test"] != "none"]
    family = max((c["family"] for c in comparisons), default=0)
    lines = ["### How large, how sure, and could we have seen it", "",
             "Each difference is the first arm's mean test accuracy minus the second's, in "
             "percentage points, with its 95 % CI over seeds; *± test set* is its 95 % "
             "half-width from the finite test set (a bootstrap over the images both arms were "
             "scored on, so images both find easy or hard cancel; – where no per-image "
             "predictions were saved). **Which test, and why** (each comparison "
             "says it below):", "",
             "- **Paired**, where the arms ran the same seeds: seed s starts every arm from the "
             "same initialisation stream and data order, so the runs of one seed are a matched "
             "pair and the noise they share cancels in their difference. Two arms: the paired "
             "t-test and t-interval of the per-seed differences; *seed r* is the seeds' "
             "correlation between the arms (the higher, the more the pairing gains). More arms: "
             "a repeated-measures ANOVA with seed as block, and paired pairs Holm-adjusted over "
             "the comparison's pairs.",
             "- **Welch** (two arms) or **Games-Howell** (more), where the seeds do not match: "
             "each pair with its own standard error and degrees of freedom (no pooled variance: "
             "seed-to-seed spread differs widely between settings), Games-Howell adjusted for "
             "the comparison's pairs by the studentized range.", "",
             f"**The verdicts of this report are Holm-adjusted together** (over the {family} "
             "comparison(s) that could be tested), so that several comparisons at alpha = 0.05 "
             "do not each get their own 5 % chance of a false \"significant\"; a pair is read "
             "only where its comparison is significant, so a pair's Holm p is the larger of its "
             "own and its comparison's. Hedges' g is the difference in pooled standard "
             "deviations, corrected for small samples. An arm whose seeds all score the same "
             "(a model collapsed to one class) is compared on the other arm's spread; an arm "
             "with fewer than two seeds says \"cannot tell\".", "",
             "*Detectable* is the smallest true difference **the test that was run** (at the "
             "strictest Holm step it faces: over this report's comparisons, or over a "
             "repeated-measures comparison's pairs) finds with 80 % power at these seeds and the "
             "observed spread; *seeds for 2 points*, how many seeds per arm it needs for a "
             "2-point difference. Welch and Games-Howell power is simulated (their degrees of "
             "freedom are estimated too), paired power is the exact noncentral t. In brackets: "
             "the same at both ends of the SD's own 95 % interval, since at a few seeds the SD "
             "is itself uncertain. A \"no significant difference\" with a detectable difference "
             "of 15 points means \"too few seeds\", not \"no difference\".", ""]
    if tested:
        lines += ["| Comparison | Pair | n | Test | Difference (points, 95 % CI) | Seed r | "
                  "± test set | Hedges' g | p | Holm p | Detectable at 80 % power (points) | "
                  "Seeds per arm for 2 points |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in tested:
        for i, q in enumerate(c["pairs"]):
            needed = _count_range(q["seeds_needed"], q.get("seeds_needed_low"),
                                  q.get("seeds_needed_high"))
            target = q["target_difference"]
            if target != 2.0 and needed != "–":
                needed += f" (for {target:g} points)"
            detectable = _fmt(q["detectable_80"], 1)
            if q.get("detectable_80_low") is not None and detectable != "–":
                detectable += (f" [{_fmt(q['detectable_80_low'], 1)}, "
                               f"{_fmt(q['detectable_80_high'], 1)}]")
            lines.append(
                f"| {c['title'] if i == 0 else ''} | {q['a']} − {q['b']} | "
                f"{q['n_a']}/{q['n_b']} | {q.get('pair_test') or c['test']} | "
                f"{_signed(q['difference'])} "
                f"[{_signed(q['ci_low'])}, {_signed(q['ci_high'])}] | "
                f"{_signed(q.get('seed_correlation'))} | {_pm(q.get('test_set_ci'))} | "
                f"{_signed(q['hedges_g'])} | {_p(q['p_value'])} | {_p(q['p_holm'])} | "
                f"{detectable} | {needed} |")
    if tested:
        lines.append("")
    for c in comparisons:
        why = f" Test: {c['why']}." if c.get("why") else ""
        lines.append(f"- **{c['title']}**: {c['verdict']}.{why} Arms: {c['note']}")
    lines.append("")
    return lines


def _count_range(value: Any, low: Any, high: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    text = f"{int(value)}"
    if low is not None and high is not None:
        text += f" [{int(low)}, {int(high)}]"
    elif low is not None:
        text += f" [{int(low)}, more than 10,000]"
    return text


def _pm(value: Any) -> str:
    return "–" if value is None or not math.isfinite(value) else f"± {value:.2f}"


def _signed(value: Any, digits: int = 2) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:+.{digits}f}".replace("-", "−")


def _p(value: Any) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def _best_section(best: dict[str, Any] | None, metric: str, mode: str) -> list[str]:
    lines = [f"## Best configuration (highest mean {metric} over its seeds; validation only)"
             if mode == "max" else
             f"## Best configuration (lowest mean {metric} over its seeds; validation only)", ""]
    if best is None:
        return lines + ["No trial finished with a validation score yet.", ""]
    lines += ["| Parameter | Value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in best["config"].items()]
    n = best["n_seeds"]
    lines += ["", "Every metric is scored on the weights each run keeps, tests and exports: "
              "those of its epoch with the lowest validation loss (`kept_epoch` in "
              f"`{LEADERBOARD}`, beside the last epoch's `last_val_accuracy`), so validation "
              "and test describe one model.", ""]
    lines += [f"Its metrics over {n} seed(s) ({', '.join(map(str, best['seeds']))})"
              + (", mean ± 95 % CI (t distribution):" if n > 1 else
                 " (one run, so no confidence interval):"), "",
              "| Metric | Value |", "| --- | --- |"]
    for key in SUMMARY_METRICS:
        if key in best["metrics"]:
            digits = 2 if key.endswith("accuracy") else 4
            unit = " %" if key.endswith("accuracy") else ""
            value = _mean_ci(best["metrics"][key], best["ci95"].get(key, math.nan), digits)
            lines.append(f"| {key} | {value}{unit} |")
    lines.append("")
    return lines


def _seeds_section(runs: pd.DataFrame, meta: dict[str, Any]) -> list[str]:
    """Where each configuration of a `--repeats auto` study stopped adding seeds, and why
    (`runs`: one row per trial and seed; a duplicate of another run counts once)."""
    from study.search.seed_rule import Rule

    rule = meta.get(SEEDS_ON_DEMAND)
    if not rule:
        return []
    stated = Rule.from_dict(rule)
    if "duplicate" in runs:
        runs = runs[~runs["duplicate"].astype(bool)]
    table = seed_standings(runs, rule, meta.get("searched"))
    lines = ["## Seeds added on demand (`--repeats auto`)", "",
             f"**Stopping rule:** {stated.describe()}. The rule reads only each configuration's "
             "spread, never which one is ahead, so it chose nothing; but an interval that "
             "stopped because it happened to be narrow covers the true mean less often than "
             "95 % (simulated below), and a configuration stopped at the cap has a wider "
             "interval than the target. Read the intervals below and in the comparisons with "
             "that in mind.", ""]
    if table.empty:
        return lines + ["No configuration has finished a seed yet.", ""]
    lines += ["| Configuration | Seeds | 95 % CI half-width (test accuracy, points) | "
              "Where it stopped, and why |", "| --- | --- | --- | --- |"]
    for row in table.itertuples():
        seeds = f"{row.n}" + (f" ({row.tries - row.n} failed)" if row.tries > row.n else "")
        lines.append(f"| {row.configuration} | {seeds} | {_fmt(row.half_width)} | {row.why} |")
    sds = [s for _, g in runs[runs["status"] == RunStatus.COMPLETED].groupby(
        [c for c in config_columns(runs) if c != "repeats"], dropna=False)
        if math.isfinite(s := mean_ci(g[rule.get("metric", "test_accuracy")].tolist()).std)]
    simulated: list[str] = []
    if sds:
        sd = float(pd.Series(sds).median())
        coverage = adaptive_coverage(stated.target_ci, sd, stated.start, stated.max_repeats)
        simulated = [f"**Simulated coverage of these intervals:** {coverage * 100:.1f} % (this "
                  f"rule, normal seeds at the configurations' median SD of {sd:.2f} points, "
                  "20,000 simulated configurations), against the 95 % a fixed number of seeds "
                  "would give.", ""]
    narrow = int(table["why"].str.startswith("stopped: half-width").sum())
    flat = int(table["why"].str.startswith("stopped: every one").sum())
    capped = int(table["why"].str.startswith("stopped at the cap").sum())
    lines += ["", f"{narrow} of {len(table)} configuration(s) reached the target, {capped} "
              "stopped at the cap"
              + (f", {flat} stopped with no spread at all (their comparisons say \"cannot "
                 "tell\")" if flat else "")
              + (f", {int((~table['done']).sum())} not done when the study ended"
                 if (~table["done"]).any() else "") + ".", ""]
    return lines + simulated


def _validation_test_section(best: dict[str, Any] | None, meta: dict[str, Any],
                             trials: pd.DataFrame) -> list[str]:
    """The best configuration's validation and test accuracy side by side (both of the weights
    it tested), with the gap read against its noise: the seeds' spread of the per-seed gaps
    and both finite image sets; where it is larger, the plain reasons."""
    if best is None or "val_accuracy" not in best["metrics"] \
            or "test_accuracy" not in best["metrics"]:
        return []
    val, test = best["metrics"]["val_accuracy"], best["metrics"]["test_accuracy"]
    ci = best["ci95"].get("test_accuracy", math.nan)
    gap = val - test
    source, _ = validation_source(meta.get("data"))
    done = trials[trials["status"] == RunStatus.COMPLETED] if "status" in trials else trials
    keys = config_columns(done)
    n_configs = len(done.groupby(keys, dropna=False)) if keys and not done.empty else 1
    sizes = meta.get("data_sizes") or {}
    gaps = best.get("gap_values")
    noise = gap_noise(gaps if gaps is not None else [], val, test, sizes.get("val"),
                      sizes.get("test"))
    if gaps is None:  # a record without per-seed gaps: the test CI stands in for the seeds
        noise = noise._replace(seeds=ci, total=math.hypot(
            ci, noise.validation_images, noise.test_images))
    images = best.get("test_set_ci95", math.nan)
    extra = (f"; test set ± {images:.2f}, combined ± {best['combined_ci95']:.2f}"
             if images is not None and math.isfinite(images) else "")
    lines = ["### Validation vs test", "",
             f"Best configuration: validation accuracy {val:.2f} % vs test accuracy "
             f"{_mean_ci(test, ci)} %{extra} (gap {_signed(gap)} points, both on the weights "
             f"each seed tested; validation images: {source}).", ""]
    if not math.isfinite(noise.total):
        return lines + ["One seed only, and the image counts unknown: nothing to read the gap "
                        "against.", ""]
    parts = f"± {noise.total:.2f}: seeds ± {_fmt(noise.seeds)}, validation images ± " \
            f"{noise.validation_images:.2f}, test images ± {noise.test_images:.2f}"
    if abs(gap) <= noise.total:
        return lines + [f"The gap is within its noise ({parts}): no sign that validation "
                        "misstates test accuracy.", ""]
    reasons = []
    if gap > 0 and n_configs > 1:
        reasons.append(f"**selection on validation**: this configuration was picked as the best "
                       f"of {n_configs} on its validation accuracy, so part of that score is "
                       "luck of the validation images that the test images do not repeat")
    reasons.append("**a validation split that differs from the test split**: the validation "
                   f"images are {source}; where the test images were collected or labelled "
                   "differently, validation accuracy does not carry over to them")
    word = "overstates" if gap > 0 else "understates"
    lines += [f"**Warning: validation {word} test accuracy by {abs(gap):.2f} points, more than "
              f"its noise ({parts}).** Plain reasons:", ""]
    lines += [f"- {r}" for r in reasons]
    lines += ["", "Quote the test accuracy, never the validation accuracy, as what this "
              "configuration achieves.", ""]
    return lines


def render_report(summary: dict[str, Any], comparisons: list[dict[str, Any]],
                  importance: pd.DataFrame, figures: dict[str, str], missing: list[str],
                  db: Path | None, study_name: str, factorial: Factorial | None = None,
                  clinical: Clinical | None = None) -> str:
    """Return report.md: how the study was run, its best configuration, the homework's
    comparisons, the search's figures, and what is missing."""
    meta, trials = summary["meta"], summary["trials"]
    sizes = meta.get("data_sizes") or {}
    lines = [f"# Study report: {Path(summary['experiment']).name}", "",
             f"- Experiment: `{summary['experiment']}`",
             f"- Command: `{meta.get('command', f'unknown (no {META_FILE})')}`"]
    for added in meta.get("extended") or []:
        lines.append(f"- Trials added ({added.get('at')}, to {added.get('num_samples')} "
                     f"samples): `{added.get('command')}`")
    if meta:
        size = meta.get("data_image_size")
        lines.append(f"- Data: `{meta.get('data')}`" + (f", {size}x{size} pixels" if size else "")
                     + (f"; {sizes.get('train')} train / {sizes.get('val')} validation / "
                        f"{sizes.get('test')} test images" if sizes else ""))
        lines.append(f"- Search: {meta.get('search')}; scheduler: {meta.get('scheduler')}; "
                     f"space: `{meta.get('space_file')}` (searched: "
                     f"{', '.join(meta.get('searched') or []) or 'nothing'}); "
                     f"{meta.get('epochs')} epochs; "
                     + ("seeds on demand (`--repeats auto`, below)" if SEEDS_ON_DEMAND in meta
                        else f"{meta.get('repeats', 1)} repeat(s) per configuration"))
        sampler = dict(meta.get("sampler") or {})
        if sampler:  # every setting, so the study means the same under a later Optuna
            kind = sampler.pop("sampler", "?")
            lines.append(f"- Sampler: Optuna {sampler.pop('optuna', '?')} {kind} ("
                         + ", ".join(f"{k}={v}" for k, v in sampler.items()) + ")")
        lines.append(f"- Selection metric: {summary['metric']} ({summary['mode']}), on the "
                     "validation split only; the test split chose nothing")
        model = ((summary.get("best") or {}).get("config") or {}).get("model", "mlp")
        if model != "mlp" or "model" in (meta.get("searched") or []):
            lines.append(f"- Model family: {model} (best); comparisons are between this "
                         "study's configurations, within a family; the homework's are about "
                         "its MLP")
    expected = meta.get("expected_trials")
    planned = "at least " if SEEDS_ON_DEMAND in meta else ""
    lines.append(f"- Trials: {len(trials)}"
                 + (f" of {planned}{expected} planned" if expected else "")
                 + f" ({status_counts(trials)})")
    runs = summary.get("runs")
    if runs is not None and not runs.empty and "status" in runs and len(runs) != len(trials):
        distinct = runs[~runs["duplicate"].astype(bool)] if "duplicate" in runs else runs
        copies = len(runs) - len(distinct)
        lines.append(f"- Runs (a trial's seeds, each its own run): {len(distinct)} "
                     f"({status_counts(distinct)})"
                     + (f"; {copies} copies of another run counted once" if copies else ""))
    if meta.get("created"):
        lines.append(f"- Started: {meta['created']}; Ray {meta.get('ray_version', '?')}")
    lines.append("")
    if missing:
        lines += ["## Missing", "", "This report covers what the experiment holds so far:", ""]
        lines += [f"- {m}" for m in missing] + [""]
    lines += _best_section(summary["best"], summary["metric"], summary["mode"])
    lines += _validation_test_section(summary["best"], meta, trials)
    lines += pareto_section(summary.get("pareto"), figures)
    lines += clinical_section(clinical, figures)
    lines += _seeds_section(summary.get("runs", trials), meta)
    lines += _homework_section(comparisons, meta.get("search"), meta.get("scheduler"))
    lines += failures_section(comparisons) + factorial_section(factorial)
    hw_figs = [f for f in figures if f.startswith("homework_")]
    if hw_figs:
        lines += ["### Homework figures", ""]
        lines += [f"![{figures[f]}]({FIGURES_DIR}/{f})" for f in hw_figs] + [""]
    lines += ["## Hyperparameter search", ""]
    if not importance.empty:
        table = importance.pivot_table(index="param", columns="evaluator", values="importance")
        table = table.sort_values(table.columns[0], ascending=False)
        lines += ["Parameter importance (Optuna's evaluators on the finished trials, "
                  "normalised to sum 1):", "",
                  "| Parameter | " + " | ".join(table.columns) + " |",
                  "| --- |" + " --- |" * len(table.columns)]
        for name, row in table.iterrows():
            lines.append(f"| {name} | " + " | ".join(_fmt(v, 3) for v in row) + " |")
        lines.append("")
    elif importance.attrs.get("note"):
        lines += [f"Parameter importance: {importance.attrs['note']}.", ""]
    hpo_figs = [f for f in figures if f.startswith("hpo_")]
    lines += [f"![{figures[f]}]({FIGURES_DIR}/{f})" for f in hpo_figs] + [""]
    lines += ["## Files", "",
              f"- `{REPORT_HTML}`: this report as one web page, figures embedded",
              f"- `{LEADERBOARD}`: one row per run (a trial and one of its seeds), best first",
              f"- `{BEST_CONFIG_JSON}`, `{BEST_CONFIG_YAML}`: the best configuration with its "
              f"metrics; `study train --config {BEST_CONFIG_YAML}` retrains it",
              f"- `{MODEL_FILE}`: the best run's weights (its seed's best validation loss); "
              f"`study evaluate --checkpoint {MODEL_FILE} --data ...` scores it",
              f"- `{HOMEWORK_CSV}`: the homework's comparisons, arm by arm"]
    if db is not None:
        lines.append(f"- `{OPTUNA_DB}`: the study as an Optuna storage (study name "
                     f"`{study_name}`): `optuna-dashboard sqlite:///{db}` or "
                     f"`optuna.load_study(study_name=\"{study_name}\", "
                     f"storage=\"sqlite:///{db}\")`")
    lines += [f"- `{FIGURES_DIR}/{f}`: {title}" for f, title in figures.items()]
    return "\n".join(lines) + "\n"
