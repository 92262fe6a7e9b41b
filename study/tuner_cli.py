"""`study run` and `study report`: their options, and what they print for people."""

from __future__ import annotations

import argparse
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
    p.add_argument("--space", default="default",
                   help="search space YAML, or a shipped one: default, homework (default: default)")
    p.add_argument("--data", default="synthetic", help="data spec (default: synthetic)")
    p.add_argument("--search", choices=("optuna", "random", "grid"),
                   help="optuna (TPE, default), random, or grid (Ray's variant generator)")
    p.add_argument("--scheduler", choices=("asha", "hyperband", "median", "pbt", "fifo"),
                   help="early stopping / population scheduler (default: asha; fifo for "
                   "--search grid, whose arms and repeats must all train to the end)")
    p.add_argument("--num-samples", type=int,
                   help="configurations to try (default 20; grid: passes over the grid, 1)")
    p.add_argument("--max-epochs", type=int, help="override the space's epochs")
    p.add_argument("--image-size", type=int, help="override the space's image size")
    p.add_argument("--repeats", type=int, default=1,
                   help="train every configuration with this many seeds (default 1)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="default 1")
    p.add_argument("--gpus-per-trial", type=float, default=0.0,
                   help="GPUs per trial, fractions allowed (0.25 packs 4 trials on a GPU)")
    p.add_argument("--max-concurrent", type=int, help="at most this many trials at once")
    p.add_argument("--address", help="Ray cluster: auto, host:port or ray://host:port "
                   "(default: a local Ray on 127.0.0.1, dashboard off)")
    p.add_argument("--storage-path", default="./results",
                   help="where experiments go: a folder or a URI such as s3://bucket/path")
    p.add_argument("--shared-storage", action="store_true",
                   help="declare a local --storage-path shared by all nodes (an NFS mount)")
    p.add_argument("--name", help="experiment name (default: study-<date>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the experiment --name")
    p.add_argument("--seed", type=int, default=0, help="search seed and first trial seed")
    p.add_argument("--max-failures", type=int, default=0,
                   help="retry a failed trial this many times from its last checkpoint")
    p.add_argument("--checkpoint-every", type=int, default=5,
                   help="checkpoint every N epochs, and at the end (0: only at the end)")
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
    from study.tuner import RunOptions

    return RunOptions(
        space=args.space, data=args.data, search=args.search,
        scheduler=args.scheduler or ("fifo" if args.search == "grid" else "asha"),
        num_samples=args.num_samples, max_epochs=args.max_epochs, image_size=args.image_size,
        repeats=args.repeats, cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent,
        address=args.address, storage_path=args.storage_path,
        shared_storage=args.shared_storage, name=args.name, resume=args.resume, seed=args.seed,
        max_failures=args.max_failures, checkpoint_every=args.checkpoint_every,
        num_cpus=args.num_cpus, verbose=0 if args.quiet else 1,
    )


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


def cmd_run(args: argparse.Namespace) -> int:
    """`study run`: run the study, then write and show its summary."""
    from analysis.report import write_report
    from study.tuner import run_study

    opts = _options(args)
    start = time.monotonic()
    try:
        run = run_study(opts)
    except KeyboardInterrupt:
        name = opts.name or "<the name printed above>"
        print(f"\nInterrupted. Finished trials are saved; continue with: study run --resume "
              f"--name {name} --storage-path {opts.storage_path} (and the same --space/--data)")
        return 130
    wall = time.monotonic() - start
    summary = write_report(run.path)
    _print_best(summary)
    print(f"\n{run.num_trials} trials ({run.num_errors} errored) in {wall:.1f} s.")
    print(f"Results: {run.path}\nSummary: {run.path / 'summary'}")
    if run.interrupted:
        print(f"The study did not finish; continue with: study run --resume --name "
              f"{run.path.name} --storage-path {run.path.parent}")
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
