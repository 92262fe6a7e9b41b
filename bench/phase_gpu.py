"""GPU phases (`--gpu`: the GPU keys), each a child process with a time limit.

`gpu_epoch`: the epoch at four batch sizes, the lab's loop vs ours (the training step captured
as a CUDA graph). `gpu_stacked`: 3 seeds stacked vs one, the step captured, for the MLP and the
CNN. `gpu_profile`: where an epoch's time goes (torch.profiler: CUDA API calls counted, the
busiest ops), so that a missed target comes with its profile. `gpu_study`:
`bench/gpu_check.py`'s 16-trial study at 0.125 GPU a trial. `gpu_grid`: the homework grid x 3
seeds (stacked) at 256x256. A phase past its time limit leaves its key null; a phase that fails
leaves its error in the details and the others still run.

`--device cpu` runs the same phases on the CPU (0 GPUs a trial, 32x32 images where the GPU
has 256x256), to check them on a machine without a GPU: their figures go to the details only,
and every GPU key stays null.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from concurrency import concurrency
from gpu_table import GPU_BATCHES
from phase_epoch import lab_model
from runner import (
    BENCH,
    ROOT,
    data_256,
    log,
    now,
    run_child,
    stop_group,
    trial_results,
)

STACKED = 3  # seeds of the stacked side of `gpu_stacked`
CNN = {"model": "cnn", "depth": 3, "width": 16, "kernel_size": 3, "loss": "ce"}
CNN_DATA = "synthetic:size=64,n=1000,n_test=200"
# The phases' images: 256x256 on a GPU; on the CPU, which only checks the phases, 32x32.
IMAGE_SIZE = {"cuda": 256, "cpu": 32}
GPU_SHARE = {"cuda": 0.125, "cpu": 0.0}  # the grid's GPUs a trial
CPU_DATA = f"synthetic:size={IMAGE_SIZE['cpu']},n=1000,n_test=200,seed=0"
PROFILED = ((2, "ours"), (128, "ours"), (2, "lab"))  # gpu_profile: (batch size, loop)
# The CUDA runtime and driver calls gpu_profile counts (kernel names never start so).
API_CALLS = ("cudaLaunch", "cudaGraph", "cudaMemcpy", "cudaMemset", "cudaStream", "cudaEvent",
             "cudaDevice", "cudaMalloc", "cudaFree", "cuLaunch", "cuGraph", "cuMemcpy")


def _data(args: argparse.Namespace, out_dir: Path | None = None) -> str:
    """The phases' data, of IMAGE_SIZE[args.device]: a cached .npz on a GPU, a spec on the CPU."""
    if args.device == "cuda":
        return str(data_256(out_dir or Path(args.out)))
    return CPU_DATA


def _device(args: argparse.Namespace) -> Any:
    import torch

    return torch.device(args.device)


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: Any) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def phase_gpu_epoch(args: argparse.Namespace) -> dict[str, Any]:
    """Seconds per epoch of the lab's loop and of ours (the step captured as a CUDA graph) at
    256x256 on the GPU, for each batch size of the homework; interleaved, medians."""
    from study.training.data import load_data
    from study.training.device import to_device

    device = _device(args)
    data = load_data(_data(args))
    dev = to_device(data, device)
    reps = 3 if args.quick else 5
    out: dict[str, Any] = {"device": _device_name(device), "reps": reps,
                           "train_images": len(data.train), "image_size": data.image_size}
    for batch in GPU_BATCHES:
        out[f"bs{batch}"] = _gpu_epochs(data, dev, batch, reps)
    return out


def _loops(data: Any, dev: Any, batch: int) -> tuple[Any, Any, bool]:
    """The lab's epoch and ours at one batch size, each a function; and whether ours is
    captured."""
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

    return lab, ours, steps is not None


def _timed(fn: Any, device: Any) -> float:
    _sync(device)
    start = now()
    fn()
    _sync(device)
    return now() - start


def _gpu_epochs(data: Any, dev: Any, batch: int, reps: int) -> dict[str, Any]:
    """The lab's loop and ours at one batch size: warm-up, then `reps` interleaved epochs."""
    device = dev.train.images.device
    lab, ours, captured = _loops(data, dev, batch)
    _timed(lab, device), _timed(ours, device)  # warm-up: kernels, allocator, cuBLAS workspaces
    times: dict[str, list[float]] = {"lab": [], "ours": []}
    for _ in range(reps):
        times["lab"].append(_timed(lab, device))
        times["ours"].append(_timed(ours, device))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"seconds": times, "lab_s_per_epoch": med["lab"], "ours_s_per_epoch": med["ours"],
            "captured": captured, "speedup": med["lab"] / med["ours"]}


