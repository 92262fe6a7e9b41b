"""Data specs -> uint8 image arrays with train/validation/test splits.

Three sources: `synthetic[:key=value,...]`, a folder in the homework layout, or a
MedMNIST-style `.npz`. Everything is checked where it enters and loaded without unpickling.
Images stay uint8 in memory; scaling to [0, 1] happens per batch in the training loop.
"""

from __future__ import annotations

import errno
import math
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from study.errors import StudyError
from study.training.synthetic import make_synthetic

VAL_FRACTION = 0.2  # the homework kept 800 of 1,000 per class for training, 200 for validation
SPLIT_SEED = 0  # fixed so every trial of a study sees the same validation set

SYNTHETIC_DEFAULTS = {"size": 64, "n": 1000, "n_test": 200, "seed": 0}

_HOMEWORK_FILES = {
    ("train", 0): "normal.npy",
    ("train", 1): "pneumonia.npy",
    ("test", 0): "test_normal.npy",
    ("test", 1): "test_pneumonia.npy",
}


@dataclass(frozen=True)
class Split:
    """Images (N, H, W) uint8 and labels (N,) int64 in {0, 1}; 1 = pneumonia."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Dataset:
    """The three splits of one data source at one image size."""

    train: Split
    val: Split
    test: Split
    image_size: int  # side length actually used, recorded with every run
    source: str  # the spec it came from, for reports


def _check_images(images: np.ndarray, where: str) -> np.ndarray:
    """Validate one image array and return it as uint8 (N, H, W)."""
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    elif images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3:
        raise StudyError(
            f"{where}: images must have 3 dimensions (N, H, W), got shape {images.shape}"
        )
    if images.shape[1] != images.shape[2]:
        raise StudyError(
            f"{where}: images must be square, got {images.shape[1]}x{images.shape[2]}"
        )
    if len(images) == 0:
        raise StudyError(f"{where}: holds no images")
    if images.shape[1] == 0:
        raise StudyError(f"{where}: images are 0x0 pixels, got shape {images.shape}")
    if images.dtype == np.uint8:
        return images
    if not (np.issubdtype(images.dtype, np.floating) or np.issubdtype(images.dtype, np.integer)):
        raise StudyError(f"{where}: images must be uint8 or float, got dtype {images.dtype}")
    values = images.astype(np.float64, copy=False)
    if not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).sum())
        raise StudyError(f"{where}: images contain {bad} NaN or inf pixels")
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 255:
        raise StudyError(f"{where}: pixel values must lie in [0, 255], got [{low:g}, {high:g}]")
    if np.issubdtype(images.dtype, np.floating) and high <= 1.0:
        # Rounding [0, 1] to uint8 would leave only 0 and 1: refuse rather than guess a scale.
        raise StudyError(
            f"{where}: float pixels all lie in [0, 1] (got [{low:g}, {high:g}]) but images are "
            "read as [0, 255]; multiply them by 255 (or save them as uint8)"
        )
    return np.rint(values).astype(np.uint8)


def _check_labels(labels: np.ndarray, n_images: int, where: str) -> np.ndarray:
    """Validate labels shaped (N,) or (N, 1) and return them as int64 (N,)."""
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise StudyError(f"{where}: labels must be shaped (N,) or (N, 1), got {labels.shape}")
    if len(labels) != n_images:
        raise StudyError(
            f"{where}: {n_images} images but {len(labels)} labels; the lengths must match"
        )
    if np.issubdtype(labels.dtype, np.floating) and not np.isfinite(labels).all():
        raise StudyError(f"{where}: labels contain NaN or inf")
    values = sorted(set(np.unique(labels).tolist()))
    if not set(values) <= {0, 1}:
        raise StudyError(f"{where}: labels must be 0 or 1, found values {values[:10]}")
    return labels.astype(np.int64)


def _check_both_classes(split: Split, where: str) -> None:
    for cls, name in ((0, "normal (0)"), (1, "pneumonia (1)")):
        if not (split.labels == cls).any():
            raise StudyError(f"{where}: class {name} has no examples")


def _check_regular_file(path: Path) -> int:
    """Return the size of `path`; raise StudyError unless it is a regular file.

    Opening a FIFO blocks until someone writes to it, and a device may never end.
    """
    try:
        info = path.stat()
    except OSError as exc:
        raise StudyError(f"{path}: cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise StudyError(f"{path}: not a regular file (a FIFO, device or socket)")
    return info.st_size


def _check_npy_header(handle: BinaryIO, path: Path | str, file_size: int) -> None:
    """Check that the array the header declares fits in the file, before anything is allocated
    (a header can declare petabytes in a few bytes). `path` names the file in messages."""
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
    except ValueError as exc:
        raise StudyError(f"{path}: not a readable .npy array ({exc})") from None
    except (OSError, zipfile.BadZipFile) as exc:
        raise StudyError(f"{path}: cannot be read ({exc})") from None
    if dtype.hasobject:
        raise StudyError(f"{path} holds pickled objects, which are never loaded")
    needed = math.prod(shape) * dtype.itemsize
    available = file_size - handle.tell()
    if needed > available:
        raise StudyError(
            f"{path}: not a readable .npy array (its header declares shape {shape} of {dtype}, "
            f"{needed:,} bytes, but the file holds {available:,} bytes of data)"
        )


def _load_npy(path: Path) -> np.ndarray:
    file_size = _check_regular_file(path)
    try:
        with open(path, "rb") as handle:
            if handle.read(6) != b"\x93NUMPY":
                raise StudyError(f"{path}: not a .npy file (no NumPy header)")
            handle.seek(0)
            _check_npy_header(handle, path, file_size)
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise StudyError(f"{path}: holds pickled objects, which are never loaded") from None
        raise StudyError(f"{path}: not a readable .npy array ({exc})") from None
    except OSError as exc:
        raise StudyError(f"{path}: cannot be read ({exc})") from None


def holdout(
    split: Split, fraction: float = VAL_FRACTION, seed: int = SPLIT_SEED
) -> tuple[Split, Split]:
    """Split off a seeded, stratified `fraction` of `split`; return (train, validation)."""
    rng = np.random.default_rng(seed)
    val_idx = []
    for cls in (0, 1):
        idx = np.flatnonzero(split.labels == cls)
        n_val = int(round(len(idx) * fraction))
        val_idx.append(rng.permutation(idx)[:n_val])
    val_mask = np.zeros(len(split), dtype=bool)
    val_mask[np.concatenate(val_idx)] = True
    return (
        Split(split.images[~val_mask], split.labels[~val_mask]),
        Split(split.images[val_mask], split.labels[val_mask]),
    )


def _stack(parts: list[tuple[np.ndarray, int]], where: str) -> Split:
    sizes = {images.shape[1:] for images, _ in parts}
    if len(sizes) > 1:
        raise StudyError(f"{where}: image sizes differ between files: {sorted(sizes)}")
    images = np.concatenate([images for images, _ in parts])
    labels = np.concatenate([np.full(len(images), cls, dtype=np.int64) for images, cls in parts])
    return Split(images, labels)


def _load_homework_dir(root: Path) -> tuple[Split, Split | None, Split]:
    nested = (root / "train" / "normal.npy").exists()
    parts: dict[str, list[tuple[np.ndarray, int]]] = {"train": [], "test": []}
    shapes: dict[str, tuple[int, ...]] = {}
    for (split, cls), name in _HOMEWORK_FILES.items():
        path = root / split / name if nested else root / name
        if not path.exists():
            raise StudyError(
                f"{path}: missing; a data folder needs {', '.join(_HOMEWORK_FILES.values())} "
                "(flat, or under train/ and test/)"
            )
        images = _check_images(_load_npy(path), str(path))
        shapes[str(path)] = images.shape[1:]
        parts[split].append((images, cls))
    if len(set(shapes.values())) > 1:
        raise StudyError(f"{root}: image sizes differ between files: {shapes}")
    return _stack(parts["train"], str(root)), None, _stack(parts["test"], str(root))


def _load_npz(path: Path) -> tuple[Split, Split | None, Split]:
    _check_regular_file(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise StudyError(f"{path}: not a readable .npz archive ({exc})") from None
    with archive:
        keys = set(archive.files)

        def read(key: str) -> np.ndarray:
            member = f"{key}.npy"
            if member not in archive.zip.namelist():
                raise StudyError(f"{path}: key {key!r} is not a .npy array")
            try:
                with archive.zip.open(member) as handle:
                    _check_npy_header(handle, f"{path}: key {key!r}",
                                      archive.zip.getinfo(member).file_size)
                return archive[key]
            except ValueError as exc:
                if "allow_pickle" in str(exc):
                    raise StudyError(
                        f"{path}: key {key!r} holds pickled objects, which are never loaded"
                    ) from None
                raise StudyError(f"{path}: key {key!r} cannot be read ({exc})") from None

        splits: dict[str, Split] = {}
        for name in ("train", "val", "test"):
            img_key, lab_key = f"{name}_images", f"{name}_labels"
            if img_key not in keys and lab_key not in keys and name == "val":
                continue
            for key in (img_key, lab_key):
                if key not in keys:
                    raise StudyError(
                        f"{path}: missing key {key!r}; found keys {sorted(keys)}"
                    )
            where = f"{path}[{img_key}]"
            images = _check_images(read(img_key), where)
            labels = _check_labels(read(lab_key), len(images), f"{path}[{lab_key}]")
            splits[name] = Split(images, labels)
    sizes = {name: s.images.shape[1:] for name, s in splits.items()}
    if len(set(sizes.values())) > 1:
        raise StudyError(f"{path}: image sizes differ between splits: {sizes}")
    return splits["train"], splits.get("val"), splits["test"]


def parse_synthetic(spec: str) -> dict[str, int]:
    """Parse `synthetic[:key=value,...]` into the generator's options."""
    options = dict(SYNTHETIC_DEFAULTS)
    _, _, rest = spec.partition(":")
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in options:
            raise StudyError(
                f"--data {spec!r}: unknown synthetic option {item!r}; "
                f"known: {', '.join(f'{k}=<int>' for k in options)}"
            )
        try:
            options[key] = int(value)
        except ValueError:
            raise StudyError(f"--data {spec!r}: {key} must be an integer, got {value!r}") from None
        minimum = 0 if key == "seed" else (4 if key == "size" else 5)
        if options[key] < minimum:
            raise StudyError(f"--data {spec!r}: {key} must be >= {minimum}, got {options[key]}")
    return options


