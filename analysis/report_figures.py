"""The report's figures: which ones it draws, and the worker processes that draw them.

`homework_figures` and `hpo_figures` say which figures a study gets (one `Figure` each: a
module-level `plot_*` function and its arguments, so it pickles); `FigureWriter` draws them,
in a pool of forked workers where there are cores for it, writes figures/<name>.png atomically
and lets one failed figure cost only itself.
"""

from __future__ import annotations

import concurrent.futures
import io
import logging
import math
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from analysis import homework, hpo
from analysis.plotting import plt
from study.core.files import write_bytes_atomic

log = logging.getLogger(__name__)

DPI = 110
MAX_WORKERS = 4  # drawing processes at most: a report has about a dozen figures
# progress(phase, done, total): "figures" 5 of 13, "optuna.db" 1 of 1, ...
Progress = Callable[[str, int, int], None]


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


def _ignore_sigint() -> None:
    """Workers leave Ctrl-C to the parent, which cancels what is left and exits cleanly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def worker_count(jobs: int) -> int:
    """How many worker processes drawing `jobs` pays for: one per usable core, none on one core,
    while Ray runs in this process, or while any other thread does (a forked child gets a copy
    of every lock those threads hold, and libraries' threads - Ray's, W&B's, MLflow's - hold
    some; the figures are then drawn here, one after another)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    ray = sys.modules.get("ray")
    if cores < 2 or jobs < 2 or (ray is not None and ray.is_initialized()):
        return 0
    if "torch" in sys.modules:
        # PyTorch's thread pools do not survive a fork: a forked worker that exports model.pt
        # (torch again) can hang or die. Only `study report` on its own never imports torch.
        log.info("drawing in this process: PyTorch is loaded here, so forking is unsafe")
        return 0
    if threading.active_count() > 1:
        log.info("drawing in this process: %d other thread(s) run, so forking is unsafe",
                 threading.active_count() - 1)
        return 0
    return min(cores, jobs, MAX_WORKERS)


def worker_pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
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
        self._asked: list[Figure] = []
        self._results: dict[str, bytes | None] = {}
        self._futures: dict[concurrent.futures.Future[bytes], Figure] = {}

    def draw_all(self, figures: list[Figure],
                 pool: concurrent.futures.Executor | None = None) -> None:
        """Draw every figure (in `pool` if given), write figures/<name>.png atomically; a
        figure that fails is recorded in `failed` and the others go on."""
        self.submit(figures, pool)
        self.collect()

    def submit(self, figures: list[Figure], pool: concurrent.futures.Executor | None = None,
               *, first: bool = False) -> None:
        """Start drawing `figures` in `pool` (drawn here and now without one); `first` puts
        them before those asked so far in figures/ and the report. `collect` waits for all."""
        self._asked = [*figures, *self._asked] if first else [*self._asked, *figures]
        for figure in figures:
            if pool is None:
                self._results[figure.name] = self._draw_here(figure)
                self._tick()
            else:
                self._futures[pool.submit(render_png, figure)] = figure

    def collect(self) -> None:
        """Wait for the figures submitted, then write them, in the order asked (so report.md's
        order is stable)."""
        for future in concurrent.futures.as_completed(self._futures):
            figure = self._futures[future]
            try:
                self._results[figure.name] = future.result()
            except Exception as exc:  # one bad figure must not cost the whole report
                self._results[figure.name] = self._failure(figure, exc)
            self._tick()
        self._futures = {}
        for figure in self._asked:
            data = self._results.pop(figure.name, None)
            if data is not None:
                write_bytes_atomic(self.folder / f"{figure.name}.png", data)
                self.written[f"{figure.name}.png"] = figure.title
        self._asked = []

    def _draw_here(self, figure: Figure) -> bytes | None:
        try:
            return render_png(figure)
        except Exception as exc:  # one bad figure must not cost the whole report
            return self._failure(figure, exc)

    def _failure(self, figure: Figure, exc: Exception) -> None:
        log.warning("figure %s not drawn: %s", figure.name, exc, exc_info=exc)
        self.failed.append(f"figure {figure.name}.png not drawn ({type(exc).__name__}: {exc})")

    def _tick(self) -> None:
        if self.progress is not None:
            self.progress("figures", len(self._results), len(self._asked))


# --- which figures ----------------------------------------------------------------------


def homework_figures(trials: pd.DataFrame, epochs: pd.DataFrame, meta: dict[str, Any]
                     ) -> tuple[list[dict[str, Any]], pd.DataFrame, list[Figure]]:
    """Return the homework's comparisons that `trials` (runs) can answer, as report records,
    as one table (homework.csv: arm and pair rows) and as two figures each."""
    chosen = []
    for factor in homework.BASELINE:
        comparison = homework.select_comparison(trials, factor, meta.get("searched"))
        if comparison is None:
            continue
        stats = homework.collect_arm_stats(comparison,
                                           (meta.get("data_sizes") or {}).get("test"))
        chosen.append((comparison, stats, homework.compare_test_accuracy(stats)))
    # The verdicts of one report are adjusted together (Holm), so they are read as a family.
    results = homework.adjust_comparisons([result for _, _, result in chosen])
    records, tables, figures = [], [], []
    for (comparison, stats, _), result in zip(chosen, results, strict=True):
        factor = comparison.factor
        records.append(homework.comparison_record(comparison, stats, result))
        public = stats.drop(columns=[c for c in stats if c.startswith("_")])
        tables.append(public.assign(row="arm", verdict=result.verdict, note=comparison.note,
                                    test=result.test, why=result.why))
        pairs = homework.collect_pairs(comparison, result, stats)
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
        for column in ("n", "n_a", "n_b", "seeds_needed", "seeds_needed_low",
                       "seeds_needed_high", "n_stopped", "n_diverged", "n_error", "n_unfinished",
                       "n_duplicate", "n_ended", "itt_n"):
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


def hpo_figures(study: Any, epochs: pd.DataFrame, trials: pd.DataFrame, metric: str
                ) -> tuple[pd.DataFrame, list[Figure]]:
    """Return the parameter importances (for report.md's table) and the search's figures:
    history, importance, parallel coordinates, one scatter per parameter, learning curves."""
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
