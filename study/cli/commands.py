"""What `study train | evaluate | run | report` do, and what they print for people."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from study.core.names import (
    CONFIG_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    MODEL_FILE,
    REPORT_HTML,
    RUN_FILES,
    SUMMARY_DIR,
    RunStatus,
)
from study.engine.options import RunOptions, resolved
from study.engine.signals import sigterm_as_interrupt
from study.errors import StudyError


def _train_config(args: argparse.Namespace) -> Any:
    from study.cli.parser import given_flags
    from study.training.config import TrialConfig, read_config_file

    values: dict[str, Any] = read_config_file(args.config) if args.config else {}
    given = given_flags(args)
    flags = {f.name: getattr(args, f.name) for f in fields(TrialConfig)
             if f.name in given}
    if args.batchnorm is not None:
        flags["batchnorm"] = args.batchnorm
    if "width" in flags:
        flags["width"] = args.width[0] if len(args.width) == 1 else list(args.width)
    values.update(flags)
    where = f"--config {args.config}" if args.config else "flags"
    return TrialConfig.from_dict(values, where=where)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise StudyError(f"--out {out}: exists and is not a folder")
    present = [name for name in RUN_FILES if (out / name).exists()]
    if present and not overwrite:
        raise StudyError(
            f"--out {out}: already holds a run ({', '.join(present)}); "
            "choose another folder or pass --overwrite"
        )


def _make_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StudyError(f"--out {out}: cannot be created ({exc.strerror})") from None


def _print_test(metrics: dict[str, float]) -> None:
    print(f"Test accuracy is {metrics['test_accuracy']:.2f}%.")
    print(
        f"Test AUROC is {metrics['test_auroc']:.4f}, "
        f"sensitivity {metrics['test_sensitivity']:.4f}, "
        f"specificity {metrics['test_specificity']:.4f}."
    )


def cmd_train(args: argparse.Namespace) -> int:
    """`study train`: one configuration, no Ray."""
    import pandas as pd

    from study.core.files import write_json_atomic, write_text_atomic
    from study.training.checkpoint import save_model
    from study.training.data import load_data, resolve_spec
    from study.training.device import keep_freed_host_memory, resolve_device, to_device
    from study.training.loop import fit, seed_rows
    from study.training.model import check_fits

    config = _train_config(args)
    out = Path(args.out) if args.out else None
    if out is not None:
        _check_out(out, args.overwrite)
    device = resolve_device(args.device)
    spec = resolve_spec(args.data)
    data = to_device(load_data(spec), device, config.image_size)
    check_fits(config, data.image_size)
    if out is not None:
        _make_out(out)  # only once the data loaded: bad input leaves no empty folder behind
    print(f"Training {config.to_dict()} on {args.data} at {data.image_size}x{data.image_size} "
          f"({len(data.train)} train, {len(data.val)} validation, {len(data.test)} test) "
          f"on {device}.")

    def show(m: dict[str, float], _state: object) -> None:
        print(
            f"Epoch {int(m['epoch'])}/{config.epochs}: train loss {m['train_loss']:.4f} "
            f"acc {m['train_accuracy']:.2f}% | val loss {m['val_loss']:.4f} "
            f"acc {m['val_accuracy']:.2f}% AUROC {m['val_auroc']:.4f}",
            flush=True,
        )

    keep_freed_host_memory()
    state = fit(config, data, on_epoch=show)
    final = state.history[-1]
    seeds = config.seeds
    per_seed = final["seed_metrics"]
    for i, seed in enumerate(seeds):
        at = state.diverged_at[i]
        who = "Training" if len(seeds) == 1 else f"Seed {seed}: training"
        if at:
            loss = state.history[at - 1]["seed_metrics"]["train_loss"][i]
            print(f"{who} diverged at epoch {at} (train loss {loss}).")
        elif len(seeds) > 1:
            print(f"Seed {seed}: test accuracy {per_seed['test_accuracy'][i]:.2f}%.")
    if len(seeds) > 1:
        print(f"Mean over the {len(seeds)} seeds {seeds[0]}-{seeds[-1]}:")
    _print_test(final)
    if out is not None:
        run_info = {"config": config.to_dict(), "data": spec, "image_size": data.image_size,
                    "device": str(device)}
        write_json_atomic(out / CONFIG_FILE, run_info)
        # One row per epoch and seed, each seed's own values.
        write_text_atomic(out / HISTORY_FILE,
                          pd.DataFrame(seed_rows(state.history)).to_csv(index=False))
        metrics = [_run_metrics(state, i) for i in range(len(seeds))]
        record = metrics[0] if len(seeds) == 1 else {
            **{k: sum(m[k] for m in metrics) / len(seeds) for k in per_seed
               if k.startswith("test_")},
            "seeds": seeds, "seed_metrics": {k: [m[k] for m in metrics] for k in metrics[0]}}
        write_json_atomic(out / METRICS_FILE, record)
        # model.pt: the first seed; with repeats, every seed's model beside it.
        weights = state.best_model or state.model.state_dict()
        save_model(out / MODEL_FILE, weights, config, data.image_size, index=0)
        extra = []
        if len(seeds) > 1:
            for i, seed in enumerate(seeds):
                name = f"model_seed{seed}.pt"
                save_model(out / name, weights, config, data.image_size, index=i)
                extra.append(name)
        print(f"Wrote {out}/: {', '.join([*RUN_FILES, *extra])}.")
    else:
        print(f"Nothing was saved (no --out): pass --out DIR to keep the model and its record "
              f"({', '.join(RUN_FILES)}).")
    return 0


def _run_metrics(state: Any, index: int) -> dict[str, float]:
    """Seed `index`'s test metrics and best epoch (the epoch its kept weights come from)."""
    final = state.history[-1]["seed_metrics"]
    rows = [(h["epoch"], h["seed_metrics"]["val_loss"][index],
             h["seed_metrics"]["val_accuracy"][index]) for h in state.history]
    finite = [r for r in rows if r[1] == r[1]] or rows  # NaN after a divergence
    epoch, val_loss, val_accuracy = min(finite, key=lambda r: r[1])
    return {**{k: v[index] for k, v in final.items() if k.startswith("test_")},
            "best_epoch": int(epoch), "best_val_loss": val_loss,
            "best_val_accuracy": val_accuracy}