def resolve_spec(spec: str) -> str:
    """Return the spec with any path made absolute (trials run in other directories)."""
    if spec == "synthetic" or spec.startswith("synthetic:"):
        return spec
    try:
        return str(Path(spec).expanduser().resolve())
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        raise StudyError(f"--data {spec}: cannot be resolved ({exc})") from None


def load_data(spec: str = "synthetic") -> Dataset:
    """Load a data spec at full size; return the three splits, validation held out if needed."""
    if spec == "synthetic" or spec.startswith("synthetic:"):
        opts = parse_synthetic(spec)
        images, labels = make_synthetic(opts["n"] + opts["n_test"], opts["size"], opts["seed"])
        n_train = 2 * opts["n"]
        train: Split = Split(images[:n_train], labels[:n_train])
        val: Split | None = None
        test = Split(images[n_train:], labels[n_train:])
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            try:
                path.stat()
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise StudyError(f"--data {spec}: a symbolic link loop") from None
            raise StudyError(f"--data {spec}: no such file or folder")
        if path.is_dir():
            train, val, test = _load_homework_dir(path)
        elif path.suffix == ".npz":
            train, val, test = _load_npz(path)
        else:
            raise StudyError(
                f"--data {spec}: expected 'synthetic', a folder of .npy files or a .npz file"
            )
    if val is None:
        train, val = holdout(train)
    for name, split in (("train", train), ("validation", val), ("test", test)):
        _check_both_classes(split, f"--data {spec} ({name} split)")
    return Dataset(train, val, test, image_size=train.images.shape[1], source=spec)


def downsample(images: np.ndarray, size: int) -> np.ndarray:
    """Area-downsample uint8 images to size x size; never upsample."""
    if size >= images.shape[1]:
        return images
    import torch  # local: keeps `import study.training.data` light for the CLI's error paths

    out = []
    for start in range(0, len(images), 512):
        chunk = torch.from_numpy(images[start : start + 512]).float().unsqueeze(1)
        small = torch.nn.functional.interpolate(chunk, size=(size, size), mode="area")
        out.append(small.squeeze(1).round().clamp(0, 255).to(torch.uint8).numpy())
    return np.concatenate(out)


def at_size(data: Dataset, image_size: int | None) -> Dataset:
    """Return `data` downsampled once to `image_size` (None or larger: unchanged)."""
    if image_size is None or image_size >= data.image_size:
        return data

    def shrink(split: Split) -> Split:
        return Split(downsample(split.images, image_size), split.labels)

    return Dataset(
        shrink(data.train), shrink(data.val), shrink(data.test), image_size, data.source
    )
