"""The training loop: plain functions with explicit arguments, the same with or without Ray.

Data goes to the device once, as uint8; batches are taken by index and scaled to [0, 1] on the
fly (no DataLoader, no per-batch host-to-device copy, no per-step `.item()`); metrics reach the
host once per epoch. As in the homework lab, the weights kept are those of the epoch with the
best validation loss, and test metrics are computed for those weights.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from study.config import TrialConfig
from study.data import Dataset, Split, at_size
from study.errors import StudyError
from study.losses import Loss, get_loss
from study.metrics import classification_metrics
from study.model import build_mlp

log = logging.getLogger(__name__)

EVAL_BATCH = 2048  # evaluation needs no gradients, so large batches are cheap ...
EVAL_PIXELS = 2**22  # ... up to 16 MiB of float32 pixels: at 256x256 a 2048-image batch
#                      would be a 512 MiB temporary in every concurrent trial
# Fused Adam/SGD kernels exist for the CPU from PyTorch 2.4 on.
_FUSED_CPU = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 4)
EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_auroc")
TEST_METRICS = ("test_loss", "test_accuracy", "test_auroc", "test_sensitivity", "test_specificity")


@dataclass(frozen=True)
class DeviceSplit:
    """A split on the training device: flattened uint8 images (N, H*W), int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class DeviceData:
    """The three splits on one device at one image size."""

    train: DeviceSplit
    val: DeviceSplit
    test: DeviceSplit
    image_size: int


def resolve_device(device: str = "auto") -> torch.device:
    """Return the torch device for `auto` (CUDA when visible), `cpu` or `cuda`."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise StudyError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise StudyError(f"--device {device}: no CUDA device is visible")
    return torch.device(device)


def to_device(data: Dataset, device: torch.device, image_size: int | None = None) -> DeviceData:
    """Downsample once (if asked) and copy the uint8 splits to `device`."""
    data = at_size(data, image_size)

    def move(split: Split) -> DeviceSplit:
        images = torch.from_numpy(split.images.reshape(len(split), -1)).to(device)
        return DeviceSplit(images, torch.from_numpy(split.labels).to(device))

    return DeviceData(move(data.train), move(data.val), move(data.test), data.image_size)


def scale(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1]."""
    return images.to(torch.float32).mul_(1.0 / 255.0)


def lr_at(config: TrialConfig, epoch: int) -> float:
    """Learning rate for 0-based `epoch`: constant, or cosine-annealed to 0 over the run.

    Stateless (the same as CosineAnnealingLR stepped per epoch), so a checkpoint needs only the
    epoch, and PBT can change `lr` between epochs.
    """
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / config.epochs))
    return config.lr