def phase_gpu_stacked(args: argparse.Namespace) -> dict[str, Any]:
    """Seconds per epoch (training, then validation, one host sync) of 3 seeds stacked in one
    model / of one seed, the step captured on both sides, batch 32: the lab's MLP at 256x256
    and the CNN (3 blocks of 16 channels) at 64x64; interleaved after a warm-up, medians."""
    from study.training.config import TrialConfig
    from study.training.data import load_data
    from study.training.device import to_device

    device = _device(args)
    reps = 3 if args.quick else 5
    mlp_data = to_device(load_data(_data(args)), device)
    out: dict[str, Any] = {"device": _device_name(device), "reps": reps, "seeds": STACKED,
                           "mlp": _stacked_epochs(TrialConfig(batch_size=32), mlp_data, reps)}
    del mlp_data
    cnn_spec = CNN_DATA if device.type == "cuda" else CPU_DATA
    cnn_data = to_device(load_data(cnn_spec), device)
    out["cnn"] = _stacked_epochs(TrialConfig(batch_size=32, **CNN), cnn_data, reps)
    out["cnn"]["data"] = cnn_spec
    return out


def _stacked_epochs(config: Any, data: Any, reps: int) -> dict[str, Any]:
    import torch

    from study.training.loop import epoch_steps, evaluate, new_state, train_one_epoch
    from study.training.losses import get_loss

    device = data.train.images.device
    loss = get_loss(config.loss)
    sides = {}
    for name, repeats in (("single", 1), ("stacked", STACKED)):
        state = new_state(replace(config, repeats=repeats), data)
        sides[name] = (state, epoch_steps(state, loss, data.train, config.batch_size))

    def epoch(name: str) -> Any:
        state, steps = sides[name]

        def run() -> None:
            state.model.train()
            train = train_one_epoch(state.model, loss, state.optimizer, data.train,
                                    config.batch_size, state.generators, steps)
            val = evaluate(state.model, loss, data.val)
            torch.stack([train["loss"], val["loss"]]).tolist()  # the epoch's one sync

        return run

    for name in sides:
        _timed(epoch(name), device)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(reps):
        for name in sides:
            times[name].append(_timed(epoch(name), device))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"seconds": times, "image_size": data.image_size,
            "single_s_per_epoch": med["single"],
            "stacked_s_per_epoch": med["stacked"],
            "captured": {name: steps is not None for name, (_, steps) in sides.items()},
            "ratio": med["stacked"] / med["single"]}


