"""`study report`: write summary/ from an experiment on disk.

summary/ holds best_config.json/.yaml, leaderboard.csv, model.pt (the best trial's kept weights),
homework.csv (the homework's comparisons arm by arm), optuna.db (the study rebuilt as an Optuna
SQLite storage), figures/*.png, report.md, which links them all, and report.html (report.md
as one web page with the figures embedded). Every file is written
atomically, so an interrupted report never leaves half a file; a partial experiment reports what
it has and lists what is missing.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import errno
import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib

matplotlib.use("Agg")  # figures are only ever written to files

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from analysis import homework, hpo  # noqa: E402
from analysis.html_report import HTML_REPORT, write_html_report  # noqa: E402
from analysis.optuna_study import build_study, write_optuna_db  # noqa: E402
from analysis.results import check_experiment, collect_epochs  # noqa: E402
from analysis.summary import (  # noqa: E402
    SUMMARY_METRICS,
    config_columns,
    seed_standings,
    summarise,
    validation_source,
)
from study.core.files import write_bytes_atomic, write_json_atomic, write_text_atomic  # noqa: E402
from study.errors import StudyError  # noqa: E402
from study.search.seed_rule import SEEDS_ON_DEMAND  # noqa: E402

log = logging.getLogger(__name__)

FIGURES = "figures"
OPTUNA_DB = "optuna.db"
HOMEWORK_CSV = "homework.csv"
DPI = 110
MODEL_FILE = "model.pt"  # training.checkpoint.MODEL_FILE; named here: the report imports no torch
MAX_WORKERS = 4  # drawing processes at most: a report has about a dozen figures
# progress(phase, done, total): "figures" 5 of 13, "optuna.db" 1 of 1, ...
Progress = Callable[[str, int, int], None]
FINISHED = ("completed", "stopped", "diverged", "error")


def export_best_model(exp_dir: Path, best: dict[str, Any], out: Path) -> Path | None:
    """Copy the best run's kept weights (best validation loss) to out/model.pt: the
    representative seed's slice of a stacked trial's checkpoint."""
    import torch

    from study.training.checkpoint import MODEL_FILE, save_model
    from study.training.config import TrialConfig

    trial_dir = exp_dir / best["trial_dir"]
    checkpoints = sorted(trial_dir.glob("checkpoint_*/state.pt"))
    if not checkpoints:
        return None
    path = checkpoints[-1]
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StudyError(f"{path}: the best trial's checkpoint cannot be read "
                         f"({first[:200]})") from None
    weights = state.get("best_model") or state.get("model") if isinstance(state, dict) else None
    if not isinstance(weights, dict) or not isinstance(state.get("config"), dict):
        raise StudyError(f"{path}: the best trial's checkpoint holds no config and weights")
    config = TrialConfig.from_dict(state["config"], where=str(path))
    first_weight = next((v for k, v in weights.items()
                         if k.endswith("weight") and getattr(v, "ndim", 0) >= 2), None)
    if first_weight is None:
        raise StudyError(f"{path}: the best trial's checkpoint holds no layer weights")
    image_size = int(round(first_weight.shape[-1] ** 0.5))
    seed = best.get("representative_seed", config.seed)
    index = config.seeds.index(seed) if seed in config.seeds else 0
    save_model(out / MODEL_FILE, weights, config, image_size, index=index)
    return out / MODEL_FILE


class Figure(NamedTuple):
    """One figure to draw: a module-level `plot` function and its arguments, so that a worker
    process can draw it (everything here pickles). With `size`, `plot(*args, ax=ax, **kwargs)`
    draws on one new Axes of that size; without, `plot(*args, **kwargs)` returns a Figure."""

    name: str  # figures/<name>.png
    title: str  # what report.md says it shows
    plot: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}
    size: tuple[float, float] | None = None


def render_png(figure: Figure) -> bytes:
    """Draw `figure` and return it as PNG bytes (closing it: workers draw many in turn)."""
    try:
        if figure.size is None:
            fig = figure.plot(*figure.args, **figure.kwargs)
        else:
            fig, ax = plt.subplots(figsize=figure.size)
            figure.plot(*figure.args, ax=ax, **figure.kwargs)
            fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
        return buffer.getvalue()
    finally:
        plt.close("all")  # this figure, and any that a failed plot left open


def _workers(jobs: int) -> int:
    """How many worker processes drawing `jobs` pays for: one per usable core, none on one core
    or while Ray runs in this process (forking its threads is unsafe; the figures are then
    drawn here, one after another)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    ray = sys.modules.get("ray")
    if cores < 2 or jobs < 2 or (ray is not None and ray.is_initialized()):
        return 0
    return min(cores, jobs, MAX_WORKERS)