def make_optimizer(config: TrialConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Adam or SGD (momentum 0.9), with fused kernels (one kernel per step, not one per
    parameter tensor and operation) on CUDA and on the CPU where PyTorch has them (>= 2.4).

    On the CPU, at 256x256 and batch 32, the fused Adam step takes about a tenth of the epoch,
    the default (foreach) one two fifths (bench/RESULTS.md); the update is the same up to
    float rounding.
    """
    fused = True if _FUSED_CPU or next(model.parameters()).is_cuda else None
    if config.optimizer == "adam":
        return torch.optim.Adam(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=fused
        )
    return torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=0.9, weight_decay=config.weight_decay,
        fused=fused,
    )


def train_one_epoch(
    model: nn.Module,
    loss: Loss,
    optimizer: torch.optim.Optimizer,
    split: DeviceSplit,
    batch_size: int,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """Train one pass over `split` in a seeded random order; return mean loss and accuracy."""
    model.train()
    criterion = loss.criterion()
    n = len(split)
    order = torch.randperm(n, generator=generator).to(split.images.device)
    # BatchNorm cannot normalise a batch of one in training: skip such a trailing batch.
    has_bn = any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    stop = n - 1 if has_bn and n % batch_size == 1 and n > 1 else n
    total = torch.zeros((), device=split.images.device)
    probs, seen = [], []
    for start in range(0, stop, batch_size):
        idx = order[start : min(start + batch_size, stop)]
        labels = split.labels[idx]
        logits = model(scale(split.images[idx]))
        batch_loss = criterion(logits, loss.targets(labels))
        optimizer.zero_grad(set_to_none=True)
        batch_loss.backward()
        optimizer.step()
        total += batch_loss.detach() * len(idx)
        probs.append(loss.positive_probability(logits.detach()))
        seen.append(labels)
    metrics = classification_metrics(torch.cat(probs), torch.cat(seen))
    return {"loss": total / stop, "accuracy": metrics["accuracy"]}


@torch.no_grad()
def evaluate(model: nn.Module, loss: Loss, split: DeviceSplit) -> dict[str, torch.Tensor]:
    """Return loss, accuracy (%), AUROC, sensitivity and specificity on `split` (0-d tensors)."""
    model.eval()
    criterion = loss.criterion(reduction="sum")
    total = torch.zeros((), device=split.images.device)
    probs = []
    rows = max(1, min(EVAL_BATCH, EVAL_PIXELS // max(1, split.images.shape[1])))
    for start in range(0, len(split), rows):
        images = split.images[start : start + rows]
        labels = split.labels[start : start + rows]
        logits = model(scale(images))
        total += criterion(logits, loss.targets(labels))
        probs.append(loss.positive_probability(logits))
    return {"loss": total / len(split), **classification_metrics(torch.cat(probs), split.labels)}


@dataclass
class TrainState:
    """Everything a run needs to continue: weights, optimizer, epoch, best weights, history."""

    config: TrialConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    epoch: int = 0  # epochs completed
    best_val_loss: float = math.inf
    best_model: dict[str, torch.Tensor] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        """Return a checkpoint that `torch.load(weights_only=True)` can read back."""
        return {
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            # Dropout masks come from torch's global generator: keep it, so a resumed run
            # continues exactly as an uninterrupted one would.
            "torch_rng": torch.get_rng_state(),
            "epoch": self.epoch,
            "best_val_loss": self.best_val_loss,
            "best_model": self.best_model,
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint; the current config's lr and weight decay win (PBT)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:
            group["weight_decay"] = self.config.weight_decay
        self.generator.set_state(state["generator"])
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"].cpu())
        self.epoch = int(state["epoch"])
        self.best_val_loss = float(state["best_val_loss"])
        self.best_model = state["best_model"]
        self.history = list(state["history"])


def new_state(config: TrialConfig, data: DeviceData) -> TrainState:
    """Seed, then build the model and optimizer for `config` on the data's device."""
    torch.manual_seed(config.seed)
    loss = get_loss(config.loss)
    device = data.train.images.device
    model = build_mlp(
        data.image_size**2, loss.out_features, config.depth, config.width, config.dropout,
        config.batchnorm,
    ).to(device)
    generator = torch.Generator().manual_seed(config.seed)
    return TrainState(config, model, make_optimizer(config, model), generator)


def evaluate_test(state: TrainState, data: DeviceData) -> dict[str, float]:
    """Evaluate the best-validation-loss weights on the test split."""
    model = copy.deepcopy(state.model)
    if state.best_model:
        model.load_state_dict(state.best_model)
    raw = evaluate(model, get_loss(state.config.loss), data.test)
    values = torch.stack(list(raw.values())).tolist()  # one host sync
    return {f"test_{k}": v for k, v in zip(raw, values, strict=True)}


EpochCallback = Callable[[dict[str, float], TrainState], None]


def fit(
    config: TrialConfig,
    data: DeviceData,
    on_epoch: EpochCallback | None = None,
    state: TrainState | None = None,
) -> TrainState:
    """Train `config` on `data` from `state` (or from scratch) to `config.epochs`.

    After each epoch, `on_epoch(metrics, state)` receives the metrics of DESIGN.md; the last
    epoch's metrics also carry the test metrics of the best weights. A non-finite training loss
    ends the run early with `diverged: 1.0` in that epoch's metrics.
    """
    state = state or new_state(config, data)
    loss = get_loss(config.loss)
    while state.epoch < config.epochs:
        for group in state.optimizer.param_groups:
            group["lr"] = lr_at(config, state.epoch)
        train = train_one_epoch(
            state.model, loss, state.optimizer, data.train, config.batch_size, state.generator
        )
        val = evaluate(state.model, loss, data.val)
        values = torch.stack(
            [train["loss"], train["accuracy"], val["loss"], val["accuracy"], val["auroc"]]
        ).tolist()  # the one host sync of the epoch
        state.epoch += 1
        metrics = dict(zip(EPOCH_METRICS, values, strict=True), epoch=state.epoch)
        diverged = not math.isfinite(metrics["train_loss"])
        if not diverged and metrics["val_loss"] < state.best_val_loss:
            state.best_val_loss = metrics["val_loss"]
            state.best_model = {k: v.detach().clone() for k, v in state.model.state_dict().items()}
        if diverged or state.epoch == config.epochs:
            metrics.update(evaluate_test(state, data))
        if diverged:
            metrics["diverged"] = 1.0
            log.warning("training diverged at epoch %d: train_loss=%s", state.epoch,
                        metrics["train_loss"])
        state.history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics, state)
        if diverged:
            break
    return state
