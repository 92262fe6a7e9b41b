"""The data on the training device: uint8 splits copied there once, scaled batch by batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from study.errors import StudyError
from study.training.data import Dataset, Split, at_size


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
