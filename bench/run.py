"""Benchmarks: does a study's time go to training, on the CPU and on a GPU?

Runs every measurement side by side in one process tree (each Ray study in its own child
process), prints a Markdown table and, with `--json FILE`, writes the keys below. Everything is
also written to `bench/results/<date-time>/` (git-ignored) and `bench/results/latest.json`.

    python bench/run.py --quick --json out.json      # the CPU keys, < 15 minutes on 2 cores
    python bench/run.py                              # more seeds and repetitions
    python bench/run.py --only epoch,memory          # a subset
    python bench/run.py --gpu --json gpu.json        # the GPU keys only, < 7 minutes, one GPU
    python bench/run.py --gpu --device cpu --quick   # the GPU phases checked on a CPU, keys null

Keys (numbers; null where not measured, e.g. the GPU keys without a GPU):
- overhead_ratio: wall time of `run_study` with Ray already started / ideal, where
  ideal = sum of the trials' pure training seconds / concurrent slots. 16 trials x 10 epochs,
  32x32 synthetic, Optuna + FIFO, `search_spaces/default.yaml`. Pure training seconds: each
  epoch's training and validation as timed inside the trial (`epoch_seconds`), so they see
  the same machine load as the study; full runs also re-train every config alone, 1 thread,
  without Ray, as a cross-check.
- naive_overhead_ratio: the same 16 configurations (handed to OptunaSearch as
  points_to_evaluate) written the way Ray Tune's examples write them: data built per trial, a
  DataLoader loop inside the trainable, no actor reuse; divided by the same ideal.
- optuna_wall_ratio: wall time of our `run_study` (a child process: interpreter, imports,
  ray.init, 16 trials x 10 epochs at 64x64, Optuna + FIFO, ray.shutdown) / wall time of the same
  search in plain Optuna in one process (TPE with the same settings, the same data, model and
  loop, PyTorch's default threads), also a child process timed from start to exit.
- epoch_speedup_cpu: seconds per training epoch of the homework's loop (bench/homework_loop.py)
  / ours (`study.training.loop.train_one_epoch`), 256x256, 1,600 images, batch 32, the lab's model.
- asha_tpe_epoch_fraction: mean over search seeds of the epochs TPE + ASHA trains (one trial
  at a time) until a reported val_accuracy first comes within 1 point of the best of the full
  homework.yaml grid, / the grid's total epochs. Random + ASHA and TPE + FIFO alongside.
- memory_ratio_4_trials: peak of the summed proportional set size (PSS: shared pages such as
  the object store and libtorch counted once) of the whole process tree with 4 concurrent
  trials on 256x256 data / with 1 trial. Summed RSS is reported alongside. A figure, not a
  target: one process per concurrent trial is Ray Tune's model.
- repeats_speedup_cpu: the trials' own seconds (Ray's `time_this_iter_s`, summed over every
  reported epoch) of the homework grid x 3 seeds at 32x32 for 3 epochs, run as 48 separate
  trials (the seed a grid axis) / as 16 trials each stacking its configuration's 3 seeds
  (`repeats=3`), one after the other on one Ray.
- cnn_repeats_speedup_cpu, cnn_epoch_vs_plain_cpu: the CNN family's epoch at 28x28, 3 separate
  seeds / 3 stacked (grouped convolutions), and a plain DataLoader loop on the same network /
  ours (bench/phase_cnn.py).
- report_seconds: `python -m study report` on the 48-trial experiment of the repeats phase, a
  fresh process writing a fresh --out folder, start to exit, median of 3 (5); its CPU seconds
  (with its figure workers) as report_cpu_seconds.
Beside the keys, for every Ray study a phase runs: how many trials ran at once (peak, mean
weighted by time over the study's span, and how many trial starts found every other slot busy)
next to its slots, from each trial's reported times (bench/concurrency.py); a table under the
keys, and `concurrency` in that study's details.
GPU keys (`--gpu`, one GPU; each phase has a time limit and leaves its key null past it):
- epoch_speedup_gpu_bs2, _bs16, _bs32, _bs128: seconds per epoch of the lab's loop / ours (the
  training step captured as a CUDA graph, `training.cuda_graph`) at 256x256, 1,600 images, the
  lab's model; interleaved epochs after a warm-up, medians.
- gpu_repeats_epoch_ratio, gpu_cnn_repeats_epoch_ratio: seconds per epoch (training, then
  validation, one host sync) of 3 seeds stacked in one model / of one seed, the step captured
  on both sides, batch 32: the lab's MLP at 256x256, the CNN (3 blocks of 16 channels) at 64x64.
- gpu_study_wall_s: `bench/gpu_check.py --epochs 10 --batch-size 32 --n 1000
  --cpus-per-trial 1` (16 trials at 0.125 GPU, 64x64): its run_study wall time.
- gpu_grid_wall_s: the homework grid x 3 seeds (stacked) at 256x256 on 1000 + 1000 synthetic
  training images, 0.125 GPU and 1 CPU a trial: run_study's wall time, Ray's start included.
Beside them, `gpu_profile` (no key): one epoch under torch.profiler, ours at batch 2 and 128 and
the lab's at 2: the device's busy share of the epoch, the CUDA API calls counted and the busiest
ops (`profile_*.txt` in the results folder), so that a missed target comes with its profile.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import phase_cnn
import phase_epoch
import phase_fraction
import phase_gpu
import phase_memory
import phase_optuna
import phase_overhead
import phase_repeats
from runner import GPU_PHASES, PHASES, RESULTS, TARGETS, machine, now, versions, write_report

# `--phase NAME`: what each child process runs (bench/runner.py's `run_child` starts them).
PHASE_FUNCS = {"epoch": phase_epoch.phase_epoch,
               "overhead_ours": phase_overhead.phase_overhead_ours,
               "overhead_naive": phase_overhead.phase_overhead_naive,
               "optuna_ours": phase_optuna.phase_optuna_ours,
               "optuna_plain": phase_optuna.phase_optuna_plain,
               "fraction": phase_fraction.phase_fraction,
               "memory_study": phase_memory.phase_memory_study,
               "repeats": phase_repeats.phase_repeats, "cnn": phase_cnn.phase_cnn,
               "gpu_epoch": phase_gpu.phase_gpu_epoch, "gpu_stacked": phase_gpu.phase_gpu_stacked,
               "gpu_profile": phase_gpu.phase_gpu_profile, "gpu_grid": phase_gpu.phase_gpu_grid}


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = RESULTS / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    phases = GPU_PHASES if args.gpu else PHASES
    only = set(args.only.split(",")) if args.only else set(phases)
    unknown = only - set(phases)
    if unknown:
        raise SystemExit(f"--only: unknown phase {sorted(unknown)[0]!r}; known"
                         f"{' with --gpu' if args.gpu else ''}: {', '.join(phases)}")
    report: dict[str, Any] = {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(), "versions": versions(), "quick": args.quick,
        "command": "python bench/run.py " + " ".join(sys.argv[1:]),
    }
    keys: dict[str, Any] = dict.fromkeys(TARGETS)
    keys["memory_ratio_4_trials"] = None
    keys["gpu_note"] = ("GPU keys come from `python bench/run.py --gpu`" if not args.gpu
                        else None)
    details: dict[str, Any] = {}
    started = now()

    # In this order: the keys and details are written in the order the phases add them.
    if "epoch" in only:
        phase_epoch.measure(args, out_dir, keys, details)
    if "overhead" in only:
        phase_overhead.measure(args, out_dir, keys, details)
    if "optuna" in only:
        phase_optuna.measure(args, out_dir, keys, details)
    if "fraction" in only:
        phase_fraction.measure(args, out_dir, keys, details)
    if "memory" in only:
        phase_memory.measure(args, out_dir, keys, details)
    if "repeats" in only or "report" in only:  # the report phase reads the repeats' trials
        phase_repeats.measure(args, out_dir, keys, details, report="report" in only)
    if "cnn" in only:
        phase_cnn.measure(args, out_dir, keys, details)
    if args.gpu:
        report["failed_phases"] = phase_gpu.measure(args, only, out_dir, keys, details)

    report["total_s"] = now() - started
    report["machine"]["loadavg_end"] = list(os.getloadavg())
    report.update(keys)
    report["details"] = details
    print(write_report(report, out_dir, args.json))
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repetitions and seeds (< 15 min)")
    p.add_argument("--json", metavar="FILE", help="also write the results to FILE")
    p.add_argument("--gpu", action="store_true",
                   help=f"the GPU keys only ({', '.join(GPU_PHASES)}; < 7 minutes on one GPU)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="with --gpu: where the GPU phases run; cpu checks them on a machine "
                   "without a GPU (their figures in the details, the GPU keys null)")
    p.add_argument("--only", help=f"comma-separated phases of {', '.join(PHASES)}")
    p.add_argument("--seeds", type=int, help="search seeds for the epoch fraction (3 quick, 5)")
    # Internal: one phase in a child process.
    p.add_argument("--phase", choices=sorted(PHASE_FUNCS), help=argparse.SUPPRESS)
    p.add_argument("--phase-out", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--configs", help=argparse.SUPPRESS)
    p.add_argument("--trials", type=int, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.phase:
        out = PHASE_FUNCS[args.phase](args)
        Path(args.phase_out).write_text(json.dumps(out, indent=2, default=str))
        return 0
    # A time limit's SIGTERM unwinds as an exit, so that the phase running stops with us.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.device != "cuda" and not args.gpu:
        p.error("--device goes with --gpu")
    report = run_all(args)
    return 1 if report.get("failed_phases") else 0


if __name__ == "__main__":
    sys.exit(main())
