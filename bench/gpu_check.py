"""GPU check: a 16-trial study at 0.125 GPU per trial on 64x64 synthetic data.

Run it on a machine with one GPU:

    python bench/gpu_check.py                     # 16 trials, 0.125 GPU and 0.5 CPU each
    python bench/gpu_check.py --json gpu.json     # also write the numbers as JSON

It runs the study through `study.engine.run.run_study` (the code path of `study run`) with FIFO
scheduling, so no trial is stopped early, and prints for each trial whether it trained on CUDA
and its training seconds, then the most trials that ran at once, the wall time and the sum of
training seconds. On one GPU, 0.125 GPU per trial should show 8 trials at once, all on CUDA.

Without a visible GPU (or with --cpu) it runs in CPU mode, 0 GPUs per trial and 1 CPU each, and
says so: a smoke test of the script, not a GPU measurement.

Where the numbers come from (nothing is added to the trainable):
- `device`: what each trial reported (`cuda` or `cpu`), from its result.json.
- training seconds: Ray's `time_this_iter_s` per epoch, from result.json. Ray's first
  iteration also times the trial's setup (fetching the data, copying it to the device, building
  the model, the actor's CUDA initialisation), so `train_s` counts epoch 1 at the median epoch
  time, and `setup_s` is what epoch 1 took beyond that; `trainable_s` is Ray's raw sum.
- trials at once: each trial ran from (its last result's arrival - time_total_s) to its last
  result's arrival (Tune's `last_result_time` in the experiment state, a float wall clock);
  the most intervals that overlap at one moment.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing, too

SPACE = """\
metric: val_accuracy
mode: max
params:
  lr: {{loguniform: [1.0e-4, 1.0e-2]}}
  dropout: {{uniform: [0.0, 0.5]}}
fixed:
  loss: ce
  batch_size: {batch_size}
  depth: 3
  width: 256
  image_size: {image_size}
  epochs: {epochs}
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=16, help="number of trials (default 16)")
    p.add_argument("--gpus-per-trial", type=float, default=0.125, help="default 0.125")
    p.add_argument("--cpus-per-trial", type=float, default=None,
                   help="default 0.5 with a GPU (CPUs must not be what limits packing), "
                   "1 in CPU mode")
    p.add_argument("--epochs", type=int, default=20, help="epochs per trial (default 20)")
    p.add_argument("--batch-size", type=int, default=64, help="default 64")
    p.add_argument("--image-size", type=int, default=64, help="default 64")
    p.add_argument("--n", type=int, default=1000,
                   help="synthetic training images per class (default 1000)")
    p.add_argument("--cpu", action="store_true", help="CPU mode even if a GPU is visible")
    p.add_argument("--storage-path", help="where the experiment goes (default: a temp dir)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    return p.parse_args(argv)


def read_results(trial_dir: Path) -> list[dict[str, Any]]:
    """The rows of a trial's result.json (one JSON object per line); bad lines are skipped."""
    from study.core.names import RESULT_FILE

    rows = []
    path = trial_dir / RESULT_FILE
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def last_result_times(exp_dir: Path) -> dict[str, float]:
    """trial_id -> Tune's `last_result_time` (driver wall clock) from the experiment state."""
    from study.core.names import STATE_GLOB

    states = sorted(exp_dir.glob(STATE_GLOB))
    if not states:
        return {}
    out = {}
    for entry in json.loads(states[-1].read_text()).get("trial_data", []):
        if not isinstance(entry, list) or len(entry) < 2:
            continue
        trial = json.loads(entry[0]) if isinstance(entry[0], str) else entry[0]
        meta = json.loads(entry[1]) if isinstance(entry[1], str) else entry[1]
        if isinstance(trial, dict) and isinstance(meta, dict) and meta.get("last_result_time"):
            out[trial["trial_id"]] = float(meta["last_result_time"])
    return out


def trial_numbers(rows: list[dict[str, Any]], end_time: float | None) -> dict[str, Any]:
    """Device, epochs, training seconds and running interval of one trial."""
    last = rows[-1]
    iters = [float(r.get("time_this_iter_s", 0.0)) for r in rows]
    steady = statistics.median(iters[1:]) if len(iters) > 1 else iters[0]
    train_s = sum(iters[1:]) + min(iters[0], steady)
    total = float(last.get("time_total_s", sum(iters)))
    # Without Tune's float clock, fall back to result.json's whole-second timestamp.
    end = end_time if end_time is not None else float(last.get("timestamp", math.nan))
    return {
        "trial_id": last.get("trial_id"),
        "device": last.get("device", "?"),
        "node_id": last.get("node_id"),
        "epochs": int(last.get("epoch", len(rows))),
        "train_s": train_s,
        "setup_s": max(0.0, iters[0] - steady),
        "trainable_s": sum(iters),
        "start": end - total,
        "end": end,
    }


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals [start, end) that contain one moment."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals],
                    key=lambda ev: (ev[0], ev[1]))  # an end before a start at the same time
    best = running = 0
    for _, step in events:
        running += step
        best = max(best, running)
    return best


