"""The Ray Tune trainable: a thin wrapper that runs `fit` and reports once per epoch.

Data arrives through `tune.with_parameters` (Ray's object store, once per node, zero-copy).
With actor reuse, one worker process runs many trials; the device copy of the data (on the GPU
where there is one) is kept in `_RESIDENT` so later trials of that actor skip the copy.

PyTorch is imported where a trial runs, not at import: the driver imports this module only to
hand `train_trial` to Ray, and on a small machine importing torch there (a second or two of
CPU) delays the study's start.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from study.core.names import PREDICTIONS_FILE, TRIAL_STATE_FILE
from study.training.config import TrialConfig
from study.training.data import Dataset

if TYPE_CHECKING:
    import torch

    from study.training.device import DeviceData
    from study.training.loop import TrainState


# Per worker process: (data_key, image_size, device) -> device-resident data. A cache, not
# configuration: every trial still receives its data explicitly through `tune.with_parameters`.
_RESIDENT: dict[tuple[str, int | None, str], DeviceData] = {}


def warm_up() -> None:
    """Ray's `worker_process_setup_hook` for a study's workers: import PyTorch and train a tiny
    model for one step on the CPU, so that the first trial of each worker does not pay for them
    (on 2 cores about 1 s of imports, and 0.8 s of modules PyTorch loads on the first optimizer
    step). Runs as each worker process starts, before it takes its first trial; the CPU only,
    so no worker initialises CUDA before Ray has given it a GPU."""
    import torch

    from study.training.device import DeviceData, DeviceSplit
    from study.training.loop import fit

    split = DeviceSplit(torch.zeros(4, 4, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]))
    fit(TrialConfig(epochs=1, batch_size=2, depth=1, width=2), DeviceData(split, split, split, 2),
        cuda_graph=False)


def resident_data(data: Dataset, data_key: str, image_size: int | None,
                  device: torch.device) -> DeviceData:
    """Return the data on `device` at `image_size`, copying it there once per process."""
    from study.training.device import to_device

    key = (data_key, image_size, str(device))
    if key not in _RESIDENT:
        for old in [k for k in _RESIDENT if k[0] != data_key]:
            del _RESIDENT[old]  # another study's data: free it
        _RESIDENT[key] = to_device(data, device, image_size)
    return _RESIDENT[key]


def trial_device(gpu_ids: list[Any]) -> torch.device:
    """Return CUDA only if Ray assigned this trial a GPU (`ray.get_gpu_ids()`) and torch sees one.

    Ray sets CUDA_VISIBLE_DEVICES to the assigned GPU(s), so `cuda` (device 0 of the visible
    ones) is the trial's GPU, shared with the other trials packed onto it. Ray 2.60 leaves
    CUDA_VISIBLE_DEVICES alone for a trial with no GPU, so such a trial on a GPU node would see
    every GPU: it trains on the CPU instead of using a GPU that Ray did not give it.
    """
    import torch

    if gpu_ids and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def trial_config(config: dict[str, Any]) -> TrialConfig:
    """Turn Ray's config dict into a TrialConfig (once, at the trainable's entry).

    The config's `repeats` seeds train together in this one trial. Experiments made with
    Ray's `Repeater` marked repeats with `__trial_index__` (seed + index); still honoured so
    they resume.
    """
    values = {k: v for k, v in config.items() if not k.startswith("__")}
    index = config.get("__trial_index__")
    if index is not None:
        values["seed"] = int(values.get("seed", 0)) + int(index)
    return TrialConfig.from_dict(values, where="trial config")


def load_state(state: TrainState, checkpoint: Any, device: torch.device) -> None:
    """Continue `state` from a Ray checkpoint written by `train_trial`."""
    import torch

    with checkpoint.as_directory() as folder:
        saved = torch.load(Path(folder) / TRIAL_STATE_FILE, map_location=device, weights_only=True)
    state.load_state_dict(saved)


def train_trial(
    config: dict[str, Any],
    data: Dataset,
    data_key: str = "",
    checkpoint_every: int = 5,
    threads: int = 1,
) -> None:
    """Train one trial, its config's seeds stacked in one model; report each epoch (the
    seed-means, `seeds` and `seed_metrics`); checkpoint (every seed) every few epochs and at
    the end. The last report's test metrics and `kept_*` validation metrics are those of each
    seed's kept (best-validation-loss) weights, and the final checkpoint holds those weights'
    per-image test predictions (PREDICTIONS_FILE)."""
    import ray
    import torch
    from ray import tune

    from study.training.checkpoint import save_predictions
    from study.training.device import keep_freed_host_memory
    from study.training.loop import fit, new_state

    torch.set_num_threads(max(1, threads))
    keep_freed_host_memory()
    cfg = trial_config(config)
    device = trial_device(ray.get_gpu_ids())
    device_data = resident_data(data, data_key, cfg.image_size, device)
    state = new_state(cfg, device_data)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        load_state(state, checkpoint, device)
    extra = {
        "seed": cfg.seed,
        "node_id": ray.get_runtime_context().get_node_id(),
        "image_size": device_data.image_size,
        "device": device.type,
    }

    # `epoch_seconds`: the epoch's own training and validation time, without Ray's reporting
    # and checkpointing, so a study's overhead can be read off its results (bench/run.py).
    # `reported_at`: the report's wall-clock time (Ray's `timestamp` has whole seconds), so
    # when each trial ran, and how many ran at once, can be read off them too.
    started = time.perf_counter()

    def report(metrics: dict[str, float], state: TrainState) -> None:
        nonlocal started
        result = {**metrics, **extra, "epoch_seconds": time.perf_counter() - started,
                  "reported_at": time.time()}
        # The trial's own log line: in the worker's log, and on the driver's console with
        # `study run -v` (Ray forwards workers' output only then).
        print(f"epoch {state.epoch}/{cfg.epochs}: train loss {metrics.get('train_loss', 0):.4f}"
              f", val loss {metrics.get('val_loss', 0):.4f}, val accuracy "
              f"{metrics.get('val_accuracy', 0):.2f} ({result['epoch_seconds']:.2f} s)",
              flush=True)
        last = state.epoch >= cfg.epochs or "diverged" in metrics
        if not (last or (checkpoint_every > 0 and state.epoch % checkpoint_every == 0)):
            tune.report(result)
        else:
            with tempfile.TemporaryDirectory() as folder:
                torch.save(state.state_dict(), Path(folder) / TRIAL_STATE_FILE)
                if last and state.test_prob is not None:  # the kept weights' test predictions
                    save_predictions(Path(folder) / PREDICTIONS_FILE, state.test_prob,
                                     device_data.test.labels, cfg.seeds, state.val_prob,
                                     device_data.val.labels)
                tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))
        started = time.perf_counter()

    fit(cfg, device_data, on_epoch=report, state=state)
