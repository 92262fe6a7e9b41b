"""`study run` and `study report`: their options, and what they print for people."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from study.errors import StudyError


def add_run_parser(sub: argparse._SubParsersAction) -> None:
    """Add `study run` and its options."""
    p = sub.add_parser(
        "run",
        help="run a hyperparameter study (the main job)",
        description="Run a Ray Tune study: Optuna TPE + ASHA over search_spaces/default.yaml on "
        "synthetic data by default, on a local Ray. Writes summary/ into the experiment folder.",
    )
    # Flags default to None here so that `--resume` can tell a flag given from one left out
    # (left out: the study's own value from study.json); `_options` fills in the defaults.
    p.add_argument("--space", help="search space YAML, or a shipped one: default, homework "
                   "(default: default)")
    p.add_argument("--data", help="data spec (default: synthetic)")
    p.add_argument("--search", choices=("optuna", "random", "grid"),
                   help="optuna (TPE, default), random, or grid (Ray's variant generator)")
    p.add_argument("--scheduler", choices=("asha", "hyperband", "median", "pbt", "fifo"),
                   help="early stopping / population scheduler (default: asha; fifo for "
                   "--search grid, whose arms and repeats must all train to the end)")
    p.add_argument("--num-samples", type=int,
                   help="configurations to try (default 20; grid: passes over the grid, 1)")
    p.add_argument("--max-epochs", type=int, help="override the space's epochs")
    p.add_argument("--image-size", type=int, help="override the space's image size")
    p.add_argument("--repeats", type=int,
                   help="train every configuration with this many seeds (default 1)")
    p.add_argument("--cpus-per-trial", type=float, help="default 1")
    p.add_argument("--gpus-per-trial", type=float,
                   help="GPUs per trial, fractions allowed (0.25 packs 4 trials on a GPU; "
                   "default 0)")
    p.add_argument("--max-concurrent", type=int, help="at most this many trials at once")
    p.add_argument("--address", help="Ray cluster: auto, host:port or ray://host:port "
                   "(default: a local Ray on 127.0.0.1, dashboard off)")
    p.add_argument("--storage-path", default="./results",
                   help="where experiments go: a folder or a URI such as s3://bucket/path")
    p.add_argument("--shared-storage", action="store_true",
                   help="declare a local --storage-path shared by all nodes (an NFS mount)")
    p.add_argument("--name", help="experiment name (default: study-<date>-<time>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the experiment --name (in --storage-path) with the options "
                   "it started with; finished trials are kept, unfinished ones continue from "
                   "their last checkpoint")
    p.add_argument("--seed", type=int, help="search seed and first trial seed (default 0)")
    p.add_argument("--max-failures", type=int,
                   help="retry a failed trial this many times from its last checkpoint "
                   "(default 0)")
    p.add_argument("--checkpoint-every", type=int,
                   help="checkpoint every N epochs, and at the end (0: only at the end; "
                   "default 5)")
    p.add_argument("--num-cpus", type=int, help="CPUs a local Ray may use (default: all)")
    p.add_argument("--quiet", action="store_true", help="no progress table")


def add_report_parser(sub: argparse._SubParsersAction) -> None:
    """Add `study report`."""
    p = sub.add_parser(
        "report",
        help="figures, leaderboard and best-config exports from results on disk",
        description="Read a finished, partial or copied experiment folder (no Ray needed) and "
        "write summary/: best_config.json/.yaml, leaderboard.csv, report.md, figures/.",
    )
    p.add_argument("results_dir", metavar="RESULTS_DIR", help="the experiment folder")
    p.add_argument("--out", help="where to write (default: RESULTS_DIR/summary)")


def _options(args: argparse.Namespace):  # -> RunOptions
    """RunOptions from the flags: defaults for those left out, or with --resume the study's."""
    from dataclasses import fields, replace

    from study.tuner import RunOptions, default_name, resume_options

    given = {f.name: getattr(args, f.name, None) for f in fields(RunOptions)}
    given["verbose"] = 0 if args.quiet else 1
    if args.resume:
        return resume_options(given)
    defaults = RunOptions()
    opts = RunOptions(**{k: getattr(defaults, k) if v is None else v for k, v in given.items()})
    if args.scheduler is None:
        # Grid arms and repeats must all train to the end to be compared.
        opts = replace(opts, scheduler="fifo" if opts.search == "grid" else "asha")
    # Named now, so that an interrupted run can say how to resume it.
    return opts if opts.name else replace(opts, name=default_name())


def _print_best(summary: dict) -> None:
    best = summary.get("best")
    if not best:
        print("No trial finished with a validation score; nothing to recommend yet.")
        return
    print(f"\nBest configuration ({summary['metric']} {summary['mode']}, validation only):")
    for key, value in best["config"].items():
        print(f"  {key:>13}: {value}")
    for key in ("val_accuracy", "val_loss", "val_auroc", "test_accuracy", "test_auroc",
                "test_sensitivity", "test_specificity"):
        if key in best.get("metrics", {}):
            value = best["metrics"][key]
            spread = best.get("ci95", {}).get(key)
            extra = f" ± {spread:.2f} (95% CI, n={best['n_seeds']})" if spread else ""
            print(f"  {key:>16}: {value:.4f}{extra}")


def _resume_command(opts) -> str:  # opts: RunOptions
    from study.tuner import storage_root

    return (f"study run --resume --name {opts.name} --storage-path "
            f"{storage_root(opts.storage_path)}")


def cmd_run(args: argparse.Namespace) -> int:
    """`study run`: run the study, then write and show its summary.

    Exit status 0 when every requested trial ended (completed, stopped early, diverged or
    errored), 130 when the study was interrupted (Ctrl-C): what finished is saved and the
    message says how to resume.
    """
    from study.tuner import experiment_dir, run_study

    opts = _options(args)
    start = time.monotonic()
    try:
        run = run_study(opts)
    except KeyboardInterrupt:
        exp_dir = experiment_dir(opts)
        if opts.resume or exp_dir is None or exp_dir.exists():
            print(f"\nInterrupted. Finished trials are saved; continue with: "
                  f"{_resume_command(opts)}", file=sys.stderr)
        else:
            print("\nInterrupted before the study started; nothing was saved. Run the same "
                  "command again to start it.", file=sys.stderr)
        return 130
    wall = time.monotonic() - start
    from analysis.report import write_report  # here: bad input fails without loading it

    try:
        summary = write_report(run.path)
    except KeyboardInterrupt:  # each summary file is whole: the old one or the new one
        print(f"\nInterrupted while writing the summary; the results are saved. Write it "
              f"with: study report {run.path}", file=sys.stderr)
        return 130
    _print_best(summary)
    print(f"\n{run.num_trials} trials ({run.num_errors} errored) in {wall:.1f} s.")
    print(f"Results: {run.path}\nSummary: {run.path / 'summary'}")
    if run.interrupted:
        print(f"\nInterrupted: the study did not finish; what finished is saved. Continue "
              f"with: study run --resume --name {run.path.name} --storage-path "
              f"{run.path.parent}", file=sys.stderr)
        return 130
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """`study report RESULTS_DIR`: regenerate summary/ from results on disk."""
    from analysis.report import write_report

    path = Path(args.results_dir)
    if not path.is_dir():
        raise StudyError(f"RESULTS_DIR {path}: no such folder")
    summary = write_report(path, out=Path(args.out) if args.out else None)
    _print_best(summary)
    for line in summary.get("missing", []):
        print(f"Missing: {line}")
    print(f"Summary: {summary['out']}")
    return 0
