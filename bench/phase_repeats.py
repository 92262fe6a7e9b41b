"""Phase `repeats` (repeats_speedup_cpu): K seeds as K separate trials vs one stacked trial.

The homework grid x 3 seeds at 32x32 for 3 epochs on one Ray: 48 trials (the seed a grid axis),
then 16 trials each stacking its configuration's 3 seeds (`repeats=3`); the trials' own seconds
(Ray's `time_this_iter_s`, summed) of the first / of the second. The report phase
(`phase_report`) then times `study report` on the 48-trial experiment.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

import phase_report
from concurrency import concurrency
from runner import SLOTS, log, now, ratio, run_child, trial_results, write_space

REPEATS_DATA = "synthetic:size=32"
REPEATS_EPOCHS = 3


def phase_repeats(args: argparse.Namespace) -> dict[str, Any]:
    """The homework grid x 3 seeds at 32x32 for 3 epochs, twice on one Ray: each seed its own
    trial (48 trials), then the seeds of a configuration stacked in one trial (16 trials).
    Leaves both experiments on disk (the report phase times `study report` on the first)."""
    import ray

    from study.engine.options import RunOptions
    from study.engine.ray_session import init_ray
    from study.engine.run import run_study

    storage = Path(tempfile.mkdtemp(prefix="repeats-", dir=args.out))
    seeds = list(range(3))
    # Separate trials: the seed is one more grid axis.
    separate_space = write_space(storage / "homework-seeds.yaml", "homework",
                                 params={"seed": {"choice": seeds}})
    base = dict(data=REPEATS_DATA, search="grid", scheduler="fifo", max_epochs=REPEATS_EPOCHS,
                image_size=32, storage_path=str(storage), num_cpus=SLOTS, verbose=0)
    init_ray(RunOptions(**base))
    try:
        start = now()
        separate = run_study(RunOptions(**base, space=str(separate_space), name="separate"))
        separate_wall = now() - start
        start = now()
        stacked = run_study(RunOptions(**base, space="homework", repeats=len(seeds),
                                       name="stacked"))
        stacked_wall = now() - start
    finally:
        ray.shutdown()

    def own_seconds(trials: list[list[dict[str, Any]]]) -> float:
        return sum(float(r.get("time_this_iter_s", 0.0)) for t in trials for r in t)

    sep, stk = trial_results(separate.path), trial_results(stacked.path)
    return {"data": REPEATS_DATA, "epochs": REPEATS_EPOCHS, "seeds": seeds,
            "separate_trials": len(sep), "stacked_trials": len(stk),
            "separate_epochs": sum(len(t) for t in sep),
            "stacked_epochs": sum(len(t) for t in stk),
            "separate_s": own_seconds(sep), "stacked_s": own_seconds(stk),
            "separate_wall_s": separate_wall, "stacked_wall_s": stacked_wall,
            "errors": separate.num_errors + stacked.num_errors,
            "separate": {"concurrency": concurrency(sep, SLOTS)},
            "stacked": {"concurrency": concurrency(stk, SLOTS)},
            "storage": str(storage), "separate_experiment": str(separate.path)}


def measure(args: argparse.Namespace, out_dir: Path, keys: dict[str, Any],
            details: dict[str, Any], report: bool = False) -> None:
    """The parent's side: the child, then (with `report`) the report phase on its 48-trial
    experiment, then the experiments are removed."""
    log("repeats: homework grid x 3 seeds, 32x32, 3 epochs: 48 trials, then 16 stacked")
    r = run_child("repeats", out_dir)
    details["repeats"] = r
    keys["repeats_speedup_cpu"] = ratio(r["separate_s"], r["stacked_s"])
    if report:
        phase_report.measure(args, r, out_dir, keys, details)
    shutil.rmtree(r["storage"], ignore_errors=True)
