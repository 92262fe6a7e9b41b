"""Phase `memory_study` (memory_ratio_4_trials): the process tree's peak memory, 4 trials vs 1.

The lab's configuration as k identical trials (k seeds) on 256x256 data, all running at once;
the parent samples the summed PSS and RSS of the child's whole process tree (Ray's included).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

from concurrency import concurrency
from runner import data_256, log, now, run_child, trial_results


def phase_memory_study(args: argparse.Namespace) -> dict[str, Any]:
    import yaml

    from study.engine.options import RunOptions
    from study.engine.run import run_study

    k = args.trials
    storage = Path(tempfile.mkdtemp(prefix=f"memory-{k}-", dir=args.out))
    # The lab's configuration, k seeds: identical trials, so only their number differs.
    space = storage / "space.yaml"
    space.write_text(yaml.safe_dump({"metric": "val_accuracy", "mode": "max",
                                     "params": {"seed": {"choice": list(range(k))}},
                                     "fixed": {"epochs": 2}}))
    start = now()
    run = run_study(RunOptions(space=str(space), data=str(data_256(Path(args.out))),
                               search="grid", scheduler="fifo", storage_path=str(storage),
                               name="memory", num_cpus=k, max_concurrent=k, verbose=0))
    wall = now() - start
    trials = trial_results(run.path)
    shutil.rmtree(storage, ignore_errors=True)
    return {"trials": len(trials), "errors": run.num_errors, "run_study_s": wall,
            "concurrency": concurrency(trials, k)}


def measure(args: argparse.Namespace, out_dir: Path, keys: dict[str, Any],
            details: dict[str, Any]) -> None:
    """The parent's side: 1 trial, then 4, each child's process tree sampled."""
    log("memory: 1 trial, then 4 concurrent trials, 256x256")
    data_256(out_dir)
    one = run_child("memory_study", out_dir, ["--trials", "1"], sample_memory=True)
    four = run_child("memory_study", out_dir, ["--trials", "4"], sample_memory=True)
    details["memory"] = {"1": one, "4": four}
    keys["memory_ratio_4_trials"] = four["peak_pss_mib"] / one["peak_pss_mib"]
    keys["memory_ratio_4_trials_rss"] = four["peak_rss_mib"] / one["peak_rss_mib"]