def _pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    """A pool of forked workers: they start in milliseconds with matplotlib, pandas and the
    analysis already imported, where spawned ones would import them again (a second each)."""
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    return concurrent.futures.ProcessPoolExecutor(workers, mp_context=context,
                                                initializer=_ignore_sigint)


class FigureWriter:
    """Draws figures into figures/ (in worker processes where that pays), records what was
    written and what failed, and reports progress as figures finish."""

    def __init__(self, folder: Path, progress: Progress | None = None) -> None:
        self.folder = folder
        self.progress = progress
        self.written: dict[str, str] = {}  # file name -> title, in the order figures were asked
        self.failed: list[str] = []

    def draw_all(self, figures: list[Figure],
                 pool: concurrent.futures.Executor | None = None) -> None:
        """Draw every figure (in `pool` if given), write figures/<name>.png atomically; a
        figure that fails is recorded in `failed` and the others go on."""
        results: dict[str, bytes | None] = {}
        total = len(figures)
        if pool is None:
            for figure in figures:
                results[figure.name] = self._draw_here(figure)
                self._tick(len(results), total)
        else:
            futures = {pool.submit(render_png, f): f for f in figures}
            for future in concurrent.futures.as_completed(futures):
                figure = futures[future]
                try:
                    results[figure.name] = future.result()
                except Exception as exc:  # one bad figure must not cost the whole report
                    results[figure.name] = self._failure(figure, exc)
                self._tick(len(results), total)
        for figure in figures:  # written in the order asked, so report.md's order is stable
            data = results[figure.name]
            if data is not None:
                write_bytes_atomic(self.folder / f"{figure.name}.png", data)
                self.written[f"{figure.name}.png"] = figure.title

    def _draw_here(self, figure: Figure) -> bytes | None:
        try:
            return render_png(figure)
        except Exception as exc:  # one bad figure must not cost the whole report
            return self._failure(figure, exc)

    def _failure(self, figure: Figure, exc: Exception) -> None:
        log.warning("figure %s not drawn: %s", figure.name, exc, exc_info=exc)
        self.failed.append(f"figure {figure.name}.png not drawn ({type(exc).__name__}: {exc})")

    def _tick(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress("figures", done, total)


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


def _status_counts(trials: pd.DataFrame) -> str:
    if trials.empty:
        return "none"
    counts = trials["status"].value_counts()
    words = {"unfinished": "unfinished (interrupted)"}
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
    lines += ["| Comparison | Arm | n | Test accuracy % (mean ± 95 % CI) | SD | "
              "Best val. accuracy % (mean ± 95 % CI) | Homework (one run) |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
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
                f"{_mean_ci(a['val_mean'], a['val_ci'])} | {a['homework_label']} |")
    lines.append("")
    lines += _differences_section(comparisons)
    return lines


def _differences_section(comparisons: list[dict[str, Any]]) -> list[str]:
    tested = [c for c in comparisons if c["test"] != "none"]
    family = max((c["family"] for c in comparisons), default=0)
    lines = ["### How large, how sure, and could we have seen it", "",
             "Each difference is the first arm's mean test accuracy minus the second's, in "
             "percentage points, with its 95 % CI. Two arms: Welch's t-test and interval (no "
             "equal-variance assumption). More arms: **Games-Howell** pairs, not Tukey's HSD: "
             "Tukey pools one variance over all arms, and seed-to-seed spread differs widely "
             "between settings (a small batch spreads far more than a large one), so its "
             "intervals would be too narrow for the wide arm and too wide for the narrow ones; "
             "Games-Howell gives each pair its own Welch standard error and degrees of freedom "
             "and adjusts for the pairs of its comparison (studentized range). Hedges' g is the "
             "difference in pooled standard deviations, corrected for small samples.", "",
             f"**The verdicts of this report are Holm-adjusted together** (over the {family} "
             "comparison(s) that could be tested), so that several comparisons at alpha = 0.05 "
             "do not each get their own 5 % chance of a false \"significant\". A many-arm "
             "comparison enters "
             "the family with its smallest pair p-value; each of its pairs is read only where "
             "the comparison is significant, so a pair's Holm p is the larger of its own "
             "(Games-Howell) p and its comparison's. An arm with fewer than two seeds, or whose "
             "seeds all score the same, gives no estimate of its spread: its comparisons say "
             "\"cannot tell\".", "",
             "*Detectable at this n* is the smallest true difference a two-arm Welch test at "
             "alpha = 0.05 would find with 80 % power at the arms' seeds and observed spread "
             "(before any adjustment, which needs more); *seeds for 2 points* is how many seeds "
             "per arm the same test needs to find a 2-point difference with 80 % power. A \"no "
             "significant difference\" with a detectable difference of 15 points means \"too "
             "few seeds\", not \"no difference\".", ""]
    if tested:
        lines += ["| Comparison | Pair | n | Difference (points, 95 % CI) | Hedges' g | p | "
                  "Holm p | Detectable at this n (80 % power) | Seeds per arm for 2 points |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in tested:
        for i, q in enumerate(c["pairs"]):
            needed = q["seeds_needed"]
            needed = "–" if needed is None else f"{int(needed)}"
            target = q["target_difference"]
            if target != 2.0 and needed != "–":
                needed += f" (for {target:g} points)"
            lines.append(
                f"| {c['title'] if i == 0 else ''} | {q['a']} − {q['b']} | "
                f"{q['n_a']}/{q['n_b']} | {_signed(q['difference'])} "
                f"[{_signed(q['ci_low'])}, {_signed(q['ci_high'])}] | "
                f"{_signed(q['hedges_g'])} | {_p(q['p_value'])} | {_p(q['p_holm'])} | "
                f"{_fmt(q['detectable_80'], 1)} points | {needed} |")
    if tested:
        lines.append("")
    for c in comparisons:
        lines.append(f"- **{c['title']}**: {c['verdict']}. Arms: {c['note']}")
    lines.append("")
    return lines


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
    lines += ["", f"Its metrics over {n} seed(s) ({', '.join(map(str, best['seeds']))})"
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
             "stopped because it happened to be narrow covers the true mean a little less often "
             "than 95 %, and a configuration stopped at the cap has a wider interval than the "
             "target. Read the intervals below and in the comparisons with that in mind.", ""]
    if table.empty:
        return lines + ["No configuration has finished a seed yet.", ""]
    lines += ["| Configuration | Seeds | 95 % CI half-width (test accuracy, points) | "
              "Where it stopped, and why |", "| --- | --- | --- | --- |"]
    for row in table.itertuples():
        seeds = f"{row.n}" + (f" ({row.tries - row.n} failed)" if row.tries > row.n else "")
        lines.append(f"| {row.configuration} | {seeds} | {_fmt(row.half_width)} | {row.why} |")
    narrow = int(table["why"].str.startswith("stopped: half-width").sum())
    flat = int(table["why"].str.startswith("stopped: every one").sum())
    capped = int(table["why"].str.startswith("stopped at the cap").sum())
    lines += ["", f"{narrow} of {len(table)} configuration(s) reached the target, {capped} "
              "stopped at the cap"
              + (f", {flat} stopped with no spread at all (their comparisons say \"cannot "
                 "tell\")" if flat else "")
              + (f", {int((~table['done']).sum())} not done when the study ended"
                 if (~table["done"]).any() else "") + ".", ""]
    return lines


def _validation_test_section(best: dict[str, Any] | None, meta: dict[str, Any],
                             trials: pd.DataFrame) -> list[str]:
    """The best configuration's validation and test accuracy side by side, with the gap read
    against the test CI and, where it is larger, the plain reasons."""
    if best is None or "val_accuracy" not in best["metrics"] \
            or "test_accuracy" not in best["metrics"]:
        return []
    val, test = best["metrics"]["val_accuracy"], best["metrics"]["test_accuracy"]
    ci = best["ci95"].get("test_accuracy", math.nan)
    gap = val - test
    source, _ = validation_source(meta.get("data"))
    done = trials[trials["status"] == "completed"] if "status" in trials else trials
    keys = config_columns(done)
    n_configs = len(done.groupby(keys, dropna=False)) if keys and not done.empty else 1
    lines = ["### Validation vs test", "",
             f"Best configuration: validation accuracy {val:.2f} % vs test accuracy "
             f"{_mean_ci(test, ci)} % (gap {_signed(gap)} points; validation images: "
             f"{source}).", ""]
    if not math.isfinite(ci):
        return lines + ["One seed only: no test CI to read the gap against.", ""]
    if abs(gap) <= ci:
        return lines + [f"The gap is within the test CI (± {ci:.2f}): no sign that validation "
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
              f"the test CI (± {ci:.2f}).** Plain reasons:", ""]
    lines += [f"- {r}" for r in reasons]
    lines += ["", "Quote the test accuracy, never the validation accuracy, as what this "
              "configuration achieves.", ""]
    return lines


def render_report(summary: dict[str, Any], comparisons: list[dict[str, Any]],
                  importance: pd.DataFrame, figures: dict[str, str], missing: list[str],
                  db: Path | None, study_name: str) -> str:
    """Return report.md: how the study was run, its best configuration, the homework's
    comparisons, the search's figures, and what is missing."""
    meta, trials = summary["meta"], summary["trials"]
    sizes = meta.get("data_sizes") or {}
    lines = [f"# Study report: {Path(summary['experiment']).name}", "",
             f"- Experiment: `{summary['experiment']}`",
             f"- Command: `{meta.get('command', 'unknown (no study.json)')}`"]
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
        lines.append(f"- Selection metric: {summary['metric']} ({summary['mode']}), on the "
                     "validation split only; the test split chose nothing")
    expected = meta.get("expected_trials")
    planned = "at least " if SEEDS_ON_DEMAND in meta else ""
    lines.append(f"- Trials: {len(trials)}"
                 + (f" of {planned}{expected} planned" if expected else "")
                 + f" ({_status_counts(trials)})")
    if meta.get("created"):
        lines.append(f"- Started: {meta['created']}; Ray {meta.get('ray_version', '?')}")
    lines.append("")
    if missing:
        lines += ["## Missing", "", "This report covers what the experiment holds so far:", ""]
        lines += [f"- {m}" for m in missing] + [""]
    lines += _best_section(summary["best"], summary["metric"], summary["mode"])
    lines += _validation_test_section(summary["best"], meta, trials)
    lines += _seeds_section(summary.get("runs", trials), meta)
    lines += _homework_section(comparisons, meta.get("search"), meta.get("scheduler"))
    hw_figs = [f for f in figures if f.startswith("homework_")]
    if hw_figs:
        lines += ["### Homework figures", ""]
        lines += [f"![{figures[f]}]({FIGURES}/{f})" for f in hw_figs] + [""]
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
    lines += [f"![{figures[f]}]({FIGURES}/{f})" for f in hpo_figs] + [""]
    lines += ["## Files", "",
              f"- `{HTML_REPORT}`: this report as one web page, figures embedded",
              "- `leaderboard.csv`: one row per run (a trial and one of its seeds), best first",
              "- `best_config.json`, `best_config.yaml`: the best configuration with its metrics; "
              "`study train --config best_config.yaml` retrains it",
              "- `model.pt`: the best run's weights (its seed's best validation loss); "
              "`study evaluate --checkpoint model.pt --data ...` scores it",
              f"- `{HOMEWORK_CSV}`: the homework's comparisons, arm by arm"]
    if db is not None:
        lines.append(f"- `{OPTUNA_DB}`: the study as an Optuna storage (study name "
                     f"`{study_name}`): `optuna-dashboard sqlite:///{db}` or "
                     f"`optuna.load_study(study_name=\"{study_name}\", "
                     f"storage=\"sqlite:///{db}\")`")
    lines += [f"- `{FIGURES}/{f}`: {title}" for f, title in figures.items()]
    return "\n".join(lines) + "\n"


# --- the report ---------------------------------------------------------------------------


def _homework_figures(trials: pd.DataFrame, epochs: pd.DataFrame, meta: dict[str, Any]
                      ) -> tuple[list[dict[str, Any]], pd.DataFrame, list[Figure]]:
    chosen = []
    for factor in homework.BASELINE:
        comparison = homework.select_comparison(trials, factor, meta.get("searched"))
        if comparison is None:
            continue
        stats = homework.collect_arm_stats(comparison)
        chosen.append((comparison, stats, homework.compare_test_accuracy(stats)))
    # The verdicts of one report are adjusted together (Holm), so they are read as a family.
    results = homework.adjust_comparisons([result for _, _, result in chosen])
    records, tables, figures = [], [], []
    for (comparison, stats, _), result in zip(chosen, results, strict=True):
        factor = comparison.factor
        records.append(homework.comparison_record(comparison, stats, result))
        tables.append(stats.assign(row="arm", verdict=result.verdict, note=comparison.note))
        pairs = homework.collect_pairs(comparison, result)
        if not pairs.empty:
            tables.append(pairs.assign(row="pair", label=pairs["a"] + " - " + pairs["b"]))
        curves = homework.collect_arm_curves(comparison, epochs)
        figures.append(Figure(
            f"homework_{factor}_curves",
            f"{comparison.title}: training and validation accuracy and loss per epoch",
            homework.plot_comparison_curves, (comparison, curves)))
        figures.append(Figure(
            f"homework_{factor}_test",
            f"{comparison.title}: test accuracy per arm beside the homework's numbers",
            homework.plot_arm_tests, (stats,),
            {"title": f"{comparison.title}: test accuracy\n{_short_verdict(result)}"},
            (max(5.5, 1.7 * len(stats) + 2.5), 4.5)))
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    if not table.empty:
        first = ["row", "factor", "label", "arm", "n", "test_mean", "test_sd", "test_ci", "a",
                 "b", "n_a", "n_b", "difference", "ci_low", "ci_high", "hedges_g", "test",
                 "p_value", "p_holm", "detectable_80", "seeds_needed", "target_difference"]
        table = table[[c for c in first if c in table] + [c for c in table if c not in first]]
        # arm and pair rows share the table: counts stay whole numbers where a row has them
        for column in ("n", "n_a", "n_b", "seeds_needed", "n_stopped", "n_diverged", "n_error",
                       "n_unfinished", "n_duplicate"):
            if column in table:
                table[column] = table[column].astype("Int64")
    return records, table, figures


def _short_verdict(result: Any) -> str:
    """The verdict up to its first parenthesis and the Holm p: fits a figure title."""
    head = result.verdict.split(" (")[0]
    if result.test == "none":
        return result.verdict[:90]
    p = result.p_adjusted if math.isfinite(result.p_adjusted) else result.p_value
    return f"{head} (Holm-adjusted p = {p:.3g})" if result.family > 1 else f"{head} (p = {p:.3g})"


def _hpo_figures(study: Any, epochs: pd.DataFrame, trials: pd.DataFrame, metric: str
                 ) -> tuple[pd.DataFrame, list[Figure]]:
    maximize = hpo._maximize(study)
    history = hpo.collect_history(study)
    importance = hpo.collect_importance(study)
    params = hpo.collect_params(study)
    dists = hpo.param_distributions(study)
    figures = [
        Figure("hpo_history", "Optimisation history (best so far)", hpo.plot_history,
               (history, metric, maximize), size=(7.5, 4.2)),
        Figure("hpo_importance", "Parameter importance (Optuna evaluators)",
               hpo.plot_importance, (importance,),
               size=(7.0, 1.2 + 0.5 * max(2, importance["param"].nunique()))),
        Figure("hpo_parallel", "Parallel coordinates of the searched parameters",
               hpo.plot_parallel, (params, dists, metric),
               size=(min(15.0, max(7.0, 1.8 * (len(dists) + 1))), 4.8)),
    ]
    figures += [Figure(f"hpo_scatter_{name}", f"{metric} against {name}",
                       hpo.plot_param_scatter, (params, name, dist, metric, maximize),
                       size=(5.5, 4.0))
                for name, dist in dists.items()]
    figures.append(Figure("hpo_learning_curves",
                          "Learning curves of every trial, stopped trials marked",
                          hpo.plot_learning_curves, (epochs, trials, metric), size=(8.0, 4.8)))
    return importance, figures


# --- the output folder: only what the tool wrote is ever replaced ---------------------------


MANIFEST = ".study-report.json"  # what a report wrote into its folder, with each file's SHA-256
_OWN_NAMES = ("leaderboard.csv", "best_config.json", "best_config.yaml", "model.pt",
              HOMEWORK_CSV, OPTUNA_DB, "report.md", HTML_REPORT)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> dict[str, Path]:
    """Relative name -> path of every file and link under `folder` (hidden ones too)."""
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
            if p.is_symlink() or not p.is_dir()}


def _legacy_own(rel: str) -> bool:
    """A name only a report of a version without manifests wrote into summary/."""
    name = rel.rsplit("/", 1)[-1]
    if name.startswith(".") and name.endswith(".tmp"):
        return True  # a temporary file of an interrupted atomic write
    if rel.startswith(f"{FIGURES}/") and rel.count("/") == 1:
        return name.endswith(".png") and name.startswith(("hpo_", "homework_"))
    return rel in _OWN_NAMES


def _user_files(out: Path, exp_dir: Path, default: bool) -> dict[str, Path]:
    """Return the files in `out` the tool did not write (they are kept); raise StudyError where
    `out` cannot be used: not a folder, the experiment itself, or a foreign folder."""
    label = f"{out}" if default else f"--out {out}"
    if out.is_symlink() and not out.exists():
        raise StudyError(f"{label}: a broken symbolic link")
    if not out.exists():
        return {}
    if not out.is_dir():
        raise StudyError(f"{label}: exists and is not a folder")
    here, experiment = out.resolve(), exp_dir.resolve()
    if here == experiment or here in experiment.parents:
        raise StudyError(f"{label}: is the experiment folder or holds it; choose a folder of "
                         "its own")
    files = _files(out)
    manifest = files.pop(MANIFEST, None)
    if manifest is not None:
        try:
            written = json.loads(manifest.read_text())["files"]
            assert isinstance(written, dict)
        except (OSError, ValueError, KeyError, TypeError, AssertionError):
            raise StudyError(f"{manifest}: is corrupted; move {out} aside and run the report "
                             "again") from None
    elif not files:
        written = {}
    elif default and all(_legacy_own(rel) for rel in files):
        written = dict.fromkeys(files)  # summary/ of a version that wrote no manifest
    else:
        raise StudyError(f"{label}: holds files that study report did not write (e.g. "
                         f"{next(iter(files))}); nothing was changed; choose a new or empty "
                         "folder")
    user = {}
    for rel, path in files.items():
        if rel in written:
            digest = written[rel]
            if digest is None:
                continue  # a legacy file: ours by its name
            if not path.is_symlink() and path.is_file() and _sha256(path) == digest:
                continue  # ours, unchanged since
        user[rel] = path  # added or changed by someone else: kept
    return user


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one step (Linux renameat2 RENAME_EXCHANGE); False if unsupported.

    Written by hand: neither os nor shutil exposes an atomic exchange of two names.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(a))


