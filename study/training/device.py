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


def pixel_stats(split: DeviceSplit, rows: int = 256) -> tuple[float, float]:
    """The mean and SD of `split`'s pixels on the [0, 1] scale, summed in float64 `rows`
    images at a time (no float copy of the whole split); SD 1 where every pixel is equal."""
    total = torch.zeros((), dtype=torch.float64, device=split.images.device)
    squares = torch.zeros_like(total)
    for start in range(0, len(split), rows):
        chunk = split.images[start : start + rows].to(torch.float64)
        total += chunk.sum()
        squares += chunk.square().sum()
    count = split.images.numel()
    mean, mean_square = (total / count).item(), (squares / count).item()
    std = max(mean_square - mean * mean, 0.0) ** 0.5
    return mean / 255.0, std / 255.0 if std > 0 else 1.0


def class_weights(split: DeviceSplit) -> torch.Tensor:
    """`class_weight: balanced`'s loss weights (2,), n / (2 n_c) from `split`'s class counts
    (sklearn's "balanced"): each class carries half the loss, whatever its share."""
    counts = torch.bincount(split.labels, minlength=2).to(torch.float32)
    if bool((counts == 0).any()):
        raise StudyError(f"class_weight balanced: the training split has no example of class "
                         f"{int((counts == 0).nonzero()[0])} (counts {counts.int().tolist()})")
    return len(split) / (2 * counts)


# glibc's malloc hands each freed block of more than its (adaptive) threshold back to the
# kernel, and trims the heap top past twice that, so a training step that frees and
# reallocates megabytes of maps page-faults every page again (thousands of faults a step for
# a stacked CNN at batch 32). Neither PyTorch nor Python sets malloc's thresholds: libc's
# mallopt does, through ctypes.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
_MMAP_THRESHOLD = 32 << 20  # glibc's largest on 64-bit: bigger blocks are still mapped
_TRIM_THRESHOLD = 256 << 20  # at most this much freed memory stays with the process


def keep_freed_host_memory() -> bool:
    """Let this process reuse the host memory its training steps free, instead of handing it
    back to the kernel and faulting it in again next step; True where the C library took the
    setting (glibc), False elsewhere (macOS, musl: nothing changes). Process-wide and lasting,
    so it is called where a training process starts, not by the training loop."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, TypeError):  # no mallopt; Windows has no CDLL(None)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
                and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
