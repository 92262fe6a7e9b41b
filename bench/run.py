"""Benchmarks: does a study's time go to training, on the CPU and on a GPU?

Runs every measurement side by side in one process tree (each Ray study in its own child
process), prints a Markdown table and, with `--json FILE`, writes the keys below. Everything is
also written to `bench/results/<date-time>/` (git-ignored) and `bench/results/latest.json`.

    python bench/run.py --quick --json out.json      # the CPU keys, < 15 minutes on 2 cores
    python bench/run.py                              # more seeds and repetitions
    python bench/run.py --only epoch,memory          # a subset
    python bench/run.py --gpu --json gpu.json        # the GPU keys only, < 5 minutes, one GPU

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
- report_seconds: `python -m study report` on the 48-trial experiment of the repeats phase, a
  fresh process writing a fresh --out folder, start to exit, median of 3 (5); its CPU seconds
  (with its figure workers) as report_cpu_seconds.
GPU keys (`--gpu`, one GPU; each phase has a time limit and leaves its key null past it):
- epoch_speedup_gpu_bs2, _bs16, _bs32, _bs128: seconds per epoch of the lab's loop / ours (the
  training step captured as a CUDA graph, `training.cuda_graph`) at 256x256, 1,600 images, the
  lab's model; interleaved epochs after a warm-up, medians.
- gpu_study_wall_s: `bench/gpu_check.py --epochs 10 --batch-size 32 --n 1000
  --cpus-per-trial 1` (16 trials at 0.125 GPU, 64x64): its run_study wall time.
- gpu_grid_wall_s: the homework grid x 3 seeds (stacked) at 256x256 on 1000 + 1000 synthetic
  training images, 0.125 GPU and 1 CPU a trial: run_study's wall time, Ray's start included.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
PHASES = ("epoch", "overhead", "optuna", "fraction", "memory", "repeats", "report")
GPU_PHASES = ("gpu_epoch", "gpu_study", "gpu_grid")  # `--gpu`: these only
GPU_BATCHES = (2, 16, 32, 128)
TARGETS = {  # key: (comparison, target); the CPU keys on a 2-core CPU machine, the GPU keys
    "overhead_ratio": ("<=", 2.0),  # on one GPU
    "optuna_wall_ratio": ("<=", 1.0),
    "epoch_speedup_cpu": (">=", 1.0),
    "asha_tpe_epoch_fraction": ("<=", 0.30),
    "repeats_speedup_cpu": (">=", 1.5),
    "report_seconds": ("<=", 5.0),
    "epoch_speedup_gpu_bs2": (">=", 8.0),
    "epoch_speedup_gpu_bs16": (">=", 8.0),
    "epoch_speedup_gpu_bs32": (">=", 8.0),
    "epoch_speedup_gpu_bs128": (">=", 30.0),
    "gpu_study_wall_s": ("<=", 15.0),
    "gpu_grid_wall_s": ("<=", 45.0),
}
GPU_KEYS = tuple(k for k in TARGETS if "gpu" in k)
TRIALS, EPOCHS = 16, 10  # overhead and optuna workloads (fixed, so runs compare)
SLOTS = 2  # concurrent trials of the Ray studies: 2 CPUs, 1 CPU per trial


# --- helpers ------------------------------------------------------------------------------


def _now() -> float:
    return time.perf_counter()


def _log(msg: str) -> None:
    print(f"[bench {datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def _read_results(exp_dir: Path) -> list[list[dict[str, Any]]]:
    """Per trial (sorted by trial index = creation order), its reported results."""
    trials = []
    for path in sorted(exp_dir.glob("*/result.json"),
                       key=lambda p: p.parent.name.split("_")[1]):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            trials.append(rows)
    return trials


def _trial_configs(exp_dir: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(exp_dir.glob("*/params.json"), key=lambda p: p.parent.name.split("_")[1]):
        out.append(json.loads(path.read_text()))
    return out


def _machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib":
            round(mem_kib / 2**20, 1), "python": platform.python_version(),
            "os": platform.platform(), "loadavg": list(os.getloadavg())}


def _versions() -> dict[str, str]:
    import optuna
    import ray
    import torch

    return {"torch": torch.__version__, "ray": ray.__version__, "optuna": optuna.__version__}


def _run_child(phase: str, out_dir: Path, extra: list[str] | None = None,
               sample_memory: bool = False, timeout: float = 1800) -> dict[str, Any]:
    """Run `--phase` in a child process; return its JSON, its wall time and (optionally) the
    peak summed PSS/RSS of its whole process tree. Past `timeout` the child's process group
    is stopped and {"stopped": True, "child_wall_s": timeout} returned."""
    tag = "".join(c for c in "-".join(a for a in extra or [] if "/" not in a) if c.isalnum()
                  or c == "-")
    result_file = out_dir / f"{phase}{tag}.json"
    n = 1
    while result_file.exists():  # repetitions of one phase
        n += 1
        result_file = out_dir / f"{phase}{tag}-{n}.json"
    log_file = result_file.with_suffix(".log")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", phase,
           "--out", str(out_dir), "--phase-out", str(result_file), *(extra or [])]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    start = _now()
    with open(log_file, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        sampler = _TreeMemory(proc.pid) if sample_memory else None
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            return {"stopped": True, "child_wall_s": _now() - start}
        finally:
            if sampler:
                sampler.stop()
    wall = _now() - start
    if rc != 0:
        tail = "".join(log_file.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"phase {phase} {extra or ''} failed (exit {rc}); log {log_file}:\n"
                           f"{tail}")
    out = json.loads(result_file.read_text())
    out["child_wall_s"] = wall
    if sampler:
        out.update(sampler.peaks())
    return out


def _descendants(root: int) -> list[int]:
    """`root` and every process below it (Ray's gcs, raylet, agents and workers included)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _pss_rss_kib(pid: int) -> tuple[int, int]:
    """Proportional and resident set size of one process, from /proc/PID/smaps_rollup."""
    pss = rss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
            elif line.startswith("Rss:"):
                rss = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return pss, rss


class _TreeMemory:
    """Samples the summed PSS and RSS of a process and all its descendants (Ray's too)."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self._root = pid
        self._interval = interval
        self._peak_pss = self._peak_rss = 0
        self._peak_procs = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._done.is_set():
            pids = _descendants(self._root)
            sizes = [_pss_rss_kib(pid) for pid in pids]
            pss, rss = sum(s[0] for s in sizes), sum(s[1] for s in sizes)
            if pss > self._peak_pss:
                self._peak_pss, self._peak_procs = pss, sum(1 for s in sizes if s[1])
            self._peak_rss = max(self._peak_rss, rss)
            self._done.wait(self._interval)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def peaks(self) -> dict[str, float]:
        return {"peak_pss_mib": self._peak_pss / 1024, "peak_rss_mib": self._peak_rss / 1024,
                "processes_at_peak": self._peak_procs}


def _data_256(out_dir: Path) -> Path:
    """The 256x256 synthetic data set (2 x 1,000 train, 2 x 200 test) as a MedMNIST-style
    .npz, generated once and cached in bench/results/data/."""
    import numpy as np

    path = RESULTS / "data" / "synthetic256.npz"
    if path.exists():
        return path
    from study.training.data import load_data

    data = load_data("synthetic:size=256,n=1000,n_test=200,seed=0")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, train_images=data.train.images, train_labels=data.train.labels,
             val_images=data.val.images, val_labels=data.val.labels,
             test_images=data.test.images, test_labels=data.test.labels)
    tmp.replace(path)
    return path


def _write_space(path: Path, base: str, params: dict[str, Any] | None = None,
                 **fixed: Any) -> Path:
    """Copy a shipped search space with extra fixed values (e.g. a fixed training seed) or
    extra searched parameters (e.g. the seed as a grid axis)."""
    import yaml

    raw = yaml.safe_load((ROOT / "search_spaces" / f"{base}.yaml").read_text())
    raw.setdefault("fixed", {}).update(fixed)
    for name in fixed:
        raw.get("params", {}).pop(name, None)
    raw.setdefault("params", {}).update(params or {})
    for name in params or {}:
        raw["fixed"].pop(name, None)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# --- epoch: the homework's loop vs ours ---------------------------------------------------


def phase_epoch(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    sys.path.insert(0, str(BENCH))
    import homework_loop as hw

    from study.training.config import TrialConfig
    from study.training.data import load_data
    from study.training.loop import new_state, to_device, train_one_epoch
    from study.training.losses import get_loss

    # One thread, as a trial runs (--cpus-per-trial 1); --threads 0 keeps PyTorch's default.
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_data(str(_data_256(Path(args.out))))
    assert len(data.train) == 1600 and data.image_size == 256, (len(data.train), data.image_size)
    cfg = TrialConfig()  # the lab's: CE, batch 32, 3 x 64, dropout 0.5, BN, Adam 1e-4
    device = torch.device("cpu")
    loss = get_loss(cfg.loss)

    # Ours: uint8 on the device, batches by index, one host sync per epoch.
    dev = to_device(data, device)
    state = new_state(cfg, dev)

    def ours() -> float:
        start = _now()
        out = train_one_epoch(state.model, loss, state.optimizer, dev.train, cfg.batch_size,
                              state.generators)
        float(out["loss"])  # the epoch's one sync
        return _now() - start

    # The lab's: float32 TensorDataset, DataLoader, /255 per batch, .item() per step.
    model = _lab_model(cfg, data.image_size, device)  # the same initial weights
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)  # the lab's: PyTorch defaults
    loader = hw.make_loader(data.train.images, data.train.labels, cfg.batch_size)
    criterion = loss.criterion()

    def homework() -> float:
        start = _now()
        hw.train_epoch(model, loader, criterion, optimizer, device, cfg.loss)
        return _now() - start

    homework(), ours()  # warm-up: allocator, kernels, page faults
    reps = 3 if args.quick else 6
    times: dict[str, list[float]] = {"homework": [], "ours": []}
    for _ in range(reps):  # interleaved, so load changes hit both alike
        times["homework"].append(homework())
        times["ours"].append(ours())
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"threads": torch.get_num_threads(), "reps": reps, "seconds": times,
            "homework_s_per_epoch": med["homework"], "ours_s_per_epoch": med["ours"],
            "epoch_speedup_cpu": med["homework"] / med["ours"],
            "cuda": torch.cuda.is_available()}


def _lab_model(cfg: Any, image_size: int, device: Any) -> Any:
    """The lab's plain MLP with the initial weights of `cfg`'s (first) seed."""
    import torch

    from study.training.losses import get_loss
    from study.training.model import build_mlp

    torch.manual_seed(cfg.seed)
    return build_mlp(image_size**2, get_loss(cfg.loss).out_features, cfg.depth, cfg.width,
                     cfg.dropout, cfg.batchnorm).to(device)


# --- overhead: our study vs the naive one, against the ideal ------------------------------


def _naive_trainable(config: dict[str, Any]) -> None:
    """A trial as Ray Tune's examples write one: build the data, a DataLoader and the model
    inside the trial, train, report each epoch. Same model, loss, optimizer and schedule."""
    import torch
    from ray import tune

    from study.training.config import TrialConfig
    from study.training.data import at_size, load_data
    from study.training.loop import lr_at, make_optimizer
    from study.training.losses import get_loss
    from study.training.model import build_mlp

    cfg = TrialConfig.from_dict(config)
    data = at_size(load_data(NAIVE_DATA), cfg.image_size)  # data built per trial
    torch.manual_seed(cfg.seed)
    loss = get_loss(cfg.loss)
    model = build_mlp(data.image_size**2, loss.out_features, cfg.depth, cfg.width, cfg.dropout,
                      cfg.batchnorm)
    optimizer = make_optimizer(cfg, model)
    criterion = loss.criterion()
    device = torch.device("cpu")
    train = hw.make_loader(data.train.images, data.train.labels, cfg.batch_size, seed=cfg.seed)
    val = hw.make_loader(data.val.images, data.val.labels, cfg.batch_size, shuffle=False)
    for epoch in range(cfg.epochs):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg, epoch)
        start = _now()
        train_loss, train_acc = hw.train_epoch(model, train, criterion, optimizer, device,
                                               cfg.loss)
        val_loss, val_acc = hw.evaluate_epoch(model, val, criterion, device, cfg.loss)
        tune.report({"train_loss": train_loss, "train_accuracy": train_acc,
                     "val_loss": val_loss, "val_accuracy": val_acc, "epoch": epoch + 1,
                     "epoch_seconds": _now() - start})


NAIVE_DATA = "synthetic:size=32"


def _pure_training_seconds(configs: list[dict[str, Any]], spec: str) -> list[float]:
    """Re-train each config with `fit` in this process (1 thread, no Ray): its pure seconds."""
    import torch

    from study.training.config import TrialConfig
    from study.training.data import load_data
    from study.training.loop import fit, to_device

    torch.set_num_threads(1)
    data = load_data(spec)
    cache: dict[Any, Any] = {}
    out = []
    for config in configs:
        cfg = TrialConfig.from_dict({k: v for k, v in config.items() if not k.startswith("__")})
        if cfg.image_size not in cache:
            cache[cfg.image_size] = to_device(data, torch.device("cpu"), cfg.image_size)
        start = _now()
        fit(cfg, cache[cfg.image_size])
        out.append(_now() - start)
    return out


def phase_overhead_ours(args: argparse.Namespace) -> dict[str, Any]:
    from study.engine.options import RunOptions
    from study.engine.ray_session import init_ray
    from study.engine.run import run_study

    storage = Path(tempfile.mkdtemp(prefix="overhead-", dir=args.out))
    opts = RunOptions(space="default", data="synthetic:size=32", search="optuna",
                      scheduler="fifo", num_samples=TRIALS, max_epochs=EPOCHS, image_size=32,
                      storage_path=str(storage), name="ours", seed=0, num_cpus=SLOTS)
    import ray

    start = _now()
    init_ray(opts)
    ray_init = _now() - start
    start = _now()
    run = run_study(opts)  # Ray is up: run_study leaves it running
    study_s = _now() - start
    start = _now()
    ray.shutdown()
    shutdown = _now() - start
    trials = _read_results(run.path)
    configs = _trial_configs(run.path)
    # Cross-check (full runs): the same configs re-trained alone, 1 thread, no Ray.
    rerun = _pure_training_seconds(configs, opts.data) if not args.quick else None
    shutil.rmtree(storage, ignore_errors=True)
    return {"ray_init_s": ray_init, "study_s": study_s, "shutdown_s": shutdown,
            "trials": len(trials), "epochs": sum(len(t) for t in trials),
            # Each trial's epochs as timed inside the trial (train + validation, no Ray).
            "in_trial_training_s": [sum(r["epoch_seconds"] for r in t) for t in trials],
            # What Ray saw of each trial: from its start to its last report.
            "ray_trial_s": [t[-1]["time_total_s"] for t in trials],
            "rerun_training_s": rerun, "configs": configs, "errors": run.num_errors}


def phase_overhead_naive(args: argparse.Namespace) -> dict[str, Any]:
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    global hw
    sys.path.insert(0, str(BENCH))
    import homework_loop as hw  # shipped to the workers by value, with the trainable

    from study.engine.builders import prepared_space
    from study.engine.options import RunOptions
    from study.search.space import tune_space

    ray.cloudpickle.register_pickle_by_value(hw)
    configs = json.loads(Path(args.configs).read_text())
    space = prepared_space(RunOptions(space="default", max_epochs=EPOCHS, image_size=32, seed=0))
    points = [{k: c[k] for k in space.searched} for c in configs]
    storage = Path(tempfile.mkdtemp(prefix="naive-", dir=args.out))
    start = _now()
    ray.init(num_cpus=SLOTS)  # as the examples do; a user's defaults otherwise
    ray_init = _now() - start
    tuner = tune.Tuner(
        tune.with_resources(_naive_trainable, {"cpu": 1}),
        param_space=tune_space(space),
        tune_config=tune.TuneConfig(
            metric="val_accuracy", mode="max", num_samples=len(points),
            search_alg=OptunaSearch(points_to_evaluate=points, seed=0),
            reuse_actors=False,
        ),
        run_config=tune.RunConfig(name="naive", storage_path=str(storage)),
    )
    start = _now()
    results = tuner.fit()
    study_s = _now() - start
    start = _now()
    ray.shutdown()
    shutdown = _now() - start
    trials = _read_results(storage / "naive")
    seen = sorted(json.dumps({k: c[k] for k in space.searched}, sort_keys=True)
                  for c in _trial_configs(storage / "naive"))
    same = seen == sorted(json.dumps(p, sort_keys=True) for p in points)
    shutil.rmtree(storage, ignore_errors=True)
    return {"ray_init_s": ray_init, "study_s": study_s, "shutdown_s": shutdown,
            "trials": len(trials), "epochs": sum(len(t) for t in trials),
            "in_trial_training_s": sum(r["epoch_seconds"] for t in trials for r in t),
            "same_configs": same, "errors": len(results.errors)}


# --- optuna: our study run vs plain Optuna in one process ---------------------------------

OPTUNA_DATA = "synthetic:size=64"


def _optuna_opts(storage: str) -> Any:
    from study.engine.options import RunOptions

    return RunOptions(space="default", data=OPTUNA_DATA, search="optuna", scheduler="fifo",
                      num_samples=TRIALS, max_epochs=EPOCHS, image_size=64, storage_path=storage,
                      name="ours", seed=0, num_cpus=SLOTS)


def phase_optuna_ours(args: argparse.Namespace) -> dict[str, Any]:
    from study.engine.run import run_study

    storage = Path(tempfile.mkdtemp(prefix="optuna-ours-", dir=args.out))
    start = _now()
    run = run_study(_optuna_opts(str(storage)))  # ray.init ... ray.shutdown, as `study run`
    wall = _now() - start
    trials = _read_results(run.path)
    shutil.rmtree(storage, ignore_errors=True)
    return {"run_study_s": wall, "trials": len(trials),
            "epochs": sum(len(t) for t in trials), "errors": run.num_errors,
            "best_val_accuracy": max(t[-1]["val_accuracy"] for t in trials)}


def phase_optuna_plain(args: argparse.Namespace) -> dict[str, Any]:
    """The same search with plain Optuna in this one process, as a laptop user would write it."""
    start = _now()
    import optuna
    import torch

    from study.engine.builders import prepared_space
    from study.search.space import optuna_space
    from study.training.config import TrialConfig
    from study.training.data import load_data
    from study.training.loop import fit, to_device

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
        t = _now()
        state = fit(cfg, data)
        trained.append(_now() - t)
        return state.history[-1]["val_accuracy"]

    setup = _now() - start
    study.optimize(objective, n_trials=TRIALS)
    return {"in_process_s": _now() - start, "setup_s": setup, "training_s": sum(trained),
            "threads": torch.get_num_threads(), "best_val_accuracy": study.best_value}


# --- fraction: TPE + ASHA epochs to reach the homework grid's best ------------------------

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
    space = str(_write_space(storage / "homework-seed0.yaml", "homework", seed=0))
    base = dict(space=space, data=spec, max_epochs=epochs, storage_path=str(storage),
                num_cpus=SLOTS, verbose=0)
    init_ray(RunOptions(**base))
    try:
        start = _now()
        grid = run_study(RunOptions(**base, search="grid", scheduler="fifo", name="grid"))
        grid_s = _now() - start
        grid_trials = _read_results(grid.path)
        grid_epochs = sum(len(t) for t in grid_trials)
        best = max(r["val_accuracy"] for t in grid_trials for r in t)
        runs = []
        for seed in range(args.seeds):
            for search, scheduler in FRACTION_METHODS:
                name = f"{search}-{scheduler}-{seed}"
                start = _now()
                run = run_study(RunOptions(**base, search=search, scheduler=scheduler,
                                           num_samples=samples, max_concurrent=1, seed=seed,
                                           name=name))
                wall = _now() - start
                trials = _read_results(run.path)
                count, reached = 0, None
                for t in trials:  # one trial at a time: creation order is training order
                    for r in t:
                        count += 1
                        if reached is None and r["val_accuracy"] >= best - 1.0:
                            reached = count
                runs.append({"search": search, "scheduler": scheduler, "seed": seed,
                             "epochs_total": count, "epochs_to_target": reached,
                             "best": max(r["val_accuracy"] for t in trials for r in t),
                             "wall_s": wall})
    finally:
        ray.shutdown()
    shutil.rmtree(storage, ignore_errors=True)
    return {"data": spec, "epochs": epochs, "samples_per_search": samples,
            "grid_trials": len(grid_trials),
            "grid_epochs": grid_epochs, "grid_best_val_accuracy": best, "grid_s": grid_s,
            "grid_final_val_accuracy": sorted(t[-1]["val_accuracy"] for t in grid_trials),
            "runs": runs}


def _fraction_summary(out: dict[str, Any]) -> dict[str, Any]:
    summary = {}
    for search, scheduler in FRACTION_METHODS:
        runs = [r for r in out["runs"] if (r["search"], r["scheduler"]) == (search, scheduler)]
        # Not reached: counted as every epoch it trained (a lower bound), and flagged.
        fracs = [(r["epochs_to_target"] or r["epochs_total"]) / out["grid_epochs"] for r in runs]
        summary[f"{search}+{scheduler}"] = {
            "fraction_mean": statistics.fmean(fracs), "fractions": fracs,
            "reached": sum(r["epochs_to_target"] is not None for r in runs), "seeds": len(runs)}
    return summary


# --- memory: 4 concurrent trials vs 1 on 256x256 -------------------------------------------


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
    start = _now()
    run = run_study(RunOptions(space=str(space), data=str(_data_256(Path(args.out))),
                               search="grid", scheduler="fifo", storage_path=str(storage),
                               name="memory", num_cpus=k, max_concurrent=k, verbose=0))
    wall = _now() - start
    trials = _read_results(run.path)
    shutil.rmtree(storage, ignore_errors=True)
    return {"trials": len(trials), "errors": run.num_errors, "run_study_s": wall}


# --- repeats: K seeds as K trials vs one stacked trial ------------------------------------

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
    separate_space = _write_space(storage / "homework-seeds.yaml", "homework",
                                  params={"seed": {"choice": seeds}})
    base = dict(data=REPEATS_DATA, search="grid", scheduler="fifo", max_epochs=REPEATS_EPOCHS,
                image_size=32, storage_path=str(storage), num_cpus=SLOTS, verbose=0)
    init_ray(RunOptions(**base))
    try:
        start = _now()
        separate = run_study(RunOptions(**base, space=str(separate_space), name="separate"))
        separate_wall = _now() - start
        start = _now()
        stacked = run_study(RunOptions(**base, space="homework", repeats=len(seeds),
                                       name="stacked"))
        stacked_wall = _now() - start
    finally:
        ray.shutdown()

    def own_seconds(trials: list[list[dict[str, Any]]]) -> float:
        return sum(float(r.get("time_this_iter_s", 0.0)) for t in trials for r in t)

    sep, stk = _read_results(separate.path), _read_results(stacked.path)
    return {"data": REPEATS_DATA, "epochs": REPEATS_EPOCHS, "seeds": seeds,
            "separate_trials": len(sep), "stacked_trials": len(stk),
            "separate_epochs": sum(len(t) for t in sep),
            "stacked_epochs": sum(len(t) for t in stk),
            "separate_s": own_seconds(sep), "stacked_s": own_seconds(stk),
            "separate_wall_s": separate_wall, "stacked_wall_s": stacked_wall,
            "errors": separate.num_errors + stacked.num_errors,
            "storage": str(storage), "separate_experiment": str(separate.path)}


# --- report: `study report` on the 48-trial experiment ------------------------------------


def time_report(experiment: Path, out_dir: Path, reps: int) -> dict[str, Any]:
    """Run `python -m study report EXPERIMENT --out FRESH` `reps` times, each a new process
    writing a new folder (nothing cached), timed from start to exit; its CPU seconds (the
    process and its figure workers) from the kernel's accounting of waited-for children."""
    import resource

    walls, cpus = [], []
    for i in range(reps):
        out = out_dir / f"report-{i}"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = _now()
        done = subprocess.run([sys.executable, "-m", "study", "report", str(experiment),
                               "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                              timeout=600)
        walls.append(_now() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if done.returncode != 0:
            raise RuntimeError(f"study report failed (exit {done.returncode}):\n"
                               f"{done.stderr[-3000:]}")
        figures = sorted(p.name for p in (out / "figures").glob("*.png"))
        shutil.rmtree(out, ignore_errors=True)
    return {"reps": reps, "wall_s": walls, "cpu_s": cpus, "figures": figures,
            "median_wall_s": statistics.median(walls), "median_cpu_s": statistics.median(cpus),
            "loadavg": list(os.getloadavg())}


# --- GPU: the epoch at four batch sizes, a 16-trial study, the homework grid ---------------


def phase_gpu_epoch(args: argparse.Namespace) -> dict[str, Any]:
    """Seconds per epoch of the lab's loop and of ours (the step captured as a CUDA graph) at
    256x256 on the GPU, for each batch size of the homework; interleaved, medians."""
    import torch

    from study.training.data import load_data
    from study.training.loop import to_device

    device = torch.device("cuda")
    data = load_data(str(_data_256(Path(args.out))))
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

    model = _lab_model(cfg, data.image_size, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)  # the lab's: PyTorch defaults
    loader = hw.make_loader(data.train.images, data.train.labels, batch)
    criterion = loss.criterion()

    def lab() -> None:
        hw.train_epoch(model, loader, criterion, optimizer, device, cfg.loss)

    def timed(fn: Any) -> float:
        torch.cuda.synchronize()
        start = _now()
        fn()
        torch.cuda.synchronize()
        return _now() - start

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
    start = _now()
    run = run_study(RunOptions(space="homework", data=str(_data_256(Path(args.out))),
                               search="grid", scheduler="fifo", repeats=3, gpus_per_trial=0.125,
                               cpus_per_trial=1, storage_path=str(storage), name="grid",
                               checkpoint_every=0, verbose=0))
    wall = _now() - start
    trials = _read_results(run.path)
    shutil.rmtree(storage, ignore_errors=True)
    return {"wall_s": wall, "trials": len(trials), "errors": run.num_errors,
            "devices": sorted({t[-1].get("device", "?") for t in trials}),
            "epochs": sum(len(t) for t in trials),
            "trainable_s": sum(float(r.get("time_this_iter_s", 0.0)) for t in trials
                               for r in t)}


# --- orchestration ------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


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
    quick = ["--quick"] if args.quick else []
    seeds = ["--seeds", str(args.seeds or (3 if args.quick else 5))]
    report: dict[str, Any] = {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": _machine(), "versions": _versions(), "quick": args.quick,
        "command": "python bench/run.py " + " ".join(sys.argv[1:]),
    }
    keys: dict[str, Any] = dict.fromkeys(TARGETS)
    keys["memory_ratio_4_trials"] = None
    keys["gpu_note"] = ("GPU keys come from `python bench/run.py --gpu`" if not args.gpu
                        else None)
    details: dict[str, Any] = {}
    started = _now()

    if "epoch" in only:
        _log("epoch: the homework's loop vs ours, 256x256, batch 32")
        _data_256(out_dir)
        e = _run_child("epoch", out_dir, quick)
        details["epoch"] = e
        keys["epoch_speedup_cpu"] = e["epoch_speedup_cpu"]
        if not args.quick:  # also at PyTorch's default threads (all cores)
            e_all = _run_child("epoch", out_dir, ["--threads", "0"])
            details["epoch_default_threads"] = e_all
            keys["epoch_speedup_cpu_default_threads"] = e_all["epoch_speedup_cpu"]

    if "overhead" in only:
        _log("overhead: our study (16 x 10 epochs, 32x32, Optuna + FIFO)")
        ours = _run_child("overhead_ours", out_dir, quick)
        configs = out_dir / "overhead-configs.json"
        configs.write_text(json.dumps(ours["configs"]))
        _log("overhead: the naive study, same 16 configurations")
        naive = _run_child("overhead_naive", out_dir, ["--configs", str(configs)])
        ideal = sum(ours["in_trial_training_s"]) / SLOTS
        details["overhead"] = {"ours": ours, "naive": naive, "ideal_s": ideal}
        if ours["rerun_training_s"]:
            details["overhead"]["overhead_ratio_rerun_ideal"] = (
                ours["study_s"] / (sum(ours["rerun_training_s"]) / SLOTS))
        keys["overhead_ratio"] = ours["study_s"] / ideal
        keys["naive_overhead_ratio"] = naive["study_s"] / ideal

    if "optuna" in only:
        _log("optuna: plain Optuna in one process vs our run_study (16 x 10 epochs, 64x64)")
        reps = 1 if args.quick else 2
        plain, ours = [], []
        for _ in range(reps):
            ours.append(_run_child("optuna_ours", out_dir))
            # Two PyTorch threads on two busy cores can run 10-30x slower than one (each
            # operator waits for a descheduled partner): plain Optuna is stopped at 3x our
            # time, and the ratio is then an upper bound.
            plain.append(_run_child("optuna_plain", out_dir,
                                    timeout=max(120.0, 3 * ours[-1]["child_wall_s"])))
        p = statistics.median(r["child_wall_s"] for r in plain)
        o = statistics.median(r["child_wall_s"] for r in ours)
        details["optuna"] = {"plain": plain, "ours": ours, "plain_wall_s": p, "ours_wall_s": o,
                             "plain_stopped": any(r.get("stopped") for r in plain)}
        keys["optuna_wall_ratio"] = o / p

    if "fraction" in only:
        _log("fraction: homework grid, then TPE/random + ASHA and TPE + FIFO per seed")
        f = _run_child("fraction", out_dir, seeds + quick)
        summary = _fraction_summary(f)
        details["fraction"] = {**f, "summary": summary}
        keys["asha_tpe_epoch_fraction"] = summary["optuna+asha"]["fraction_mean"]
        keys["random_asha_epoch_fraction"] = summary["random+asha"]["fraction_mean"]
        keys["tpe_fifo_epoch_fraction"] = summary["optuna+fifo"]["fraction_mean"]

    if "memory" in only:
        _log("memory: 1 trial, then 4 concurrent trials, 256x256")
        _data_256(out_dir)
        one = _run_child("memory_study", out_dir, ["--trials", "1"], sample_memory=True)
        four = _run_child("memory_study", out_dir, ["--trials", "4"], sample_memory=True)
        details["memory"] = {"1": one, "4": four}
        keys["memory_ratio_4_trials"] = four["peak_pss_mib"] / one["peak_pss_mib"]
        keys["memory_ratio_4_trials_rss"] = four["peak_rss_mib"] / one["peak_rss_mib"]

    if "repeats" in only or "report" in only:
        _log("repeats: homework grid x 3 seeds, 32x32, 3 epochs: 48 trials, then 16 stacked")
        r = _run_child("repeats", out_dir)
        details["repeats"] = r
        keys["repeats_speedup_cpu"] = _ratio(r["separate_s"], r["stacked_s"])
        if "report" in only:
            _log("report: `study report` on the 48-trial experiment")
            t = time_report(Path(r["separate_experiment"]), out_dir, 3 if args.quick else 5)
            t["trials"] = r["separate_trials"]
            details["report"] = t
            keys["report_seconds"] = t["median_wall_s"]
            keys["report_cpu_seconds"] = t["median_cpu_s"]
        shutil.rmtree(r["storage"], ignore_errors=True)

    if args.gpu:
        run_gpu(args, only, out_dir, keys, details)

    report["total_s"] = _now() - started
    report["machine"]["loadavg_end"] = list(os.getloadavg())
    report.update(keys)
    report["details"] = details
    text = markdown(report)
    (out_dir / "results.json").write_text(json.dumps(report, indent=2))
    (out_dir / "results.md").write_text(text)
    shutil.copy(out_dir / "results.json", RESULTS / "latest.json")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    print(text)
    return report


def run_gpu(args: argparse.Namespace, only: set[str], out_dir: Path, keys: dict[str, Any],
            details: dict[str, Any]) -> None:
    """The GPU phases, each a child process with a time limit so that the whole stays within
    5 minutes on one GPU; a phase that runs out of time leaves its key null."""
    import torch

    if not torch.cuda.is_available():
        keys["gpu_note"] = "--gpu: no CUDA device visible to PyTorch; GPU keys are null"
        _log(keys["gpu_note"])
        return
    if "gpu_epoch" in only:
        _log("gpu_epoch: the lab's loop vs ours (captured step), 256x256, batch 2/16/32/128")
        _data_256(out_dir)
        e = _run_child("gpu_epoch", out_dir, ["--quick"] if args.quick else [], timeout=90)
        details["gpu_epoch"] = e
        for batch in GPU_BATCHES:
            if f"bs{batch}" in e:
                keys[f"epoch_speedup_gpu_bs{batch}"] = e[f"bs{batch}"]["speedup"]
    if "gpu_study" in only:
        _log("gpu_study: bench/gpu_check.py, 16 trials x 10 epochs at 0.125 GPU, batch 32")
        result = out_dir / "gpu_check.json"
        log_file = out_dir / "gpu_check.log"
        start = _now()
        with open(log_file, "w") as log:
            proc = subprocess.Popen(
                [sys.executable, str(BENCH / "gpu_check.py"), "--epochs", "10", "--batch-size",
                 "32", "--n", "1000", "--cpus-per-trial", "1", "--storage-path",
                 str(out_dir / "gpu-check"), "--json", str(result)],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                rc = proc.wait(timeout=90)
            except subprocess.TimeoutExpired:  # stop it and the Ray it started
                os.killpg(proc.pid, signal.SIGTERM)
                rc = proc.wait()
        g = json.loads(result.read_text())["summary"] if result.exists() else {}
        details["gpu_study"] = {**g, "exit": rc, "child_wall_s": _now() - start,
                                "log": str(log_file)}
        shutil.rmtree(out_dir / "gpu-check", ignore_errors=True)
        if g and rc == 0:
            keys["gpu_study_wall_s"] = g["wall_s"]
    if "gpu_grid" in only:
        _log("gpu_grid: homework grid x 3 seeds (stacked), 256x256, 0.125 GPU a trial")
        _data_256(out_dir)
        g = _run_child("gpu_grid", out_dir, timeout=110)
        details["gpu_grid"] = g
        if not g.get("stopped"):
            keys["gpu_grid_wall_s"] = g["wall_s"]


def _fmt(value: Any, digits: int = 2) -> str:
    return "null" if value is None else f"{value:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    """The results as a Markdown table, with what each number compares."""
    d = report.get("details", {})

    def met(key: str) -> str:
        value = report.get(key)
        if value is None:
            return "not measured"
        op, target = TARGETS[key]
        ok = value <= target if op == "<=" else value >= target
        return "yes" if ok else "**no**"

    rows = []
    if "overhead" in d:
        o = d["overhead"]
        rows.append(("overhead_ratio", f"study {o['ours']['study_s']:.1f} s / ideal "
                     f"{o['ideal_s']:.1f} s (16 x 10 epochs, 32x32, Optuna + FIFO, 2 slots)"))
        rows.append(("naive_overhead_ratio", f"naive study {o['naive']['study_s']:.1f} s / the "
                     "same ideal (DataLoader in the trial, data per trial, no actor reuse)"))
    if "optuna" in d:
        o = d["optuna"]
        stopped = " (stopped there: the ratio is an upper bound)" if o["plain_stopped"] else ""
        rows.append(("optuna_wall_ratio", f"run_study {o['ours_wall_s']:.1f} s (with Ray start "
                     f"and stop) / plain Optuna {o['plain_wall_s']:.1f} s{stopped} "
                     "(16 x 10 epochs, 64x64)"))
    if "epoch" in d:
        e = d["epoch"]
        rows.append(("epoch_speedup_cpu", f"homework loop {e['homework_s_per_epoch']:.2f} s / "
                     f"ours {e['ours_s_per_epoch']:.2f} s per epoch (256x256, 1,600 images, "
                     f"batch 32, {e['threads']} thread(s))"))
    if "fraction" in d:
        f = d["fraction"]
        s = f["summary"]
        rows.append(("asha_tpe_epoch_fraction",
                     f"TPE + ASHA epochs to within 1 point of the grid's best "
                     f"({f['grid_best_val_accuracy']:.2f} %) / the grid's {f['grid_epochs']} "
                     f"epochs, mean of {s['optuna+asha']['seeds']} seeds "
                     f"(reached {s['optuna+asha']['reached']}/{s['optuna+asha']['seeds']})"))
        rows.append(("random_asha_epoch_fraction",
                     f"random + ASHA, reached {s['random+asha']['reached']}/"
                     f"{s['random+asha']['seeds']}"))
        rows.append(("tpe_fifo_epoch_fraction",
                     f"TPE + FIFO, reached {s['optuna+fifo']['reached']}/"
                     f"{s['optuna+fifo']['seeds']}"))
    if "memory" in d:
        m = d["memory"]
        rows.append(("memory_ratio_4_trials", f"peak PSS {m['4']['peak_pss_mib']:.0f} MiB / "
                     f"{m['1']['peak_pss_mib']:.0f} MiB (summed RSS ratio "
                     f"{report['memory_ratio_4_trials_rss']:.2f}); a figure, not a target"))
    if "repeats" in d:
        r = d["repeats"]
        rows.append(("repeats_speedup_cpu", f"trials' own seconds (Ray's time_this_iter_s "
                     f"summed) of the homework grid x 3 seeds, 32x32, {r['epochs']} epochs: "
                     f"{r['separate_trials']} separate trials {r['separate_s']:.1f} s / "
                     f"{r['stacked_trials']} stacked trials {r['stacked_s']:.1f} s (study wall "
                     f"{r['separate_wall_s']:.1f} s / {r['stacked_wall_s']:.1f} s)"))
    if "report" in d:
        t = d["report"]
        rows.append(("report_seconds", f"`study report` on the {t['trials']}-trial experiment, "
                     f"a fresh process and --out folder, median of {t['reps']} "
                     f"({', '.join(f'{w:.1f}' for w in t['wall_s'])} s; CPU "
                     f"{t['median_cpu_s']:.1f} s with its workers; {len(t['figures'])} figures)"))
    gpu = report.get("gpu_note")
    if "gpu_epoch" in d:
        e = d["gpu_epoch"]
        for batch in GPU_BATCHES:
            b = e.get(f"bs{batch}")
            if b:
                rows.append((f"epoch_speedup_gpu_bs{batch}",
                             f"lab loop {b['lab_s_per_epoch']:.4f} s / ours "
                             f"{b['ours_s_per_epoch']:.4f} s per epoch ({e['image_size']}x"
                             f"{e['image_size']}, {e['train_images']:,} images, batch {batch}, "
                             f"{'captured step' if b['captured'] else 'eager: capture failed'}"
                             f"; {e['device']})"))
    if "gpu_study" in d:
        g = d["gpu_study"]
        if g.get("wall_s") is not None:
            rows.append(("gpu_study_wall_s", f"bench/gpu_check.py: {g.get('trials')} trials x 10 "
                         f"epochs at 0.125 GPU, batch 32, 64x64; trials' window "
                         f"{g.get('trials_window_s', math.nan):.1f} s, summed training "
                         f"{g.get('sum_train_s', math.nan):.1f} s, setup "
                         f"{g.get('sum_setup_s', math.nan):.1f} s"))
    if "gpu_grid" in d:
        g = d["gpu_grid"]
        rows.append(("gpu_grid_wall_s", "homework grid x 3 seeds stacked, 256x256, 0.125 GPU a "
                     "trial, Ray start and stop included"
                     + (f"; {g['trials']} trials on {', '.join(g['devices'])}"
                        if "trials" in g else "; stopped at its time limit")))
    shown = {key for key, _ in rows}
    rows += [(key, gpu or "not measured: its phase failed or ran out of time (details JSON)")
             for key in GPU_KEYS if key not in shown]
    lines = ["| key | value | target | met | what |", "| --- | ---: | --- | --- | --- |"]
    for key, what in rows:
        target = TARGETS.get(key)
        lines.append(f"| `{key}` | {_fmt(report.get(key))} | "
                     f"{f'{target[0]} {target[1]:g}' if target else ''} | "
                     f"{met(key) if target else ''} | {what} |")
    m = report["machine"]
    lines.append("")
    lines.append(f"{report['date']}, {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; "
                 f"torch {report['versions']['torch']}, ray {report['versions']['ray']}, "
                 f"optuna {report['versions']['optuna']}; load average at start "
                 f"{m['loadavg'][0]:.1f}, at end {m['loadavg_end'][0]:.1f}; "
                 f"{report['total_s'] / 60:.1f} min; `{report['command']}`."
                 + (f" {gpu}." if gpu else ""))
    return "\n".join(lines) + "\n"


PHASE_FUNCS = {"epoch": phase_epoch, "overhead_ours": phase_overhead_ours,
               "overhead_naive": phase_overhead_naive, "optuna_ours": phase_optuna_ours,
               "optuna_plain": phase_optuna_plain, "fraction": phase_fraction,
               "memory_study": phase_memory_study, "repeats": phase_repeats,
               "gpu_epoch": phase_gpu_epoch, "gpu_grid": phase_gpu_grid}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repetitions and seeds (< 15 min)")
    p.add_argument("--json", metavar="FILE", help="also write the results to FILE")
    p.add_argument("--gpu", action="store_true",
                   help=f"the GPU keys only ({', '.join(GPU_PHASES)}; < 5 minutes on one GPU)")
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
    run_all(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
