"""Phase `report` (report_seconds): `python -m study report` on the repeats phase's experiment.

Run in the parent, not as a child phase: each repetition is itself a fresh process writing a
fresh --out folder, timed from start to exit, with its CPU seconds (its figure workers too).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from runner import ROOT, log, now


def time_report(experiment: Path, out_dir: Path, reps: int) -> dict[str, Any]:
    """Run `python -m study report EXPERIMENT --out FRESH` `reps` times, each a new process
    writing a new folder (nothing cached), timed from start to exit; its CPU seconds (the
    process and its figure workers) from the kernel's accounting of waited-for children."""
    from study.core.names import FIGURES_DIR

    walls, cpus = [], []
    for i in range(reps):
        out = out_dir / f"report-{i}"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = now()
        done = subprocess.run([sys.executable, "-m", "study", "report", str(experiment),
                               "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                              timeout=600)
        walls.append(now() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if done.returncode != 0:
            raise RuntimeError(f"study report failed (exit {done.returncode}):\n"
                               f"{done.stderr[-3000:]}")
        figures = sorted(p.name for p in (out / FIGURES_DIR).glob("*.png"))
        shutil.rmtree(out, ignore_errors=True)
    return {"reps": reps, "wall_s": walls, "cpu_s": cpus, "figures": figures,
            "median_wall_s": statistics.median(walls), "median_cpu_s": statistics.median(cpus),
            "loadavg": list(os.getloadavg())}


def measure(args: argparse.Namespace, repeats: dict[str, Any], out_dir: Path,
            keys: dict[str, Any], details: dict[str, Any]) -> None:
    """The parent's side, on the `repeats` child's result: 3 (quick) or 5 reports, median."""
    log("report: `study report` on the 48-trial experiment")
    t = time_report(Path(repeats["separate_experiment"]), out_dir, 3 if args.quick else 5)
    t["trials"] = repeats["separate_trials"]
    details["report"] = t
    keys["report_seconds"] = t["median_wall_s"]
    keys["report_cpu_seconds"] = t["median_cpu_s"]