def cmd_evaluate(args: argparse.Namespace) -> int:
    """`study evaluate`: the homework's Task B, scored correctly for both losses."""
    import torch

    from study.training.checkpoint import load_model
    from study.training.data import load_data, resolve_spec
    from study.training.device import resolve_device, to_device
    from study.training.loop import evaluate
    from study.training.losses import get_loss

    config, model, image_size = load_model(args.checkpoint)
    device = resolve_device(args.device)
    raw = load_data(resolve_spec(args.data))
    if raw.image_size < image_size:
        raise StudyError(
            f"--data {args.data}: images are {raw.image_size}x{raw.image_size} but the model "
            f"was trained at {image_size}x{image_size}; images are never upsampled"
        )
    data = to_device(raw, device, image_size)
    metrics = evaluate(model.to(device), get_loss(config.loss), data.test)
    values = dict(zip(metrics, torch.stack(list(metrics.values())).tolist(), strict=True))
    print(f"Evaluating {args.checkpoint} ({config.loss}, {image_size}x{image_size}) on "
          f"{len(data.test)} test images of {args.data}.")
    _print_test({f"test_{k}": v for k, v in values.items()})
    return 0


def _options(args: argparse.Namespace) -> RunOptions:
    """RunOptions from the flags: defaults for those left out, or with --resume the study's."""
    from study.cli.parser import given_flags
    from study.engine.resume import resume_options

    if args.resume_or_start:
        _resume_or_start(args)
    flags = given_flags(args)
    asked = bool(getattr(args, "verbose", False)) or bool(getattr(args, "run_verbose", False))
    verbose = 0 if args.quiet else 2 if asked else 1
    if args.resume:  # a flag left out: the study's own value
        given = {f.name: getattr(args, f.name) if f.name in flags else None
                 for f in fields(RunOptions)}
        given.update(shared_storage=args.shared_storage, storage_path=args.storage_path,
                     verbose=verbose)
        return resolved(resume_options(given))
    values = {f.name: getattr(args, f.name) for f in fields(RunOptions) if hasattr(args, f.name)}
    # Resolved (and named) now, so that an interrupted run can say how to resume it.
    return resolved(RunOptions(**{**values, "verbose": verbose}))


