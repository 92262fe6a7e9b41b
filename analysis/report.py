"""`study report`: write summary/ from an experiment on disk.

summary/ holds best_config.json/.yaml, leaderboard.csv, model.pt (the best trial's kept weights),
homework.csv (the homework's comparisons arm by arm), optuna.db (the study rebuilt as an Optuna
SQLite storage), figures/*.png and report.md, which links them all. Every file is written
atomically, so an interrupted report never leaves half a file; a partial experiment reports what
it has and lists what is missing.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import io
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # figures are only ever written to files

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from analysis import homework, hpo  # noqa: E402
from analysis.optuna_study import build_study, write_optuna_db  # noqa: E402
from analysis.results import check_experiment, collect_epochs  # noqa: E402
from analysis.summary import summarise  # noqa: E402
from study.errors import StudyError  # noqa: E402
from study.io import write_json_atomic, write_text_atomic  # noqa: E402

log = logging.getLogger(__name__)

FIGURES = "figures"
OPTUNA_DB = "optuna.db"
HOMEWORK_CSV = "homework.csv"
DPI = 110
FINISHED = ("completed", "stopped", "diverged", "error")


def export_best_model(exp_dir: Path, best: dict[str, Any], out: Path) -> Path | None:
    """Copy the best trial's kept weights (best validation loss) to out/model.pt."""
    import torch

    from study.checkpoint import MODEL_FILE, save_model
    from study.config import TrialConfig

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
                         if k.endswith("weight") and getattr(v, "ndim", 0) == 2), None)
    if first_weight is None:
        raise StudyError(f"{path}: the best trial's checkpoint holds no layer weights")
    image_size = int(round(first_weight.shape[1] ** 0.5))
    save_model(out / MODEL_FILE, weights, config, image_size)
    return out / MODEL_FILE


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class FigureWriter:
    """Draws figures into figures/, records what was written and what failed."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.written: dict[str, str] = {}  # file name -> title
        self.failed: list[str] = []

    def save(self, name: str, title: str, draw: Callable[[], plt.Figure]) -> str | None:
        """Draw with `draw()`, write figures/<name>.png; on error record it and go on."""
        try:
            fig = draw()
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
        except Exception as exc:  # one bad figure must not cost the whole report
            log.warning("figure %s not drawn: %s", name, exc, exc_info=True)
            self.failed.append(f"figure {name}.png not drawn ({type(exc).__name__}: {exc})")
            return None
        finally:
            plt.close("all")
        file = f"{name}.png"
        write_bytes_atomic(self.folder / file, buffer.getvalue())
        self.written[file] = title
        return file


def _single(draw: Callable[[Any], Any], size: tuple[float, float]) -> Callable[[], plt.Figure]:
    def make() -> plt.Figure:
        fig, ax = plt.subplots(figsize=size)
        draw(ax)
        fig.tight_layout()
        return fig

    return make


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
    return ", ".join(f"{n} {status}" for status, n in counts.items())


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
        "interval. Two arms are compared with Welch's t-test, more with a one-way ANOVA.",
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
              "Best val. accuracy % (mean ± 95 % CI) | Homework (one run) | Verdict (test "
              "accuracy) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in comparisons:
        for i, a in enumerate(c["arms"]):
            extra = []
            for key, word in (("n_stopped", "stopped"), ("n_diverged", "diverged"),
                              ("n_error", "errored"), ("n_unfinished", "unfinished")):
                if a[key]:
                    extra.append(f"{a[key]} {word}")
            n = f"{a['n']}" + (f" ({', '.join(extra)})" if extra else "")
            lines.append(
                f"| {c['title'] if i == 0 else ''} | {a['label']} | {n} | "
                f"{_mean_ci(a['test_mean'], a['test_ci'])} | {_fmt(a['test_sd'])} | "
                f"{_mean_ci(a['val_mean'], a['val_ci'])} | {a['homework_label']} | "
                f"{c['verdict'] if i == 0 else ''} |")
    lines.append("")
    for c in comparisons:
        lines.append(f"- **{c['title']}**: {c['verdict']}. Arms: {c['note']}")
    lines.append("")
    return lines


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
    for key in ("val_accuracy", "val_loss", "val_auroc", "test_accuracy", "test_auroc",
                "test_sensitivity", "test_specificity"):
        if key in best["metrics"]:
            digits = 2 if key.endswith("accuracy") else 4
            unit = " %" if key.endswith("accuracy") else ""
            value = _mean_ci(best["metrics"][key], best["ci95"].get(key, math.nan), digits)
            lines.append(f"| {key} | {value}{unit} |")
    lines.append("")
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
    if meta:
        size = meta.get("data_image_size")
        lines.append(f"- Data: `{meta.get('data')}`" + (f", {size}x{size} pixels" if size else "")
                     + (f"; {sizes.get('train')} train / {sizes.get('val')} validation / "
                        f"{sizes.get('test')} test images" if sizes else ""))
        lines.append(f"- Search: {meta.get('search')}; scheduler: {meta.get('scheduler')}; "
                     f"space: `{meta.get('space_file')}` (searched: "
                     f"{', '.join(meta.get('searched') or []) or 'nothing'}); "
                     f"{meta.get('epochs')} epochs; {meta.get('repeats', 1)} repeat(s) per "
                     "configuration")
        lines.append(f"- Selection metric: {summary['metric']} ({summary['mode']}), on the "
                     "validation split only; the test split chose nothing")
    expected = meta.get("expected_trials")
    lines.append(f"- Trials: {len(trials)}" + (f" of {expected} planned" if expected else "")
                 + f" ({_status_counts(trials)})")
    if meta.get("created"):
        lines.append(f"- Started: {meta['created']}; Ray {meta.get('ray_version', '?')}")
    lines.append("")
    if missing:
        lines += ["## Missing", "", "This report covers what the experiment holds so far:", ""]
        lines += [f"- {m}" for m in missing] + [""]
    lines += _best_section(summary["best"], summary["metric"], summary["mode"])
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
              "- `leaderboard.csv`: one row per trial, best first",
              "- `best_config.json`, `best_config.yaml`: the best configuration with its metrics; "
              "`study train --config best_config.yaml` retrains it",
              "- `model.pt`: the best trial's weights (best validation loss); "
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


def _homework_figures(trials: pd.DataFrame, epochs: pd.DataFrame, meta: dict[str, Any],
                      figs: FigureWriter) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    records, tables = [], []
    for factor in homework.BASELINE:
        comparison = homework.select_comparison(trials, factor, meta.get("searched"))
        if comparison is None:
            continue
        stats = homework.collect_arm_stats(comparison)
        result = homework.compare_test_accuracy(stats)
        records.append(homework.comparison_record(comparison, stats, result))
        tables.append(stats.assign(verdict=result.verdict, note=comparison.note))
        curves = homework.collect_arm_curves(comparison, epochs)
        figs.save(f"homework_{factor}_curves",
                  f"{comparison.title}: training and validation accuracy and loss per epoch",
                  lambda c=comparison, d=curves: homework.plot_comparison_curves(c, d))
        title = f"{comparison.title}: test accuracy\n{result.verdict}"
        figs.save(f"homework_{factor}_test",
                  f"{comparison.title}: test accuracy per arm beside the homework's numbers",
                  _single(lambda ax, s=stats, t=title: homework.plot_arm_tests(s, ax=ax, title=t),
                          (max(5.5, 1.7 * len(stats) + 2.5), 4.5)))
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    return records, table


def _hpo_figures(study: Any, epochs: pd.DataFrame, trials: pd.DataFrame, metric: str,
                 figs: FigureWriter) -> pd.DataFrame:
    maximize = hpo._maximize(study)
    history = hpo.collect_history(study)
    figs.save("hpo_history", "Optimisation history (best so far)",
              _single(lambda ax: hpo.plot_history(history, metric, maximize, ax=ax), (7.5, 4.2)))
    importance = hpo.collect_importance(study)
    figs.save("hpo_importance", "Parameter importance (Optuna evaluators)",
              _single(lambda ax: hpo.plot_importance(importance, ax=ax),
                      (7.0, 1.2 + 0.5 * max(2, importance["param"].nunique()))))
    params = hpo.collect_params(study)
    dists = hpo.param_distributions(study)
    figs.save("hpo_parallel", "Parallel coordinates of the searched parameters",
              _single(lambda ax: hpo.plot_parallel(params, dists, metric, ax=ax),
                      (min(15.0, max(7.0, 1.8 * (len(dists) + 1))), 4.8)))
    for name, dist in dists.items():
        figs.save(f"hpo_scatter_{name}", f"{metric} against {name}",
                  _single(lambda ax, n=name, d=dist: hpo.plot_param_scatter(
                      params, n, d, metric, maximize, ax=ax), (5.5, 4.0)))
    figs.save("hpo_learning_curves", "Learning curves of every trial, stopped trials marked",
              _single(lambda ax: hpo.plot_learning_curves(epochs, trials, metric, ax=ax),
                      (8.0, 4.8)))
    return importance


# --- the output folder: only what the tool wrote is ever replaced ---------------------------


MANIFEST = ".study-report.json"  # what a report wrote into its folder, with each file's SHA-256
_OWN_NAMES = ("leaderboard.csv", "best_config.json", "best_config.yaml", "model.pt",
              HOMEWORK_CSV, OPTUNA_DB, "report.md")


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


def write_report(exp_dir: Path, out: Path | None = None) -> dict[str, Any]:
    """Write summary/ for an experiment folder and return what was written.

    The folder is built beside `out` and swapped in whole, so an interrupted or failed report
    leaves the previous one as it was. Only files a report wrote (recorded in its manifest,
    unchanged since) are replaced; other files in `out` are kept, and a non-empty folder that
    a report did not write is refused.

    Returns the summary (experiment, metric, mode, meta, trials, leaderboard, best) with `out`,
    `missing` (what a partial experiment lacks), `figures`, `comparisons` and `optuna_db`.
    """
    exp_dir = Path(exp_dir)
    check_experiment(exp_dir)
    default = out is None
    out = Path(out) if out is not None else exp_dir / "summary"
    user = _user_files(out, exp_dir, default)
    summary = summarise(exp_dir)  # damaged inputs are refused before anything is written
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as exc:
        raise StudyError(f"{out}: cannot be created ({exc.strerror})") from None
    try:
        staging.chmod(0o777 & ~_umask())
        result = _write_summary(exp_dir, summary, staging, out)
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


def _write_summary(exp_dir: Path, summary: dict[str, Any], out: Path,
                   final: Path) -> dict[str, Any]:
    """Write the summary files into `out` (a fresh folder that will be moved to `final`)."""
    meta, trials, metric = summary["meta"], summary["trials"], summary["metric"]
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
        }
        write_json_atomic(out / "best_config.json", record)
        write_text_atomic(out / "best_config.yaml", yaml.safe_dump(record, sort_keys=False))
        if export_best_model(exp_dir, best, out) is None:
            missing.append("no checkpoint of the best trial; summary/model.pt not written")
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

    epochs = collect_epochs(exp_dir)
    folder = out / FIGURES
    folder.mkdir(exist_ok=True)
    figs = FigureWriter(folder)
    comparisons, table = _homework_figures(trials, epochs, meta, figs)
    if not table.empty:
        write_text_atomic(out / HOMEWORK_CSV, table.to_csv(index=False))
    study_name = exp_dir.resolve().name
    study = build_study(trials, epochs, meta, study_name)
    importance = _hpo_figures(study, epochs, trials, metric, figs)
    missing += figs.failed
    db = final / OPTUNA_DB if study.trials and write_optuna_db(study, out / OPTUNA_DB) else None
    if db is None:
        missing.append("no trial ran; optuna.db not written")
    report = render_report(summary, comparisons, importance, figs.written, missing,
                           db.resolve() if db else None, study_name)
    write_text_atomic(out / "report.md", report)
    return {**summary, "out": final, "missing": missing, "figures": list(figs.written),
            "comparisons": comparisons, "optuna_db": db, "study_name": study_name}
