"""Phases `optuna_ours` and `optuna_plain` (optuna_wall_ratio): our run vs plain Optuna.

The same search (16 trials x 10 epochs at 64x64, TPE with the same settings, the same data,
model and loop), once as `run_study` (Ray's start and stop included), once in plain Optuna in
one process; each a child process timed from start to exit.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from concurrency import concurrency
from runner import EPOCHS, SLOTS, TRIALS, log, now, run_child, trial_results

OPTUNA_DATA = "synthetic:size=64"


def _optuna_opts(storage: str) -> Any:
    from study.engine.options import RunOptions

    return RunOptions(space="default", data=OPTUNA_DATA, search="optuna", scheduler="fifo",
                      num_samples=TRIALS, max_epochs=EPOCHS, image_size=64, storage_path=storage,
                      name="ours", seed=0, num_cpus=SLOTS)


def phase_optuna_ours(args: argparse.Namespace) -> dict[str, Any]:
    from study.engine.run import run_study

    storage = Path(tempfile.mkdtemp(prefix="optuna-ours-", dir=args.out))
    start = now()
    run = run_study(_optuna_opts(str(storage)))  # ray.init ... ray.shutdown, as `study run`
    wall = now() - start
    trials = trial_results(run.path)
    shutil.rmtree(storage, ignore_errors=True)
    return {"run_study_s": wall, "trials": len(trials),
            "epochs": sum(len(t) for t in trials), "errors": run.num_errors,
            "best_val_accuracy": max(t[-1]["val_accuracy"] for t in trials),
            "concurrency": concurrency(trials, SLOTS)}


def phase_optuna_plain(args: argparse.Namespace) -> dict[str, Any]:
    """The same search with plain Optuna in this one process, as a laptop user would write it."""
    start = now()
    import optuna
    import torch

    from study.engine.builders import prepared_space
    from study.search.optuna_space import optuna_space
    from study.training.config import TrialConfig
    from study.training.data import load_data
    from study.training.device import to_device
    from study.training.loop import fit

    opts = _optuna_opts("")
    space = prepared_space(opts)
    data = to_device(load_data(OPTUNA_DATA), torch.device("cpu"), 64)
    define = optuna_space(space)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # The sampler settings of study.engine.builders.optuna_searcher.
    sampler = optuna.samplers.TPESampler(seed=opts.seed,
                                         n_startup_trials=max(4, min(10, TRIALS // 3)),
                                         multivariate=True, group=True, constant_liar=True)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    trained = []

    def objective(trial: optuna.Trial) -> float:
        constants = define(trial)
        cfg = TrialConfig.from_dict({**trial.params, **constants})
        t = now()
        state = fit(cfg, data)
        trained.append(now() - t)
        return state.history[-1]["val_accuracy"]

    setup = now() - start
    study.optimize(objective, n_trials=TRIALS)
    return {"in_process_s": now() - start, "setup_s": setup, "training_s": sum(trained),
            "threads": torch.get_num_threads(), "best_val_accuracy": study.best_value}


def measure(args: argparse.Namespace, out_dir: Path, keys: dict[str, Any],
            details: dict[str, Any]) -> None:
    """The parent's side: both children, once (quick) or twice each, medians."""
    log("optuna: plain Optuna in one process vs our run_study (16 x 10 epochs, 64x64)")
    reps = 1 if args.quick else 2
    plain, ours = [], []
    for _ in range(reps):
        ours.append(run_child("optuna_ours", out_dir))
        # Two PyTorch threads on two busy cores can run 10-30x slower than one (each
        # operator waits for a descheduled partner): plain Optuna is stopped at 3x our
        # time, and the ratio is then an upper bound.
        plain.append(run_child("optuna_plain", out_dir,
                               timeout=max(120.0, 3 * ours[-1]["child_wall_s"])))
    p = statistics.median(r["child_wall_s"] for r in plain)
    o = statistics.median(r["child_wall_s"] for r in ours)
    details["optuna"] = {"plain": plain, "ours": ours, "plain_wall_s": p, "ours_wall_s": o,
                         "plain_stopped": any(r.get("stopped") for r in plain)}
    keys["optuna_wall_ratio"] = o / p
