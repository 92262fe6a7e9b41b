"""Phase `epoch` (epoch_speedup_cpu): one training epoch, the homework's loop vs ours, on the CPU.

256x256, 1,600 images, batch 32, the lab's model and optimizer; interleaved epochs after a
warm-up, medians. `lab_model` (the lab's MLP) is shared with the GPU epoch phase.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from runner import BENCH, data_256, log, now, run_child


def phase_epoch(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    sys.path.insert(0, str(BENCH))
    import homework_loop as hw

    from study.training.config import TrialConfig
    from study.training.data import load_data
    from study.training.device import to_device
    from study.training.loop import new_state, train_one_epoch
    from study.training.losses import get_loss

    # One thread, as a trial runs (--cpus-per-trial 1); --threads 0 keeps PyTorch's default.
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_data(str(data_256(Path(args.out))))
    assert len(data.train) == 1600 and data.image_size == 256, (len(data.train), data.image_size)
    cfg = TrialConfig()  # the lab's: CE, batch 32, 3 x 64, dropout 0.5, BN, Adam 1e-4
    device = torch.device("cpu")
    loss = get_loss(cfg.loss)

    # Ours: uint8 on the device, batches by index, one host sync per epoch.
    dev = to_device(data, device)
    state = new_state(cfg, dev)

    def ours() -> float:
        start = now()
        out = train_one_epoch(state.model, loss, state.optimizer, dev.train, cfg.batch_size,
                              state.generators)
        float(out["loss"])  # the epoch's one sync
        return now() - start

    # The lab's: float32 TensorDataset, DataLoader, /255 per batch, .item() per step.
    model = lab_model(cfg, data.image_size, device)  # the same initial weights
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)  # the lab's: PyTorch defaults
    loader = hw.make_loader(data.train.images, data.train.labels, cfg.batch_size)
    criterion = loss.criterion()

    def homework() -> float:
        start = now()
        hw.train_epoch(model, loader, criterion, optimizer, device, cfg.loss)
        return now() - start

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


def lab_model(cfg: Any, image_size: int, device: Any) -> Any:
    """The lab's plain MLP with the initial weights of `cfg`'s (first) seed."""
    import torch

    from study.training.losses import get_loss
    from study.training.model import build_mlp

    torch.manual_seed(cfg.seed)
    return build_mlp(image_size**2, get_loss(cfg.loss).out_features, cfg.depth, cfg.width,
                     cfg.dropout, cfg.batchnorm).to(device)


def measure(args: argparse.Namespace, out_dir: Path, keys: dict[str, Any],
            details: dict[str, Any]) -> None:
    """The parent's side: the child at one thread (and, in full runs, at PyTorch's default)."""
    log("epoch: the homework's loop vs ours, 256x256, batch 32")
    data_256(out_dir)
    e = run_child("epoch", out_dir, ["--quick"] if args.quick else [])
    details["epoch"] = e
    keys["epoch_speedup_cpu"] = e["epoch_speedup_cpu"]
    if not args.quick:  # also at PyTorch's default threads (all cores)
        e_all = run_child("epoch", out_dir, ["--threads", "0"])
        details["epoch_default_threads"] = e_all
        keys["epoch_speedup_cpu_default_threads"] = e_all["epoch_speedup_cpu"]
