"""Phases `gpu_epoch`, `gpu_study`, `gpu_grid` (`--gpu`: the GPU keys), each with a time limit.

The epoch at four batch sizes, the lab's loop vs ours (the training step captured as a CUDA
graph); `bench/gpu_check.py`'s 16-trial study at 0.125 GPU a trial; the homework grid x 3
seeds (stacked) at 256x256. A phase past its time limit leaves its key null.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from concurrency import concurrency
from phase_epoch import lab_model
from runner import BENCH, GPU_BATCHES, ROOT, data_256, log, now, run_child, trial_results


def phase_gpu_epoch(args: argparse.Namespace) -> dict[str, Any]:
    """Seconds per epoch of the lab's loop and of ours (the step captured as a CUDA graph) at
    256x256 on the GPU, for each batch size of the homework; interleaved, medians."""
    import torch

    from study.training.data import load_data
    from study.training.device import to_device

    device = torch.device("cuda")
    data = load_data(str(data_256(Path(args.out))))
    dev = to_device(data, device)
    reps = 3 if args.quick else 5
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "reps": reps,
                           "train_images": len(data.train), "image_size": data.image_size}
    for batch in GPU_BATCHES:
        out[f"bs{batch}"] = _gpu_epochs(data, dev, batch, reps)
    return out


def _gpu_epochs(data: Any, dev: Any, batch: int, reps: int) -> dict[str, Any]:
    """The lab's loop and ours at one batch size: warm-up, then `reps` interleaved epochs."""
    import torch

    sys.path.insert(0, str(BENCH))
    import homework_loop as hw

    from study.training.config import TrialConfig
    from study.training.loop import epoch_steps, new_state, train_one_epoch
    from study.training.losses import get_loss

    device = dev.train.images.device
    cfg = TrialConfig(batch_size=batch)  # the lab's model, loss and optimizer settings
    loss = get_loss(cfg.loss)
    state = new_state(cfg, dev)
    steps = epoch_steps(state, loss, dev.train, batch)

    def ours() -> None:
        r = train_one_epoch(state.model, loss, state.optimizer, dev.train, batch,
                            state.generators, steps=steps)
        r["loss"].cpu()  # the epoch's one sync

    model = lab_model(cfg, data.image_size, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)  # the lab's: PyTorch defaults
    loader = hw.make_loader(data.train.images, data.train.labels, batch)
    criterion = loss.criterion()

    def lab() -> None:
        hw.train_epoch(model, loader, criterion, optimizer, device, cfg.loss)

    def timed(fn: Any) -> float:
        torch.cuda.synchronize()
        start = now()
        fn()
        torch.cuda.synchronize()
        return now() - start

    timed(lab), timed(ours)  # warm-up: kernels, allocator, cuBLAS workspaces
    times: dict[str, list[float]] = {"lab": [], "ours": []}
    for _ in range(reps):
        times["lab"].append(timed(lab))
        times["ours"].append(timed(ours))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"seconds": times, "lab_s_per_epoch": med["lab"], "ours_s_per_epoch": med["ours"],
            "captured": steps is not None, "speedup": med["lab"] / med["ours"]}


def phase_gpu_grid(args: argparse.Namespace) -> dict[str, Any]:
    """`study run --space homework --search grid --repeats 3 --gpus-per-trial 0.125
    --cpus-per-trial 1` on 1000 + 1000 synthetic 256x256 training images, timed as a user
    waits for it (Ray's start and stop included)."""
    from study.engine.options import RunOptions
    from study.engine.run import run_study

    storage = Path(tempfile.mkdtemp(prefix="gpu-grid-", dir=args.out))
    start = now()
    run = run_study(RunOptions(space="homework", data=str(data_256(Path(args.out))),
                               search="grid", scheduler="fifo", repeats=3, gpus_per_trial=0.125,
                               cpus_per_trial=1, storage_path=str(storage), name="grid",
                               checkpoint_every=0, verbose=0))
    wall = now() - start
    trials = trial_results(run.path)
    shutil.rmtree(storage, ignore_errors=True)
    return {"wall_s": wall, "trials": len(trials), "errors": run.num_errors,
            "devices": sorted({t[-1].get("device", "?") for t in trials}),
            # 0.125 GPU and 1 CPU a trial: 8 at once where there are 8 CPUs
            "concurrency": concurrency(trials, min(8, os.cpu_count() or 1)),
            "epochs": sum(len(t) for t in trials),
            "trainable_s": sum(float(r.get("time_this_iter_s", 0.0)) for t in trials
                               for r in t)}


def measure(args: argparse.Namespace, only: set[str], out_dir: Path, keys: dict[str, Any],
            details: dict[str, Any]) -> None:
    """The GPU phases, each a child process with a time limit so that the whole stays within
    5 minutes on one GPU; a phase that runs out of time leaves its key null."""
    import torch

    if not torch.cuda.is_available():
        keys["gpu_note"] = "--gpu: no CUDA device visible to PyTorch; GPU keys are null"
        log(keys["gpu_note"])
        return
    if "gpu_epoch" in only:
        log("gpu_epoch: the lab's loop vs ours (captured step), 256x256, batch 2/16/32/128")
        data_256(out_dir)
        e = run_child("gpu_epoch", out_dir, ["--quick"] if args.quick else [], timeout=90)
        details["gpu_epoch"] = e
        for batch in GPU_BATCHES:
            if f"bs{batch}" in e:
                keys[f"epoch_speedup_gpu_bs{batch}"] = e[f"bs{batch}"]["speedup"]
    if "gpu_study" in only:
        log("gpu_study: bench/gpu_check.py, 16 trials x 10 epochs at 0.125 GPU, batch 32")
        result = out_dir / "gpu_check.json"
        log_file = out_dir / "gpu_check.log"
        start = now()
        with open(log_file, "w") as log_out:
            proc = subprocess.Popen(
                [sys.executable, str(BENCH / "gpu_check.py"), "--epochs", "10", "--batch-size",
                 "32", "--n", "1000", "--cpus-per-trial", "1", "--storage-path",
                 str(out_dir / "gpu-check"), "--json", str(result)],
                cwd=ROOT, stdout=log_out, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                rc = proc.wait(timeout=90)
            except subprocess.TimeoutExpired:  # stop it and the Ray it started
                os.killpg(proc.pid, signal.SIGTERM)
                rc = proc.wait()
        g = json.loads(result.read_text())["summary"] if result.exists() else {}
        details["gpu_study"] = {**g, "exit": rc, "child_wall_s": now() - start,
                                "log": str(log_file)}
        shutil.rmtree(out_dir / "gpu-check", ignore_errors=True)
        if g and rc == 0:
            keys["gpu_study_wall_s"] = g["wall_s"]
    if "gpu_grid" in only:
        log("gpu_grid: homework grid x 3 seeds (stacked), 256x256, 0.125 GPU a trial")
        data_256(out_dir)
        g = run_child("gpu_grid", out_dir, timeout=110)
        details["gpu_grid"] = g
        if not g.get("stopped"):
            keys["gpu_grid_wall_s"] = g["wall_s"]
