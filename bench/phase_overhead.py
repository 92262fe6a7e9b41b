"""Phases `overhead_ours` and `overhead_naive` (overhead_ratio, naive_overhead_ratio).

Our `run_study` with Ray already started, then the same 16 configurations written the way Ray
Tune's examples write them (data built per trial, a DataLoader loop in the trainable, no actor
reuse); both divided by the ideal, the trials' pure training seconds / the concurrent slots.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from concurrency import concurrency
from runner import BENCH, EPOCHS, SLOTS, TRIALS, log, now, run_child, trial_configs, trial_results

NAIVE_DATA = "synthetic:size=32"


def _naive_trainable(config: dict[str, Any]) -> None:
    """A trial as Ray Tune's examples write one: build the data, a DataLoader and the model
    inside the trial, train, report each epoch. Same model, loss, optimizer and schedule.
    Shipped to the workers by value with this module (see `phase_overhead_naive`), so it uses
    nothing of the other bench modules."""
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
        start = time.perf_counter()
        train_loss, train_acc = hw.train_epoch(model, train, criterion, optimizer, device,
                                               cfg.loss)
        val_loss, val_acc = hw.evaluate_epoch(model, val, criterion, device, cfg.loss)
        tune.report({"train_loss": train_loss, "train_accuracy": train_acc,
                     "val_loss": val_loss, "val_accuracy": val_acc, "epoch": epoch + 1,
                     "epoch_seconds": time.perf_counter() - start})


def _pure_training_seconds(configs: list[dict[str, Any]], spec: str) -> list[float]:
    """Re-train each config with `fit` in this process (1 thread, no Ray): its pure seconds."""
    import torch

    from study.training.config import TrialConfig
    from study.training.data import load_data
    from study.training.device import to_device
    from study.training.loop import fit

    torch.set_num_threads(1)
    data = load_data(spec)
    cache: dict[Any, Any] = {}
    out = []
    for config in configs:
        cfg = TrialConfig.from_dict({k: v for k, v in config.items() if not k.startswith("__")})
        if cfg.image_size not in cache:
            cache[cfg.image_size] = to_device(data, torch.device("cpu"), cfg.image_size)
        start = now()
        fit(cfg, cache[cfg.image_size])
        out.append(now() - start)
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

    start = now()
    init_ray(opts)
    ray_init = now() - start
    start = now()
    run = run_study(opts)  # Ray is up: run_study leaves it running
    study_s = now() - start
    start = now()
    ray.shutdown()
    shutdown = now() - start
    trials = trial_results(run.path)
    configs = trial_configs(run.path)
    # Cross-check (full runs): the same configs re-trained alone, 1 thread, no Ray.
    rerun = _pure_training_seconds(configs, opts.data) if not args.quick else None
    shutil.rmtree(storage, ignore_errors=True)
    return {"ray_init_s": ray_init, "study_s": study_s, "shutdown_s": shutdown,
            "trials": len(trials), "epochs": sum(len(t) for t in trials),
            # Each trial's epochs as timed inside the trial (train + validation, no Ray).
            "in_trial_training_s": [sum(r["epoch_seconds"] for r in t) for t in trials],
            # What Ray saw of each trial: from its start to its last report.
            "ray_trial_s": [t[-1]["time_total_s"] for t in trials],
            "rerun_training_s": rerun, "configs": configs, "errors": run.num_errors,
            "concurrency": concurrency(trials, SLOTS)}


def phase_overhead_naive(args: argparse.Namespace) -> dict[str, Any]:
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    global hw
    sys.path.insert(0, str(BENCH))
    import homework_loop as hw  # shipped to the workers by value, with the trainable

    from study.engine.builders import prepared_space
    from study.engine.options import RunOptions
    from study.search.tune_space import tune_space

    ray.cloudpickle.register_pickle_by_value(hw)
    # The trainable's module too: the workers cannot import bench's modules by name.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    configs = json.loads(Path(args.configs).read_text())
    space = prepared_space(RunOptions(space="default", max_epochs=EPOCHS, image_size=32, seed=0))
    points = [{k: c[k] for k in space.searched} for c in configs]
    storage = Path(tempfile.mkdtemp(prefix="naive-", dir=args.out))
    start = now()
    ray.init(num_cpus=SLOTS)  # as the examples do; a user's defaults otherwise
    ray_init = now() - start
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
    start = now()
    results = tuner.fit()
    study_s = now() - start
    start = now()
    ray.shutdown()
    shutdown = now() - start
    trials = trial_results(storage / "naive")
    seen = sorted(json.dumps({k: c[k] for k in space.searched}, sort_keys=True)
                  for c in trial_configs(storage / "naive"))
    same = seen == sorted(json.dumps(p, sort_keys=True) for p in points)
    shutil.rmtree(storage, ignore_errors=True)
    return {"ray_init_s": ray_init, "study_s": study_s, "shutdown_s": shutdown,
            "trials": len(trials), "epochs": sum(len(t) for t in trials),
            "in_trial_training_s": sum(r["epoch_seconds"] for t in trials for r in t),
            "same_configs": same, "errors": len(results.errors),
            "concurrency": concurrency(trials, SLOTS)}


def measure(args: argparse.Namespace, out_dir: Path, keys: dict[str, Any],
            details: dict[str, Any]) -> None:
    """The parent's side: our study, then the naive one on its configurations."""
    log("overhead: our study (16 x 10 epochs, 32x32, Optuna + FIFO)")
    ours = run_child("overhead_ours", out_dir, ["--quick"] if args.quick else [])
    configs = out_dir / "overhead-configs.json"
    configs.write_text(json.dumps(ours["configs"]))
    log("overhead: the naive study, same 16 configurations")
    naive = run_child("overhead_naive", out_dir, ["--configs", str(configs)])
    ideal = sum(ours["in_trial_training_s"]) / SLOTS
    details["overhead"] = {"ours": ours, "naive": naive, "ideal_s": ideal}
    if ours["rerun_training_s"]:
        details["overhead"]["overhead_ratio_rerun_ideal"] = (
            ours["study_s"] / (sum(ours["rerun_training_s"]) / SLOTS))
    keys["overhead_ratio"] = ours["study_s"] / ideal
    keys["naive_overhead_ratio"] = naive["study_s"] / ideal