def phase_gpu_profile(args: argparse.Namespace) -> dict[str, Any]:
    """One epoch under torch.profiler, for each of PROFILED at 256x256 (after a warm-up
    epoch): its wall time, the device's busy time, the CUDA API calls counted (kernel and graph
    launches, copies, synchronisations) and the busiest ops, as a table in the out folder."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from study.training.data import load_data
    from study.training.device import to_device

    device = _device(args)
    data = load_data(_data(args))
    dev = to_device(data, device)
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    out: dict[str, Any] = {"device": _device_name(device), "image_size": data.image_size}
    for batch, which in PROFILED:
        lab, ours, captured = _loops(data, dev, batch)
        fn = ours if which == "ours" else lab
        _timed(fn, device)  # warm-up
        with profile(activities=activities) as prof:
            wall = _timed(fn, device)
        events = prof.key_averages()
        calls = {e.key: e.count for e in events if e.key.startswith(API_CALLS)}
        # The device's own entries (kernels, copies, memsets): operators count their
        # kernels' time as well, so summing every entry would count it twice.
        busy_us = sum(e.self_device_time_total for e in events
                      if e.device_type == DeviceType.CUDA)
        name = f"{which}_bs{batch}"
        table = Path(args.out) / f"profile_{name}.txt"
        table.write_text(events.table(sort_by=sort, row_limit=20))
        out[name] = {"wall_s": wall, "device_busy_s": busy_us / 1e6,
                     "device_busy_fraction": busy_us / 1e6 / wall if wall else None,
                     "captured": captured if which == "ours" else None,
                     "steps": -(-len(data.train) // batch), "cuda_api_calls": calls,
                     "table": str(table)}
    return out


def phase_gpu_grid(args: argparse.Namespace) -> dict[str, Any]:
    """`study run --space homework --search grid --repeats 3 --gpus-per-trial 0.125
    --cpus-per-trial 1` on 1000 + 1000 synthetic 256x256 training images, timed as a user
    waits for it (Ray's start and stop included)."""
    from study.engine.options import RunOptions
    from study.engine.run import run_study

    storage = Path(tempfile.mkdtemp(prefix="gpu-grid-", dir=args.out))
    gpus = GPU_SHARE[args.device]
    start = now()
    run = run_study(RunOptions(space="homework", data=_data(args),
                               search="grid", scheduler="fifo", repeats=3, gpus_per_trial=gpus,
                               cpus_per_trial=1, storage_path=str(storage), name="grid",
                               checkpoint_every=0, verbose=0))
    wall = now() - start
    trials = trial_results(run.path)
    shutil.rmtree(storage, ignore_errors=True)
    return {"wall_s": wall, "image_size": IMAGE_SIZE[args.device], "gpus_per_trial": gpus,
            "trials": len(trials), "errors": run.num_errors,
            "devices": sorted({t[-1].get("device", "?") for t in trials}),
            # 0.125 GPU and 1 CPU a trial: 8 at once where there are 8 CPUs
            "concurrency": concurrency(trials, min(8, os.cpu_count() or 1)),
            "epochs": sum(len(t) for t in trials),
            "trainable_s": sum(float(r.get("time_this_iter_s", 0.0)) for t in trials
                               for r in t)}


# Each phase's time limit in seconds: together about 7 minutes at most on one GPU.
LIMITS = {"gpu_epoch": 90, "gpu_stacked": 60, "gpu_profile": 60, "gpu_study": 90,
          "gpu_grid": 110}


def measure(args: argparse.Namespace, only: set[str], out_dir: Path, keys: dict[str, Any],
            details: dict[str, Any]) -> list[str]:
    """The GPU phases, each a child process with its time limit (a phase out of time leaves its
    key null); a phase that fails is logged with its error and the next one runs. Returns the
    phases that failed."""
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        keys["gpu_note"] = "--gpu: no CUDA device visible to PyTorch; GPU keys are null"
        log(keys["gpu_note"])
        return []
    extra = ["--device", args.device] + (["--quick"] if args.quick else [])
    scale = 1 if args.device == "cuda" else 10  # the same work on a CPU takes longer
    size = f"{IMAGE_SIZE[args.device]}x{IMAGE_SIZE[args.device]}"
    found: dict[str, Any] = {}
    failed = []

    def child(phase: str) -> dict[str, Any]:
        try:
            result = run_child(phase, out_dir, extra, timeout=LIMITS[phase] * scale)
        except RuntimeError as exc:  # its log's tail is in the message
            log(str(exc))
            failed.append(phase)
            result = {"error": str(exc)}
        details[phase] = result
        return result

    if "gpu_epoch" in only:
        log(f"gpu_epoch: the lab's loop vs ours (captured step), {size}, batch 2/16/32/128")
        _data(args, out_dir)
        e = child("gpu_epoch")
        for batch in GPU_BATCHES:
            if f"bs{batch}" in e:
                found[f"epoch_speedup_gpu_bs{batch}"] = e[f"bs{batch}"]["speedup"]
    if "gpu_stacked" in only:
        log(f"gpu_stacked: {STACKED} seeds stacked vs one (captured), the MLP and the CNN")
        _data(args, out_dir)
        s = child("gpu_stacked")
        for family, key in (("mlp", "gpu_repeats_epoch_ratio"),
                            ("cnn", "gpu_cnn_repeats_epoch_ratio")):
            if family in s:
                found[key] = s[family]["ratio"]
    if "gpu_profile" in only:
        log("gpu_profile: one epoch under torch.profiler, ours at batch 2 and 128, the lab's at 2")
        _data(args, out_dir)
        child("gpu_profile")
    if "gpu_study" in only:
        log("gpu_study: bench/gpu_check.py, 16 trials x 10 epochs at 0.125 GPU, batch 32")
        g = _gpu_study(args, out_dir, LIMITS["gpu_study"] * scale)
        details["gpu_study"] = g
        if g.get("exit") == 0 and "wall_s" in g:
            found["gpu_study_wall_s"] = g["wall_s"]
        elif not g.get("stopped"):
            failed.append("gpu_study")
    if "gpu_grid" in only:
        log(f"gpu_grid: homework grid x 3 seeds (stacked), {size}, "
            f"{GPU_SHARE[args.device]:g} GPU a trial")
        _data(args, out_dir)
        g = child("gpu_grid")
        if "wall_s" in g:
            found["gpu_grid_wall_s"] = g["wall_s"]
    if args.device == "cuda":
        keys.update(found)
    else:
        keys["gpu_note"] = (f"--device {args.device}: the GPU phases checked on the CPU; "
                            "their figures are in the details, the GPU keys stay null")
        log(keys["gpu_note"])
    return failed


def _gpu_study(args: argparse.Namespace, out_dir: Path, limit: float) -> dict[str, Any]:
    """bench/gpu_check.py in a process group of its own, stopped with the Ray it started when
    its time is up."""
    result = out_dir / "gpu_check.json"
    log_file = out_dir / "gpu_check.log"
    cmd = [sys.executable, str(BENCH / "gpu_check.py"), "--epochs", "10", "--batch-size", "32",
           "--n", "1000", "--cpus-per-trial", "1", "--storage-path",
           str(out_dir / "gpu-check"), "--json", str(result)]
    if args.device != "cuda":
        cmd.append("--cpu")
    start = now()
    stopped = False
    with open(log_file, "w") as log_out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log_out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:  # stop it and the Ray it started
            stop_group(proc)
            rc, stopped = proc.returncode, True
        except BaseException:
            stop_group(proc)
            raise
    g = json.loads(result.read_text())["summary"] if result.exists() else {}
    shutil.rmtree(out_dir / "gpu-check", ignore_errors=True)
    return {**g, "exit": rc, "stopped": stopped, "child_wall_s": now() - start,
            "log": str(log_file)}