def _swap_in(staging: Path, out: Path) -> None:
    """Put `staging` at `out`, replacing an existing `out` as a whole, then delete the old."""
    if not out.exists():
        os.rename(staging, out)
        return
    if not _exchange(staging, out):
        aside = staging.with_name(staging.name + ".old")
        os.rename(out, aside)
        os.rename(staging, out)
        staging = aside
    shutil.rmtree(staging)  # the previous report (user files were linked into the new one)


def _ignore_sigint() -> None:
    """Workers leave Ctrl-C to the parent, which cancels what is left and exits cleanly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def write_report(exp_dir: Path, out: Path | None = None, *,
                 progress: Progress | None = None) -> dict[str, Any]:
    """Write summary/ for an experiment folder and return what was written.

    The folder is built beside `out` and swapped in whole, so an interrupted or failed report
    leaves the previous one as it was. Only files a report wrote (recorded in its manifest,
    unchanged since) are replaced; other files in `out` are kept, and a non-empty folder that
    a report did not write is refused.

    Figures, optuna.db and model.pt are written by worker processes side by side where there
    are cores for them. `progress(phase, done, total)`, if given, is called as the work goes
    (`("figures", 5, 13)` after the fifth of 13 figures; `("optuna.db", 1, 1)` when it is
    written); the same steps are logged at INFO.

    Returns the summary (experiment, metric, mode, meta, trials, leaderboard, best) with `out`,
    `missing` (what a partial experiment lacks), `figures`, `comparisons` and `optuna_db`.
    """
    def step(phase: str, done: int, total: int) -> None:
        if progress is not None:
            progress(phase, done, total)

    exp_dir = Path(exp_dir)
    check_experiment(exp_dir)
    default = out is None
    out = Path(out) if out is not None else exp_dir / "summary"
    user = _user_files(out, exp_dir, default)
    log.info("reading the results of %s", exp_dir)
    step("results", 0, 1)
    summary = summarise(exp_dir)  # damaged inputs are refused before anything is written
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as exc:
        raise StudyError(f"{out}: cannot be created ({exc.strerror})") from None
    try:
        staging.chmod(0o777 & ~_umask())
        result = _write_summary(exp_dir, summary, staging, out, step, progress)
        ours = {rel: _sha256(path) for rel, path in _files(staging).items()}
        for rel, path in user.items():
            if rel in ours:
                raise StudyError(f"{path}: was not written by study report (or was changed "
                                 "since) and this report writes a file of that name; move it "
                                 "away and run again")
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target, follow_symlinks=False)
        write_json_atomic(staging / MANIFEST, {"files": ours})
        _swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


def _write_summary(exp_dir: Path, summary: dict[str, Any], out: Path, final: Path,
                   step: Callable[[str, int, int], None],
                   progress: Progress | None) -> dict[str, Any]:
    """Write the summary files into `out` (a fresh folder that will be moved to `final`)."""
    meta, trials, metric = summary["meta"], summary["trials"], summary["metric"]
    epochs = collect_epochs(exp_dir)
    step("results", 1, 1)
    write_text_atomic(out / "leaderboard.csv", summary["leaderboard"].to_csv(index=False))
    missing = []
    best = summary["best"]
    if best is not None:
        record = {
            "experiment": summary["experiment"],
            "metric": summary["metric"],
            "mode": summary["mode"],
            "command": meta.get("command"),
            "config": best["config"],
            "metrics": best["metrics"],
            "ci95": best["ci95"],
            "n_seeds": best["n_seeds"],
            "seeds": best["seeds"],
            "trial_ids": best["trial_ids"],
            "representative_seed": best["representative_seed"],
        }
        write_json_atomic(out / "best_config.json", record)
        write_text_atomic(out / "best_config.yaml", yaml.safe_dump(record, sort_keys=False))
    else:
        missing.append("no trial reported a validation score; no best configuration yet")
    if not meta:
        missing.append("no study.json: command, data and search space unknown; parameter "
                       "distributions in optuna.db are inferred from the values seen")
    if not trials.empty:
        unfinished = trials[~trials["status"].isin(FINISHED)]
        if len(unfinished):
            missing.append(f"{len(unfinished)} trial(s) did not finish: "
                           + _status_counts(unfinished))
        errored = trials[trials["status"].isin(["error", "no_results"])]
        for row in errored.itertuples():
            missing.append(f"trial {row.trial_id} errored: {row.reason}")
    expected = meta.get("expected_trials")
    if expected and len(trials) < expected:
        missing.append(f"{expected - len(trials)} of {expected} requested trials never started")

    # The homework's intervals are over seeds: one row per run, each seed's own epochs.
    comparisons, table, figures = _homework_figures(
        summary["runs"], collect_epochs(exp_dir, per_seed=True), meta)
    if not table.empty:
        write_text_atomic(out / HOMEWORK_CSV, table.to_csv(index=False))
    study_name = exp_dir.resolve().name
    study = build_study(trials, epochs, meta, study_name)
    importance, hpo_figures = _hpo_figures(study, epochs, trials, metric)
    figures += hpo_figures
    folder = out / FIGURES
    folder.mkdir(exist_ok=True)
    figs = FigureWriter(folder, progress)

    # The two single slow jobs (model.pt imports torch; optuna.db, SQLAlchemy) go first, so
    # they run beside the figures instead of after them.
    workers = _workers(len(figures) + 2)
    pool = _pool(workers) if workers else None
    model_job = db_job = None
    try:
        if pool is not None:
            if best is not None:
                model_job = pool.submit(export_best_model, exp_dir, best, out)
            if study.trials:
                db_job = pool.submit(write_optuna_db, study, out / OPTUNA_DB)
        log.info("drawing %d figures%s", len(figures),
                 f" in {workers} processes" if workers else "")
        figs.draw_all(figures, pool)
        log.info("writing %s", OPTUNA_DB)
        step(OPTUNA_DB, 0, 1)
        if db_job is not None:
            db_job.result()
        elif study.trials:
            write_optuna_db(study, out / OPTUNA_DB)
        db = final / OPTUNA_DB if study.trials else None  # where it will be once swapped in
        step(OPTUNA_DB, 1, 1)
        if best is not None:
            log.info("writing %s", MODEL_FILE)
            step(MODEL_FILE, 0, 1)
            model = (model_job.result() if model_job is not None
                     else export_best_model(exp_dir, best, out))
            step(MODEL_FILE, 1, 1)
            if model is None:
                missing.append("no checkpoint of the best trial; summary/model.pt not written")
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    missing += figs.failed
    if db is None:
        missing.append("no trial ran; optuna.db not written")
    report = render_report(summary, comparisons, importance, figs.written, missing,
                           db.resolve() if db else None, study_name)
    write_text_atomic(out / "report.md", report)
    step("report.md", 1, 1)
    write_html_report(out)
    step(HTML_REPORT, 1, 1)
    return {**summary, "out": final, "missing": missing, "figures": list(figs.written),
            "comparisons": comparisons, "optuna_db": db, "study_name": study_name}