def _resume_or_start(args: argparse.Namespace) -> None:
    """`--resume-or-start`: set `args.resume` if the experiment --name exists, and say which.

    What a requeued Slurm job or a retried RayJob runs: the same command starts the study the
    first time and resumes it (with the options it started with) every time after.
    """
    from study.engine.resume import found_experiment

    if args.resume:
        raise StudyError("--resume-or-start and --resume: give one of them (--resume-or-start "
                         "resumes the experiment if it exists)")
    if not args.name:
        raise StudyError("--resume-or-start needs --name: the experiment to resume, or start")
    args.resume = found_experiment(args.name, args.storage_path)
    verb = "Resuming the study" if args.resume else "Starting the study"
    print(f"{verb} {args.name} in {args.storage_path} (--resume-or-start).", flush=True)


def _print_best(summary: dict) -> None:
    best = summary.get("best")
    if not best:
        print("No trial finished with a validation score; nothing to recommend yet.")
        return
    from study.core.display import format_value

    metric = summary["metric"]
    print(f"\nBest configuration ({metric} {summary['mode']}, validation only):")
    for key, value in best["config"].items():
        print(f"  {key:>13}: {format_value(key, value)}")
    from analysis.summary import SUMMARY_METRICS

    for key in SUMMARY_METRICS:
        if key in best.get("metrics", {}):
            value = best["metrics"][key]
            spread = best.get("ci95", {}).get(key)
            extra = (f" ± {format_value(key, spread)} (95% CI, n={best['n_seeds']})"
                     if spread else "")
            print(f"  {key:>16}: {format_value(key, value)}{extra}")
    note = _best_note(summary, _epochs_of(summary))
    if note:
        print(note)


def _epochs_of(summary: dict) -> Any:
    """Every reported epoch of the experiment summarised (None if it cannot be read)."""
    from analysis.results import collect_epochs

    if summary.get("epochs") is not None:  # the report read them already
        return summary["epochs"]
    if not summary.get("experiment"):
        return None
    try:
        return collect_epochs(Path(summary["experiment"]))
    except (OSError, StudyError):
        return None


def _best_note(summary: dict, epochs: Any = None) -> str | None:
    """Why the best configuration is not the single best score seen, when it is not.

    `epochs` (one row per reported epoch) lets it explain a best epoch of the progress display
    that is higher than any trial's final score.
    """
    from study.core.display import format_value

    board, best, metric = summary.get("leaderboard"), summary["best"], summary["metric"]
    if board is None or board.empty or metric not in board or "trial_id" not in board:
        return None
    scored = board[board[metric].notna()]
    if scored.empty:
        return None
    top = scored.iloc[0]  # the leaderboard is sorted best first
    if top["trial_id"] in best.get("trial_ids", []):
        return _best_epoch_note(summary, epochs)
    if summary.get("pareto") is not None:  # several objectives or constraints chose it
        from analysis.pareto import NONE_FEASIBLE, RULE

        front = summary["pareto"]
        feasible = "" if "feasible" not in board else (
            "" if bool(board.loc[board["trial_id"] == top["trial_id"], "feasible"].all())
            else ", but it does not meet the constraints")
        return (f"  (Trial {top['trial_id']} scored a higher {metric}, "
                f"{format_value(metric, float(top[metric]))}{feasible}; with several "
                f"objectives or constraints the best configuration is "
                f"{RULE if front.any_feasible else NONE_FEASIBLE}: see report.md.)")
    why = {RunStatus.STOPPED: "was stopped early by the scheduler, so its score is not a final "
           "one", RunStatus.UNFINISHED: "did not finish", RunStatus.DIVERGED: "diverged",
           RunStatus.ERROR: "errored"}.get(str(top.get("status")), f"is {top.get('status')}")
    return (f"  (Trial {top['trial_id']} scored a higher {metric}, "
            f"{format_value(metric, float(top[metric]))}, but it {why}; the best configuration "
            "is chosen among completed trials by the score of the weights it keeps (each seed's "
            "best-validation-loss epoch), averaged over its seeds. "
            "The progress display's best was the best epoch seen so far of any trial.)")


