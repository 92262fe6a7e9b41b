"""Seconds per epoch of K seeds stacked in one model vs the same K seeds trained one by one.

Both sides run `training.loop` as a trial does (`train_one_epoch` then `evaluate` on validation,
one host sync), the lab's model (CE, batch 32, 3 x 64, dropout 0.5, BatchNorm, Adam), on
synthetic images at 32x32 (1,600 training, 400 validation), one torch thread like a trial with
`--cpus-per-trial 1`. The two sides alternate epoch by epoch, so machine load hits both alike;
the table shows the median of the repetitions and their ratio (separate / stacked).

    python bench/stacked_epoch.py --json stacked.json
    python bench/stacked_epoch.py --size 64 --repeats 5 --epochs 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from study.training.config import TrialConfig
from study.training.data import load_data
from study.training.device import to_device
from study.training.loop import evaluate, new_state, train_one_epoch
from study.training.losses import get_loss


def _epoch(state, loss, data, batch_size: int) -> float:  # noqa: ANN001 - a TrainState
    start = time.perf_counter()
    train = train_one_epoch(state.model, loss, state.optimizer, data.train, batch_size,
                            state.generators)
    val = evaluate(state.model, loss, data.val)
    torch.stack([train["loss"], val["loss"]]).tolist()  # the epoch's one sync
    return time.perf_counter() - start


def measure(size: int, repeats: int, epochs: int, batch_size: int) -> dict[str, float]:
    """Return median seconds per epoch, stacked and separate, and their ratio."""
    data = to_device(load_data(f"synthetic:size={size},n=1000,n_test=200"), torch.device("cpu"))
    loss = get_loss("ce")
    base = {"batch_size": batch_size, "epochs": epochs}
    stacked = new_state(TrialConfig(seed=0, repeats=repeats, **base), data)
    separate = [new_state(TrialConfig(seed=s, **base), data) for s in range(repeats)]
    _epoch(stacked, loss, data, batch_size)  # warm-up: first-call allocations
    for state in separate:
        _epoch(state, loss, data, batch_size)
    times_stacked, times_separate = [], []
    for _ in range(epochs):
        times_stacked.append(_epoch(stacked, loss, data, batch_size))
        times_separate.append(sum(_epoch(s, loss, data, batch_size) for s in separate))
    s, p = statistics.median(times_stacked), statistics.median(times_separate)
    return {"seconds_stacked": s, "seconds_separate": p, "speedup": p / s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=3, help="seeds K")
    parser.add_argument("--epochs", type=int, default=6, help="timed epochs per side")
    parser.add_argument("--batch-sizes", default="32,128,2", help="comma-separated")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    print(f"{args.repeats} seeds at {args.size}x{args.size}, one torch thread; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {load:.1f} at the start")
    print("| batch | stacked s/epoch | separate s/epoch | separate / stacked |")
    print("| ---: | ---: | ---: | ---: |")
    rows = {}
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        row = measure(args.size, args.repeats, args.epochs, batch_size)
        rows[f"bs{batch_size}"] = row
        print(f"| {batch_size} | {row['seconds_stacked']:.3f} | {row['seconds_separate']:.3f} | "
              f"{row['speedup']:.2f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"size": args.size, "repeats": args.repeats, "load_average_start": load,
             "torch": torch.__version__, "cpu_count": os.cpu_count(), **rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