def collect(exp_dir: Path) -> list[dict[str, Any]]:
    """Per-trial numbers for every trial folder of the experiment that reported a result."""
    ends = last_result_times(exp_dir)
    trials = []
    for trial_dir in sorted(p for p in exp_dir.iterdir() if p.is_dir()):
        rows = read_results(trial_dir)
        if rows:
            trials.append(trial_numbers(rows, ends.get(str(rows[-1].get("trial_id")))))
    return trials


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from study.engine.options import RunOptions
    from study.engine.run import run_study
    from study.errors import StudyError

    gpu = torch.cuda.is_available() and not args.cpu
    gpus_per_trial = args.gpus_per_trial if gpu else 0.0
    cpus_per_trial = args.cpus_per_trial or (0.5 if gpu else 1.0)
    if gpu:
        mode = f"GPU mode: {torch.cuda.device_count()} visible ({torch.cuda.get_device_name(0)})"
    else:
        why = "--cpu given" if args.cpu else "no CUDA GPU visible to torch"
        mode = f"CPU mode ({why}): gpus_per_trial 0 instead of {args.gpus_per_trial:g}"
    print(mode, flush=True)

    storage = Path(args.storage_path or tempfile.mkdtemp(prefix="gpu-check-"))
    storage.mkdir(parents=True, exist_ok=True)
    space = storage / "gpu_check_space.yaml"
    space.write_text(SPACE.format(batch_size=args.batch_size, image_size=args.image_size,
                                  epochs=args.epochs))
    name = time.strftime("gpu-check-%Y%m%d-%H%M%S")
    opts = RunOptions(
        space=str(space), data=f"synthetic:size={args.image_size},n={args.n}",
        search="random", scheduler="fifo", num_samples=args.trials,
        cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
        storage_path=str(storage), name=name, checkpoint_every=0, verbose=0,
    )
    start = time.monotonic()
    try:
        run = run_study(opts)
    except StudyError as exc:
        print(f"gpu_check: error: {exc}", file=sys.stderr)
        return 2
    wall_s = time.monotonic() - start

    trials = collect(run.path)
    intervals = [(t["start"], t["end"]) for t in trials if math.isfinite(t["end"])]
    print(f"\n{'trial':>12} {'device':>6} {'epochs':>6} {'train s':>8} {'setup s':>8} "
          f"{'node':>8}")
    for t in trials:
        print(f"{t['trial_id']:>12} {t['device']:>6} {t['epochs']:>6} {t['train_s']:>8.2f} "
              f"{t['setup_s']:>8.2f} {str(t['node_id'])[:8]:>8}")
    summary = {
        "mode": "gpu" if gpu else "cpu",
        "mode_note": mode,
        "gpus_per_trial": gpus_per_trial,
        "cpus_per_trial": cpus_per_trial,
        "trials": len(trials),
        "trials_expected": args.trials,
        "errored": run.num_errors,
        "on_cuda": sum(t["device"] == "cuda" for t in trials),
        "max_concurrent": max_overlap(intervals),
        "wall_s": wall_s,
        "trials_window_s": (max(e for _, e in intervals) - min(s for s, _ in intervals)
                            if intervals else math.nan),
        "sum_train_s": sum(t["train_s"] for t in trials),
        "sum_setup_s": sum(t["setup_s"] for t in trials),
        "sum_trainable_s": sum(t["trainable_s"] for t in trials),
        "epochs": args.epochs,
        "image_size": args.image_size,
        "experiment": str(run.path),
    }
    print(f"\n{summary['trials']}/{args.trials} trials ({run.num_errors} errored), "
          f"{summary['on_cuda']} on CUDA; at most {summary['max_concurrent']} running at once")
    print(f"wall time {wall_s:.1f} s (from the first trial's start to the last one's end "
          f"{summary['trials_window_s']:.1f} s); sum of training seconds "
          f"{summary['sum_train_s']:.1f} s (+ {summary['sum_setup_s']:.1f} s of trial setup)")
    if gpu and summary["on_cuda"] < summary["trials"]:
        print("WARNING: some trials did not train on CUDA", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "trials": trials}, indent=2))
        print(f"JSON: {args.json}")
    return 0 if summary["trials"] == args.trials and run.num_errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
