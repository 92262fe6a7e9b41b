"""`study report`: write summary/ from an experiment on disk.

summary/ holds best_config.json/.yaml, leaderboard.csv, model.pt (the best trial's kept weights),
homework.csv (the homework's comparisons arm by arm), optuna.db (the study rebuilt as an Optuna
SQLite storage), figures/*.png, report.md, which links them all, and report.html (report.md
as one web page with the figures embedded). Every file is written
atomically, so an interrupted report never leaves half a file; a partial experiment reports what
it has and lists what is missing.

This module only orchestrates; the work lives beside it: `report_sections` writes report.md's
text, `report_figures` says which figures there are and draws them in worker processes,
`report_folder` keeps the output folder (manifest, staging folder, swap), and
`study.training.export` writes model.pt (the only step that needs torch).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from analysis.clinical import DEFAULT_RULE, collect_clinical, plot_clinical
from analysis.clinical import FIGURE as CLINICAL_FIGURE
from analysis.factorial import collect_factorial, factorial_table
from analysis.homework import BASELINE
from analysis.html_report import write_html_report
from analysis.optuna_study import build_study, write_optuna_db
from analysis.pareto import FIGURE as PARETO_FIGURE
from analysis.pareto import plot_pareto, selection_record
from analysis.report_figures import (
    MAX_WORKERS,
    Figure,
    FigureWriter,
    Progress,
    homework_figures,
    hpo_figures,
    render_png,
    worker_count,
    worker_pool,
)
from analysis.report_folder import MANIFEST, install, new_staging, user_files
from analysis.report_sections import render_report, status_counts
from analysis.results import check_experiment, collect_epochs
from analysis.summary import summarise
from study.core.files import write_json_atomic, write_text_atomic
from study.core.names import (
    BEST_CONFIG_JSON,
    BEST_CONFIG_YAML,
    HOMEWORK_CSV,
    LEADERBOARD,
    META_FILE,
    MODEL_FILE,
    OPTUNA_DB,
    REPORT_HTML,
    REPORT_MD,
    SUMMARY_DIR,
    RunStatus,
)
from study.core.names import FIGURES_DIR as FIGURES
from study.core.threshold import ThresholdRule, parse_threshold
from study.errors import StudyError

__all__ = ["FIGURES", "HOMEWORK_CSV", "MANIFEST", "MAX_WORKERS", "MODEL_FILE", "OPTUNA_DB",
           "Figure", "FigureWriter", "Progress", "export_best_model", "render_png",
           "render_report", "write_report"]

log = logging.getLogger(__name__)

# The runs that ended, one way or another (a trial without results, or still going, did not).
ENDED = (RunStatus.COMPLETED, RunStatus.STOPPED, RunStatus.DIVERGED, RunStatus.ERROR)


def export_best_model(exp_dir: Path, best: dict[str, Any], out: Path) -> Path | None:
    """Copy the best run's kept weights (best validation loss) to out/model.pt: the
    representative seed's slice of a stacked trial's checkpoint. None: no checkpoint kept."""
    # Imported here: torch costs seconds, and only this step (in a worker, where there is a
    # pool) needs it, so `import analysis.report` stays free of torch.
    from study.training.export import export_trial_model

    return export_trial_model(Path(exp_dir) / best["trial_dir"], Path(out) / MODEL_FILE,
                              best.get("representative_seed"))


def write_report(exp_dir: Path, out: Path | None = None, *,
                 progress: Progress | None = None, threshold: str | None = None
                 ) -> dict[str, Any]:
    """Write summary/ for an experiment folder and return what was written.

    The folder is built beside `out` and swapped in whole, so an interrupted or failed report
    leaves the previous one as it was. Only files a report wrote (recorded in its manifest,
    unchanged since) are replaced; other files in `out` are kept, and a non-empty folder that
    a report did not write is refused.

    Figures, optuna.db and model.pt are written by worker processes side by side where there
    are cores for them. `progress(phase, done, total)`, if given, is called as the work goes
    (`("figures", 5, 13)` after the fifth of 13 figures; `("optuna.db", 1, 1)` when it is
    written); the same steps are logged at INFO.

    `threshold` (a rule of study.core.threshold) sets the clinical readout's operating
    threshold; by default the study's `--threshold`, else the trials' own 0.5.

    Returns the summary (experiment, metric, mode, meta, trials, leaderboard, best) with `out`,
    `missing` (what a partial experiment lacks), `figures`, `comparisons`, `optuna_db` and
    `epochs` (one row per reported epoch, as `collect_epochs` gives).
    """
    def step(phase: str, done: int, total: int) -> None:
        if progress is not None:
            progress(phase, done, total)

    exp_dir = Path(exp_dir)
    check_experiment(exp_dir)
    default = out is None
    out = Path(out) if out is not None else exp_dir / SUMMARY_DIR
    user = user_files(out, exp_dir, default)
    log.info("reading the results of %s", exp_dir)
    step("results", 0, 1)
    summary = summarise(exp_dir)  # damaged inputs are refused before anything is written
    rule = _threshold_rule(summary["meta"], threshold, exp_dir)
    staging = new_staging(out)
    try:
        result = _write_summary(exp_dir, summary, staging, out, step, progress, rule)
        install(staging, out, user)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


def _best_record(summary: dict[str, Any]) -> dict[str, Any]:
    """best_config.json/.yaml: the best configuration, its metrics and how to reproduce it."""
    best = summary["best"]
    return {
        "experiment": summary["experiment"],
        "metric": summary["metric"],
        "mode": summary["mode"],
        "command": summary["meta"].get("command"),
        "config": best["config"],
        "metrics": best["metrics"],
        "ci95": best["ci95"],
        "test_set_ci95": _none_if_nan(best.get("test_set_ci95")),
        "test_set_method": best.get("test_set_method"),
        "combined_ci95": _none_if_nan(best.get("combined_ci95")),
        "n_seeds": best["n_seeds"],
        "seeds": best["seeds"],
        "trial_ids": best["trial_ids"],
        "representative_seed": best["representative_seed"],
        **selection_record(summary.get("pareto")),  # several objectives: how it was chosen
    }


def _none_if_nan(value: Any) -> Any:
    return None if isinstance(value, float) and value != value else value


def _missing_inputs(summary: dict[str, Any]) -> list[str]:
    """What a partial experiment lacks, in words: no best yet, no study.json, trials that did
    not finish or errored, trials that never started."""
    meta, trials = summary["meta"], summary["trials"]
    missing = []
    if summary["best"] is None:
        missing.append("no trial reported a validation score; no best configuration yet")
    if not meta:
        missing.append(f"no {META_FILE}: command, data and search space unknown; parameter "
                       f"distributions in {OPTUNA_DB} are inferred from the values seen")
    if not trials.empty:
        unfinished = trials[~trials["status"].isin(ENDED)]
        if len(unfinished):
            missing.append(f"{len(unfinished)} trial(s) did not finish: "
                           + status_counts(unfinished))
        errored = trials[trials["status"].isin([RunStatus.ERROR, RunStatus.NO_RESULTS])]
        for row in errored.itertuples():
            missing.append(f"trial {row.trial_id} errored: {row.reason}")
    expected = meta.get("expected_trials")
    if expected and len(trials) < expected:
        missing.append(f"{expected - len(trials)} of {expected} requested trials never started")
    return missing


def _threshold_rule(meta: dict[str, Any], given: str | None, exp_dir: Path) -> ThresholdRule:
    """The operating threshold's rule: `given`, else the study's own (study.json), else 0.5."""
    text = given if given is not None else (meta.get("options") or {}).get("threshold", "0.5")
    try:
        return parse_threshold(str(text))
    except ValueError as exc:
        where = "--threshold" if given is not None else f"{exp_dir / META_FILE}: threshold"
        raise StudyError(f"{where} {exc}") from None


def _write_summary(exp_dir: Path, summary: dict[str, Any], out: Path, final: Path,
                   step: Progress, progress: Progress | None,
                   rule: ThresholdRule = DEFAULT_RULE) -> dict[str, Any]:
    """Write the summary files into `out` (a fresh folder that will be moved to `final`)."""
    meta, trials, metric = summary["meta"], summary["trials"], summary["metric"]
    best = summary["best"]
    folder = out / FIGURES
    folder.mkdir(exist_ok=True)
    figs = FigureWriter(folder, progress)
    # The workers start first and each job is handed to them as soon as its inputs are known,
    # so they draw while this process works out the statistics of the next: the slowest single
    # jobs (model.pt imports torch; optuna.db, SQLAlchemy) go first.
    workers = worker_count(MAX_WORKERS)
    pool = worker_pool(workers) if workers else None
    model_job = db_job = None
    try:
        if pool is not None and best is not None:
            model_job = pool.submit(export_best_model, exp_dir, best, out)
        epochs = collect_epochs(exp_dir)
        step("results", 1, 1)
        write_text_atomic(out / LEADERBOARD, summary["leaderboard"].to_csv(index=False))
        if best is not None:
            record = _best_record(summary)
            write_json_atomic(out / BEST_CONFIG_JSON, record)
            write_text_atomic(out / BEST_CONFIG_YAML, yaml.safe_dump(record, sort_keys=False))
        missing = _missing_inputs(summary)
        study_name = exp_dir.resolve().name
        study = build_study(trials, epochs, meta, study_name)
        if pool is not None and study.trials:
            db_job = pool.submit(write_optuna_db, study, out / OPTUNA_DB)
        clinical = collect_clinical(exp_dir, summary["runs"], best, rule)
        if clinical is not None:
            figs.submit([Figure(CLINICAL_FIGURE, "The best configuration on test: ROC, "
                                "precision-recall, confusion matrix, calibration",
                                plot_clinical, (clinical,))], pool)
        if summary.get("pareto") is not None:
            figs.submit([Figure(PARETO_FIGURE, "The configurations on the first two objectives: "
                                "the Pareto front, infeasible ones grey", plot_pareto,
                                (summary["pareto"],), size=(6.4, 4.8))], pool)
        importance, search_figures = hpo_figures(study, epochs, trials, metric)
        log.info("drawing figures%s", f" in {workers} processes" if workers else "")
        figs.submit(search_figures, pool)

        # The homework's intervals are over seeds: one row per run, each seed's own epochs.
        comparisons, table, homework = homework_figures(
            summary["runs"], collect_epochs(exp_dir, per_seed=True), meta)
        figs.submit(homework, pool, first=True)
        # ... and the grid as a whole: every run in one factorial model, beside them
        factorial = collect_factorial(summary["runs"], list(BASELINE), BASELINE)
        if factorial is not None:
            table = pd.concat([table, factorial_table(factorial)], ignore_index=True)
        if not table.empty:
            write_text_atomic(out / HOMEWORK_CSV, table.to_csv(index=False))
        figs.collect()
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
                missing.append(f"no checkpoint of the best trial; {SUMMARY_DIR}/{MODEL_FILE} "
                               "not written")
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    missing += figs.failed
    if db is None:
        missing.append(f"no trial ran; {OPTUNA_DB} not written")
    report = render_report(summary, comparisons, importance, figs.written, missing,
                           db.resolve() if db else None, study_name, factorial, clinical)
    write_text_atomic(out / REPORT_MD, report)
    step(REPORT_MD, 1, 1)
    write_html_report(out, figs.written)
    step(REPORT_HTML, 1, 1)
    return {**summary, "out": final, "missing": missing, "figures": list(figs.written),
            "comparisons": comparisons, "optuna_db": db, "study_name": study_name,
            "epochs": epochs}
