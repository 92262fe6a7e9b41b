"""The Python entry point for notebooks: `study.run(...)` and `study.load(path)`.

    import study
    result = study.run(space="homework", search="grid", repeats=2, max_epochs=5)
    result.leaderboard.head()        # pandas DataFrame, best first
    result.best_config, result.best_metrics
    again = study.load(result.path)  # any experiment folder on disk, no Ray needed

`run` takes the options of `study run` as keyword arguments (`num_samples=30`,
`resume=True, name="hw"`) and records the call itself, not the kernel's argv, as the study's
command in study.json and report.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from study.core.names import HOMEWORK_CSV, SUMMARY_DIR
from study.errors import StudyError

if TYPE_CHECKING:  # `import study` stays light: pandas loads with the first result
    import pandas as pd


@dataclass
class StudyResult:
    """One experiment: where it lives, its leaderboard, its best configuration and metrics."""

    path: Path  # the experiment folder (Ray's files, study.json, summary/)
    leaderboard: pd.DataFrame  # one row per trial, best first
    best_config: dict[str, Any] | None  # None until a trial reported a validation score
    best_metrics: dict[str, float] = field(default_factory=dict)  # means over its seeds
    best_ci95: dict[str, float] = field(default_factory=dict)  # half-widths, with repeats
    homework: pd.DataFrame | None = None  # the homework's comparisons, where the study has them
    metric: str = "val_accuracy"
    mode: str = "max"
    command: str | None = None  # what started the study, as recorded in study.json
    interrupted: bool = False  # from study.run: the study did not finish

    @property
    def summary(self) -> Path:
        """summary/: report.md, report.html, leaderboard.csv, figures/, ..."""
        return self.path / SUMMARY_DIR

    def __repr__(self) -> str:
        best = "none yet"
        if self.best_config is not None and self.metric in self.best_metrics:
            best = f"{self.metric} {self.best_metrics[self.metric]:.4g}"
        return (f"StudyResult({str(self.path)!r}, {len(self.leaderboard)} trials, "
                f"best {best})")


def load(path: str | Path) -> StudyResult:
    """Read an experiment folder from disk (finished, partial or copied; no Ray needed)."""
    import pandas as pd

    from analysis.results import check_experiment
    from analysis.summary import summarise

    exp_dir = Path(path).expanduser()
    if not exp_dir.is_dir():
        raise StudyError(f"{exp_dir}: no such experiment folder")
    check_experiment(exp_dir)
    summary = summarise(exp_dir)
    best = summary["best"]
    homework_csv = exp_dir / SUMMARY_DIR / HOMEWORK_CSV
    homework = pd.read_csv(homework_csv) if homework_csv.is_file() else None
    return StudyResult(
        path=exp_dir.resolve(),
        leaderboard=summary["leaderboard"],
        best_config=best["config"] if best else None,
        best_metrics=dict(best["metrics"]) if best else {},
        best_ci95=dict(best.get("ci95", {})) if best else {},
        homework=homework,
        metric=summary["metric"],
        mode=summary["mode"],
        command=summary["meta"].get("command"),
    )


def call_text(options: dict[str, Any]) -> str:
    """How a `study.run(...)` call is recorded: `study.run(space='homework', repeats=2)`."""
    args = ", ".join(f"{k}={v!r}" for k, v in options.items())
    return f"study.run({args})"


def check_types(options: dict[str, Any]) -> None:
    """Refuse an option of the wrong type with a TypeError naming it (`num_samples="2"`,
    `quiet="no"`), before anything runs. The types are RunOptions' own annotations; a whole
    number is a float's value too, a bool is never a number."""
    from typing import get_args, get_type_hints

    from study.engine.options import RunOptions

    hints = {**get_type_hints(RunOptions), "quiet": bool}
    for name, value in options.items():
        allowed = get_args(hints[name]) or (hints[name],)
        ok = any(value is None if kind is type(None)
                 else isinstance(value, bool) if kind is bool
                 else isinstance(value, (int, float)) and not isinstance(value, bool)
                 if kind is float
                 else isinstance(value, kind) and not isinstance(value, bool) if kind is int
                 else isinstance(value, kind)
                 for kind in allowed)
        if not ok:
            names = " or ".join("None" if k is type(None) else k.__name__ for k in allowed)
            raise TypeError(f"study.run({name}=...): must be {names}, got "
                            f"{type(value).__name__} {value!r:.60}")


def run(**options: Any) -> StudyResult:
    """Run (or with `resume=True`, continue) a study, write its summary, and return it.

    Keyword arguments are the options of `study run` with underscores (`num_samples`,
    `max_epochs`, `storage_path`, `wandb`, `mlflow`, ...); `quiet=True` shows only the final
    summary, `verbose=2` Ray's own table and the trials' log lines. Bad options raise
    StudyError with the same one-line message the command line prints.
    """
    from study.cli.run_report import run_and_report
    from study.engine.options import RunOptions, resolved

    known = {f.name for f in fields(RunOptions)}
    given = dict(options)
    unknown = sorted(set(given) - known - {"quiet"})
    if unknown:
        raise TypeError(f"study.run() got an unexpected keyword argument {unknown[0]!r}; "
                        f"it takes: {', '.join(sorted(known | {'quiet'}))}")
    check_types(given)
    quiet = given.pop("quiet", False)
    if quiet:
        given["verbose"] = 0
    if given.get("resume"):
        from study.engine.resume import resume_options

        opts = resolved(resume_options({k: given.get(k) for k in known}))
    else:
        opts = resolved(RunOptions(**given))
    result, summary = run_and_report(opts, command=call_text(options))
    if summary is None:
        print(f"Study {result.path.name} has finished all its {result.num_trials} trials; "
              f"nothing to resume (pass num_samples above {opts.num_samples} to add trials).")
        return load(result.path)
    loaded = load(result.path)
    loaded.interrupted = result.interrupted
    return loaded
