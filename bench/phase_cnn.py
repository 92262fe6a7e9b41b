"""Phase `cnn` (cnn_repeats_speedup_cpu, cnn_epoch_vs_plain_cpu): the CNN family's epoch.

28x28 synthetic images (1,600 training, 400 validation), the small CNN of
`search_spaces/cnn.yaml`'s middle (3 blocks of 16 channels, 3x3 kernels, max pooling, batch
norm, CE, Adam), one torch thread as a trial with `--cpus-per-trial 1` runs:
- cnn_repeats_speedup_cpu: seconds per epoch (training, then validation, one host sync) of 3
  seeds trained one after the other / of the same 3 seeds stacked in one model (grouped
  convolutions), `training.loop` on both sides;
- cnn_epoch_vs_plain_cpu: seconds per training epoch of a plain PyTorch loop (float32
  TensorDataset, shuffling DataLoader, /255 per batch, `.item()` per step: bench/homework_loop.py)
  on the same network with the same initial weights, its layers as torch.nn has them
  (nn.Conv2d, NCHW maps) / ours (`train_one_epoch`, one seed). Our convolutions hand on
  channels-last maps, on which PyTorch's CPU pooling and batch norm are much faster: the plain
  loop on our own modules (`plain_same_module`) is in the details, so the loop's share and the
  layout's share can be told apart.
Our sides keep the host memory their steps free, as a trial does (`keep_freed_host_memory`);
the plain loop runs in a process of its own, malloc as PyTorch leaves it, as a user's script.
The sides alternate epoch by epoch after a warm-up, so load changes hit both alike; medians.
Also at batch 128 and 8 (details only), since the step's fixed costs weigh differently there.

    python bench/run.py --only cnn --quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from runner import BENCH, log, now, run_child

CNN = {"model": "cnn", "depth": 3, "width": 16, "kernel_size": 3, "loss": "ce", "lr": 1e-3}
DATA = "synthetic:size=28,n=1000,n_test=200"
SEEDS = 3
PLAINS = ("plain", "plain_same_module")


def _plain_sides(conn: Any, batch_size: int, threads: int) -> None:
    """The plain loop's two sides, in a process of their own (malloc as PyTorch leaves it, as
    in a user's script): build them, then run one epoch of the side named on `conn` each time
    and send back its seconds, until None."""
    import torch
    from torch import nn

    sys.path.insert(0, str(BENCH))
    import homework_loop as hw

    from study.training.config import TrialConfig
    from study.training.data import load_data
    from study.training.device import to_device
    from study.training.loop import new_state
    from study.training.losses import get_loss
    from study.training.model import build_model

    torch.set_num_threads(threads)
    raw = load_data(DATA)
    config = {**CNN, "batch_size": batch_size}
    data = to_device(raw, torch.device("cpu"))
    seed0 = new_state(TrialConfig(seed=0, **config), data)
    # The same network with seed 0's initial weights and standardisation, fed by a
    # DataLoader, PyTorch's default Adam; as torch.nn builds it (nn.Conv2d: NCHW maps, the
    # plain user's) and as ours builds it (channels-last maps), one optimizer each.
    torch.manual_seed(0)
    ours_model = build_model(TrialConfig(**config), data.image_size)
    ours_model.load_state_dict({k: v[0] for k, v in seed0.model.state_dict().items()})
    torch_model = nn.Sequential(*[_torch_layer(m) for m in ours_model])
    torch_model.load_state_dict(ours_model.state_dict())
    loader = hw.make_loader(raw.train.images, raw.train.labels, batch_size)
    criterion = get_loss("ce").criterion()
    plains = {name: (model, torch.optim.Adam(model.parameters(), lr=config["lr"]))
              for name, model in (("plain", torch_model), ("plain_same_module", ours_model))}
    while (name := conn.recv()) is not None:
        model, optimizer = plains[name]
        start = now()
        hw.train_epoch(model, loader, criterion, optimizer, torch.device("cpu"), "ce")
        conn.send(now() - start)


def _batch(batch_size: int, reps: int) -> dict[str, Any]:
    import multiprocessing

    import torch

    from study.training.config import TrialConfig
    from study.training.data import load_data
    from study.training.device import keep_freed_host_memory, to_device
    from study.training.loop import evaluate, new_state, train_one_epoch
    from study.training.losses import get_loss

    # Our sides run as a trial does (study/engine/trainable.py): freed host memory kept.
    kept = keep_freed_host_memory()
    raw = load_data(DATA)
    data = to_device(raw, torch.device("cpu"))
    loss = get_loss("ce")
    config = {**CNN, "batch_size": batch_size}
    stacked = new_state(TrialConfig(seed=0, repeats=SEEDS, **config), data)
    separate = [new_state(TrialConfig(seed=s, **config), data) for s in range(SEEDS)]

    def epoch(state: Any, validate: bool = True) -> float:
        start = now()
        train = train_one_epoch(state.model, loss, state.optimizer, data.train, batch_size,
                                state.generators)
        values = [train["loss"]]
        if validate:
            values.append(evaluate(state.model, loss, data.val)["loss"])
        torch.stack(values).tolist()  # the epoch's one sync
        return now() - start

    context = multiprocessing.get_context("spawn")
    conn, child_conn = context.Pipe()
    child = context.Process(target=_plain_sides,
                            args=(child_conn, batch_size, torch.get_num_threads()))
    child.start()

    def plain(name: str) -> float:
        conn.send(name)
        return conn.recv()

    try:
        epoch(stacked), [epoch(s) for s in separate], [plain(n) for n in PLAINS]  # warm-up
        times: dict[str, list[float]] = {"stacked": [], "separate": [], "ours": [],
                                         **{name: [] for name in PLAINS}}
        for _ in range(reps):  # the sides alternate epoch by epoch
            times["stacked"].append(epoch(stacked))
            times["separate"].append(sum(epoch(s) for s in separate))
            for name in PLAINS:
                times[name].append(plain(name))
            times["ours"].append(epoch(separate[0], validate=False))
    finally:
        conn.send(None)
        child.join()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"batch_size": batch_size, "seconds": times, "freed_memory_kept": kept,
            **{f"{k}_s_per_epoch": v for k, v in med.items()},
            "repeats_speedup": med["separate"] / med["stacked"],
            "plain_over_ours": med["plain"] / med["ours"],
            "plain_same_module_over_ours": med["plain_same_module"] / med["ours"]}


def _torch_layer(layer: Any) -> Any:
    """`layer` as torch.nn has it: our channels-last Conv2d as a plain nn.Conv2d."""
    from torch import nn

    from study.training.cnn import Conv2d

    if isinstance(layer, Conv2d):
        return nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                         padding=layer.padding, bias=layer.bias is not None)
    return layer


def phase_cnn(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    if args.threads:  # one thread, as a trial runs; --threads 0 keeps PyTorch's default
        torch.set_num_threads(args.threads)
    reps = 5 if args.quick else 9
    rows = {f"bs{b}": _batch(b, reps) for b in (32, 128, 8)}
    return {"config": CNN, "data": DATA, "seeds": SEEDS, "reps": reps,
            "threads": torch.get_num_threads(), **rows,
            "cnn_repeats_speedup_cpu": rows["bs32"]["repeats_speedup"],
            "cnn_epoch_vs_plain_cpu": rows["bs32"]["plain_over_ours"]}


def measure(args: argparse.Namespace, out_dir: Path, keys: dict[str, Any],
            details: dict[str, Any]) -> None:
    """The parent's side: one child; the table's rows come from its batch-32 figures."""
    log("cnn: 3 separate CNN seeds vs 3 stacked, and a plain DataLoader loop vs ours, 28x28")
    c = run_child("cnn", out_dir, ["--quick"] if args.quick else [])
    details["cnn"] = c
    keys["cnn_repeats_speedup_cpu"] = c["cnn_repeats_speedup_cpu"]
    keys["cnn_epoch_vs_plain_cpu"] = c["cnn_epoch_vs_plain_cpu"]
    print("| batch | 3 separate s/epoch | 3 stacked s/epoch | separate / stacked | plain loop "
          "s/epoch | plain loop, our modules | ours s/epoch | plain / ours | plain, our "
          "modules / ours |", file=sys.stderr)
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |", file=sys.stderr)
    for name in ("bs32", "bs128", "bs8"):
        r = c[name]
        print(f"| {r['batch_size']} | {r['separate_s_per_epoch']:.3f} | "
              f"{r['stacked_s_per_epoch']:.3f} | {r['repeats_speedup']:.2f} | "
              f"{r['plain_s_per_epoch']:.3f} | {r['plain_same_module_s_per_epoch']:.3f} | "
              f"{r['ours_s_per_epoch']:.3f} | {r['plain_over_ours']:.2f} | "
              f"{r['plain_same_module_over_ours']:.2f} |", file=sys.stderr)