def _best_epoch_note(summary: dict, epochs: Any) -> str | None:
    """Say so when the progress display's best (an epoch of some trial during training) beats
    the best configuration's final score."""
    from study.core.display import format_value

    metric, best = summary["metric"], summary["best"]
    final = best.get("metrics", {}).get(metric)
    if epochs is None or final is None or metric not in epochs or "trial_id" not in epochs:
        return None
    scored = epochs[epochs[metric].notna()]
    if scored.empty:
        return None
    maximise = summary["mode"] == "max"
    peak = scored.loc[scored[metric].idxmax() if maximise else scored[metric].idxmin()]
    if (peak[metric] <= final) if maximise else (peak[metric] >= final):
        return None
    return (f"  (The progress display's best, {format_value(metric, float(peak[metric]))} at "
            f"epoch {int(peak['epoch'])} of trial {peak['trial_id']}, was one epoch's score "
            "during training; the best configuration is chosen by the score of the weights it "
            "keeps (each seed's best-validation-loss epoch), averaged over its seeds.)")


def cmd_run(args: argparse.Namespace) -> int:
    """`study run`: run the study, then write and show its summary.

    Exit status 0 when every requested trial ended (completed, stopped early, diverged or
    errored), 130 when the study was interrupted (Ctrl-C), 143 when it was stopped by SIGTERM
    (`kill`, `timeout`, Slurm, Kubernetes), 129 by SIGHUP (its terminal closed), handled like
    Ctrl-C: what finished is saved, the partial summary written and the message says how to
    resume.
    """

    opts = _options(args)
    with sigterm_as_interrupt() as stop:
        return _run(args, opts, stop)


def _run(args: argparse.Namespace, opts: RunOptions, stop: Any) -> int:
    """`cmd_run` with `stop` (a signals.Stop) telling which signal interrupted it."""
    from study.cli.run_report import SummaryInterrupted, run_and_report
    from study.engine.experiment import experiment_dir, resume_command, storage_root

    start = time.monotonic()
    try:
        run, summary = run_and_report(opts, command=args.command_line)
    except SummaryInterrupted as stopped:  # summary/ is whole: the old one or the new one
        print(f"\nInterrupted while writing the summary; the results are saved. Write it "
              f"with: {shlex.join(['study', 'report', str(stopped.run.path)])}",
              file=sys.stderr)
        return stop.status
    except KeyboardInterrupt:
        exp_dir = experiment_dir(opts)
        if opts.resume or exp_dir is None or exp_dir.exists():
            print(f"\nInterrupted. Finished trials are saved; continue with: "
                  f"{resume_command(opts.name, storage_root(opts.storage_path))}",
                  file=sys.stderr)
        else:
            print("\nInterrupted before the study started; nothing was saved. Run the same "
                  "command again to start it.", file=sys.stderr)
        return stop.status
    if summary is None:
        print(f"Study {run.path.name} has finished all its {run.num_trials} trials; nothing "
              f"to resume (pass --num-samples above {opts.num_samples} to add trials, "
              f"or see {run.path / SUMMARY_DIR}).")
        return 0
    wall = time.monotonic() - start
    _print_best(summary)
    print(f"\n{run.num_trials} trials ({run.num_errors} errored) in {wall:.1f} s.")
    print(f"Results: {run.path}\nSummary: {run.path / SUMMARY_DIR} (open "
          f"{run.path / SUMMARY_DIR / REPORT_HTML} in a browser)")
    if run.interrupted:
        print(f"\nInterrupted: the study did not finish; what finished is saved. Continue "
              f"with: {resume_command(run.path.name, run.path.parent)}", file=sys.stderr)
        return stop.status
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """`study report RESULTS_DIR`: regenerate summary/ from results on disk."""
    from analysis.report import write_report

    path = Path(args.results_dir)
    if not path.is_dir():
        raise StudyError(f"RESULTS_DIR {path}: no such folder")
    threshold = getattr(args, "threshold", None)  # callers building a Namespace may leave it
    if threshold is not None:
        from study.core.threshold import parse_threshold

        try:
            parse_threshold(threshold)
        except ValueError as exc:
            raise StudyError(f"--threshold {exc}") from None
    from study.cli.run_report import check_summary_target, summary_fault
    from study.core.display import SummaryProgress

    out = Path(args.out) if args.out else None
    check_summary_target(path, out or path / SUMMARY_DIR)
    try:
        with SummaryProgress() as show:
            summary = write_report(path, out=out, progress=show, threshold=threshold)
    except OSError as exc:  # a full disk, a folder made read-only: one line, what to do
        raise summary_fault(path, out or path / SUMMARY_DIR, exc) from None
    _print_best(summary)
    for line in summary.get("missing", []):
        print(f"Missing: {line}")
    print(f"Summary: {summary['out']}")
    return 0
