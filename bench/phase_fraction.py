"""Phase `fraction` (asha_tpe_epoch_fraction): the epochs a search trains to reach the grid's best.

The homework grid first (its best val_accuracy is the target), then per search seed TPE + ASHA,
random + ASHA and TPE + FIFO, one trial at a time: the epochs each trains until a reported
val_accuracy comes within 1 point of the target, / the grid's total epochs.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from concurrency import concurrency
from runner import SLOTS, TRIALS, log, now, run_child, trial_results, write_space

FRACTION_METHODS = (("optuna", "asha"), ("random", "asha"), ("optuna", "fifo"))


def phase_fraction(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    from study.engine.options import RunOptions
    from study.engine.ray_session import init_ray
    from study.engine.run import run_study

    epochs = 10
    spec = "synthetic:size=16,n=500,n_test=100"
    # Each search may train as many trials as the grid has; one that has not reached the
    # target by then counts every epoch it trained (a lower bound, flagged).
    samples = TRIALS
    storage = Path(tempfile.mkdtemp(prefix="fraction-", dir=args.out))
    # homework.yaml with the training seed held at 0, so only the search seed varies.
    space = str(write_space(storage / "homework-seed0.yaml", "homework", seed=0))
    base = dict(space=space, data=spec, max_epochs=epochs, storage_path=str(storage),
                num_cpus=SLOTS, verbose=0)
    init_ray(RunOptions(**base))
    try:
        start = now()
        grid = run_study(RunOptions(**base, search="grid", scheduler="fifo", name="grid"))
        grid_s = now() - start
        grid_trials = trial_results(grid.path)
        grid_epochs = sum(len(t) for t in grid_trials)
        best = max(r["val_accuracy"] for t in grid_trials for r in t)
        runs = []
        for seed in range(args.seeds):
            for search, scheduler in FRACTION_METHODS:
                name = f"{search}-{scheduler}-{seed}"
                start = now()
                run = run_study(RunOptions(**base, search=search, scheduler=scheduler,
                                           num_samples=samples, max_concurrent=1, seed=seed,
                                           name=name))
                wall = now() - start
                trials = trial_results(run.path)
                count, reached = 0, None
                for t in trials:  # one trial at a time: creation order is training order
                    for r in t:
                        count += 1
                        if reached is None and r["val_accuracy"] >= best - 1.0:
                            reached = count
                runs.append({"search": search, "scheduler": scheduler, "seed": seed,
                             "epochs_total": count, "epochs_to_target": reached,
                             "best": max(r["val_accuracy"] for t in trials for r in t),
                             "wall_s": wall, "concurrency": concurrency(trials, 1)})
    finally:
        ray.shutdown()
    shutil.rmtree(storage, ignore_errors=True)
    return {"data": spec, "epochs": epochs, "samples_per_search": samples,
            "grid_trials": len(grid_trials),
            "grid_epochs": grid_epochs, "grid_best_val_accuracy": best, "grid_s": grid_s,
            "grid": {"concurrency": concurrency(grid_trials, SLOTS)},
            "grid_final_val_accuracy": sorted(t[-1]["val_accuracy"] for t in grid_trials),
            "runs": runs}


def fraction_summary(out: dict[str, Any]) -> dict[str, Any]:
    summary = {}
    for search, scheduler in FRACTION_METHODS:
        runs = [r for r in out["runs"] if (r["search"], r["scheduler"]) == (search, scheduler)]
        # Not reached: counted as every epoch it trained (a lower bound), and flagged.
        fracs = [(r["epochs_to_target"] or r["epochs_total"]) / out["grid_epochs"] for r in runs]
        summary[f"{search}+{scheduler}"] = {
            "fraction_mean": statistics.fmean(fracs), "fractions": fracs,
            "reached": sum(r["epochs_to_target"] is not None for r in runs), "seeds": len(runs)}
    return summary


def measure(args: argparse.Namespace, out_dir: Path, keys: dict[str, Any],
            details: dict[str, Any]) -> None:
    """The parent's side: the child with --seeds (3 quick, 5 full), then the summary."""
    log("fraction: homework grid, then TPE/random + ASHA and TPE + FIFO per seed")
    seeds = ["--seeds", str(args.seeds or (3 if args.quick else 5))]
    f = run_child("fraction", out_dir, seeds + (["--quick"] if args.quick else []))
    summary = fraction_summary(f)
    details["fraction"] = {**f, "summary": summary}
    keys["asha_tpe_epoch_fraction"] = summary["optuna+asha"]["fraction_mean"]
    keys["random_asha_epoch_fraction"] = summary["random+asha"]["fraction_mean"]
    keys["tpe_fifo_epoch_fraction"] = summary["optuna+fifo"]["fraction_mean"]
