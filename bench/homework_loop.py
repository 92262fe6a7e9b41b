"""A faithful copy of the homework lab's training loop, the baseline `bench/run.py` measures.

The lab kept the images as a float32 `TensorDataset` (4 bytes a pixel, 0..255), fed them through
a shuffling `DataLoader`, divided each batch by 255, and pulled the loss and the number of
correct predictions to the host with `.item()` after every step. Kept here only as the yardstick
for `epoch_speedup_cpu`/`_gpu_*` and as the loop of the "naive" Ray Tune trainable; the project
trains with `study.training.loop.train_one_epoch`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def make_loader(images: np.ndarray, labels: np.ndarray, batch_size: int,
                shuffle: bool = True, seed: int = 0) -> DataLoader:
    """The lab's loader: float32 images (N, H*W) in [0, 255], int64 labels, shuffled."""
    x = torch.tensor(images.reshape(len(images), -1), dtype=torch.float32)
    y = torch.tensor(labels, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle,
                      generator=generator)


def _targets(labels: torch.Tensor, loss_name: str) -> torch.Tensor:
    return labels.float().unsqueeze(1) if loss_name == "bce" else labels


def _correct(outputs: torch.Tensor, labels: torch.Tensor, loss_name: str) -> int:
    if loss_name == "bce":
        pred = (torch.sigmoid(outputs[:, 0]) > 0.5).long()
    else:
        pred = outputs.argmax(dim=1)
    return (pred == labels).sum().item()  # a host sync per step, as in the lab


def train_epoch(model: nn.Module, loader: DataLoader, criterion: nn.Module,
                optimizer: torch.optim.Optimizer, device: torch.device,
                loss_name: str = "ce") -> tuple[float, float]:
    """One epoch as the lab wrote it; return (mean loss, accuracy %)."""
    model.train()
    running_loss, correct, total = 0.0, 0, 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        images = images / 255.0
        optimizer.zero_grad()
        outputs = model(images)
        loss = criterion(outputs, _targets(labels, loss_name))
        loss.backward()
        optimizer.step()
        running_loss += loss.item() * len(labels)
        correct += _correct(outputs, labels, loss_name)
        total += len(labels)
    return running_loss / total, 100.0 * correct / total


def evaluate_epoch(model: nn.Module, loader: DataLoader, criterion: nn.Module,
                   device: torch.device, loss_name: str = "ce") -> tuple[float, float]:
    """The lab's validation pass; return (mean loss, accuracy %)."""
    model.eval()
    running_loss, correct, total = 0.0, 0, 0
    with torch.no_grad():
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            images = images / 255.0
            outputs = model(images)
            running_loss += criterion(outputs, _targets(labels, loss_name)).item() * len(labels)
            correct += _correct(outputs, labels, loss_name)
            total += len(labels)
    return running_loss / total, 100.0 * correct / total
