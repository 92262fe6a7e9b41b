"""Shared test helpers: writers for the homework `.npy` layout and MedMNIST-style `.npz` files."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

HOMEWORK_FILES = {
    "train/normal.npy": 0,
    "train/pneumonia.npy": 1,
    "test/test_normal.npy": 0,
    "test/test_pneumonia.npy": 1,
}


def _images(rng: np.random.Generator, n: int, size: int, label: int) -> np.ndarray:
    """uint8 images whose mean brightness depends on the label, so a model can learn them."""
    base = 90 if label == 0 else 150
    return rng.integers(base - 40, base + 40, size=(n, size, size), dtype=np.uint8)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """One local Ray for a test module, started as a study starts its own; studies run in the
    module use it and leave it running."""
    from study.core.ray_compat import shutdown_ray
    from study.engine.options import RunOptions
    from study.engine.ray_session import init_ray

    init_ray(RunOptions(num_cpus=2))
    try:
        yield
    finally:
        shutdown_ray()


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Run torch on one intra-op thread for a module, then restore the previous count.

    Torch's threads spin-wait: on a busy 2-core machine (parallel test runs, Ray workers) two
    threads made the training tests 20-40x slower; one costs little when the machine is idle.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def write_homework_dir() -> Callable[..., Path]:
    """Return a writer of the homework's four `.npy` files (nested train/ test/, or flat)."""

    def write(root: Path, size: int = 8, n: int = 10, nested: bool = True,
              seed: int = 0) -> Path:
        rng = np.random.default_rng(seed)
        root.mkdir(parents=True, exist_ok=True)
        for rel, label in HOMEWORK_FILES.items():
            path = root / rel if nested else root / Path(rel).name
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, _images(rng, n, size, label))
        return root

    return write


@pytest.fixture
def write_npz() -> Callable[..., Path]:
    """Return a writer of a MedMNIST-style `.npz` (labels (N, 1) uint8 like MedMNIST's)."""

    def write(path: Path, size: int = 8, n: int = 20, val: bool = True,
              label_shape: str = "(N,1)", seed: int = 0, **override: np.ndarray) -> Path:
        rng = np.random.default_rng(seed)
        arrays: dict[str, np.ndarray] = {}
        for split in ("train", "val", "test") if val else ("train", "test"):
            labels = np.tile(np.array([0, 1], dtype=np.uint8), n // 2)
            images = np.stack([_images(rng, 1, size, int(y))[0] for y in labels])
            arrays[f"{split}_images"] = images
            arrays[f"{split}_labels"] = labels[:, None] if label_shape == "(N,1)" else labels
        arrays.update(override)
        np.savez(path, **arrays)
        return path

    return write
