"""`TrialConfig`: one training configuration, checked once where it enters."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from study.core.files import load_yaml
from study.errors import StudyError

# The losses training.losses implements; named here so that reading a config (the analysis, the
# driver) does not import torch.
LOSSES = ("bce", "ce")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("none", "cosine")
MODELS = ("mlp", "cnn")
POOLS = ("max", "avg")
AUGMENTS = ("none", "light", "strong")
CLASS_WEIGHTS = ("none", "balanced")


@dataclass(frozen=True)
class TrialConfig:
    """A trial's hyperparameters. Defaults are the homework lab's, so no flags reproduce it."""

    model: str = "mlp"  # mlp: the homework's; cnn: conv blocks, global average pooling
    loss: str = "ce"  # bce: one logit + BCEWithLogits; ce: two logits + CrossEntropy
    batch_size: int = 32
    depth: int = 3  # hidden layers (MLP) or conv blocks (CNN)
    width: int | tuple[int, ...] = 64  # units (MLP) or channels (CNN): one for all, or per layer
    kernel_size: int = 3  # CNN: odd, "same" padding
    pool: str = "max"  # CNN: max or avg pooling, halving the image after each block
    dropout: float = 0.5
    batchnorm: bool = True
    optimizer: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    schedule: str = "cosine"  # learning-rate schedule over the epochs
    epochs: int = 30
    seed: int = 0  # model init and batch order; the data split has its own fixed seed
    repeats: int = 1  # seeds seed, seed+1, ..., trained together as one stacked model
    image_size: int | None = None  # None: the data's own size; only ever downsamples
    augment: str = "none"  # training images only: light or strong random shifts and rotations
    hflip: bool = False  # with augment, also random left-right flips (X-rays are not symmetric)
    class_weight: str = "none"  # balanced: loss weights n / (2 n_class) from the training split
    normalize: bool | None = None  # by the training split's mean and SD; None: CNN yes, MLP no

    def __post_init__(self) -> None:
        _check(self)

    @property
    def seeds(self) -> list[int]:
        """The seeds this config trains: `seed` ... `seed + repeats - 1`."""
        return list(range(self.seed, self.seed + self.repeats))

    @property
    def normalizes(self) -> bool:
        """Whether inputs are standardised (`normalize`, or by family where it is None)."""
        return self.model == "cnn" if self.normalize is None else self.normalize

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "config") -> TrialConfig:
        """Build a config from a plain dict (Ray's config, a YAML file), naming bad keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise StudyError(
                f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}"
            )
        values = dict(values)
        if isinstance(values.get("width"), list):
            values["width"] = tuple(values["width"])
        if isinstance(values.get("width"), tuple) and "depth" not in values:
            values["depth"] = len(values["width"])
        try:
            return cls(**values)
        except StudyError as exc:
            raise StudyError(f"{where}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (width tuples become lists)."""
        out = asdict(self)
        if isinstance(out["width"], tuple):
            out["width"] = list(out["width"])
        return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(c: TrialConfig) -> None:
    """Raise StudyError naming the first invalid field and its value."""
    for name, value, allowed in (("model", c.model, MODELS), ("pool", c.pool, POOLS),
                                 ("augment", c.augment, AUGMENTS),
                                 ("class_weight", c.class_weight, CLASS_WEIGHTS)):
        if value not in allowed:
            raise StudyError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    if not _is_int(c.kernel_size) or c.kernel_size < 1 or c.kernel_size % 2 == 0:
        raise StudyError(f"kernel_size must be an odd integer >= 1, got {c.kernel_size!r}")
    for name, flag in (("hflip", c.hflip), ("normalize", c.normalize)):
        if not isinstance(flag, bool) and not (name == "normalize" and flag is None):
            raise StudyError(f"{name} must be true or false, got {flag!r}")
    if c.loss not in LOSSES:
        raise StudyError(f"loss must be one of {', '.join(LOSSES)}, got {c.loss!r}")
    if c.optimizer not in OPTIMIZERS:
        raise StudyError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {c.optimizer!r}")
    if c.schedule not in SCHEDULES:
        raise StudyError(f"schedule must be one of {', '.join(SCHEDULES)}, got {c.schedule!r}")
    if not _is_int(c.batch_size) or c.batch_size < 1:
        raise StudyError(f"batch_size must be an integer >= 1, got {c.batch_size!r}")
    if not _is_int(c.depth) or c.depth < 0:
        raise StudyError(f"depth must be an integer >= 0, got {c.depth!r}")
    if isinstance(c.width, tuple):
        if len(c.width) != c.depth or not all(_is_int(w) and w >= 1 for w in c.width):
            raise StudyError(
                f"width must be one integer >= 1 or a list of depth={c.depth} of them, "
                f"got {list(c.width)}"
            )
    elif not _is_int(c.width) or c.width < 1:
        raise StudyError(f"width must be an integer >= 1, got {c.width!r}")
    if c.batch_size == 1 and c.batchnorm is True and c.depth > 0:
        # BatchNorm1d cannot normalise a batch of one example in training mode.
        raise StudyError("batch_size must be >= 2 with batchnorm on (BatchNorm1d cannot train "
                         "on one example), got 1")
    if not _is_number(c.dropout) or not 0 <= c.dropout < 1:
        raise StudyError(f"dropout must lie in [0, 1), got {c.dropout!r}")
    if not isinstance(c.batchnorm, bool):
        raise StudyError(f"batchnorm must be true or false, got {c.batchnorm!r}")
    for name, value, low in (("lr", c.lr, "> 0"), ("weight_decay", c.weight_decay, ">= 0")):
        if not _is_number(value) or not (value > 0 if low == "> 0" else value >= 0):
            raise StudyError(f"{name} must be {low}, got {value!r}")  # NaN fails here too
        if not math.isfinite(value):
            raise StudyError(f"{name} must be finite, got {value!r}")
    if not _is_int(c.epochs) or c.epochs < 1:
        raise StudyError(f"epochs must be an integer >= 1, got {c.epochs!r}")
    if not _is_int(c.seed) or c.seed < 0:
        raise StudyError(f"seed must be an integer >= 0, got {c.seed!r}")
    if not _is_int(c.repeats) or c.repeats < 1:
        raise StudyError(f"repeats must be an integer >= 1, got {c.repeats!r}")
    if c.image_size is not None and (not _is_int(c.image_size) or c.image_size < 1):
        raise StudyError(f"image_size must be an integer >= 1, got {c.image_size!r}")


def max_cnn_depth(image_size: int) -> int:
    """The deepest CNN for `image_size`-pixel squares: each block halves them (floor), and the
    last block must leave at least one pixel (28 -> 14 -> 7 -> 3 -> 1: depth 4)."""
    return max(0, image_size.bit_length() - 1)


def check_cnn_fits(depth: int, image_size: int, where: str = "depth") -> None:
    """Raise StudyError naming `where` when a CNN of `depth` blocks cannot take the images."""
    if depth > max_cnn_depth(image_size):
        raise StudyError(
            f"{where}: a CNN of depth {depth} halves {image_size}x{image_size} images {depth} "
            f"times, to nothing; at most depth {max_cnn_depth(image_size)} at that size"
        )


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file (`study train --config`) into a dict of TrialConfig keys.

    A `best_config.yaml` written by `study run` keeps the config under `config:` beside its
    metrics; such files are accepted as they are.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise StudyError(f"--config {path}: cannot be read ({exc.strerror})") from None
    try:
        values = json.loads(text) if path.suffix == ".json" else load_yaml(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0]
        raise StudyError(f"--config {path}: not valid YAML/JSON ({first})") from None
    if isinstance(values, dict) and isinstance(values.get("config"), dict):
        values = values["config"]
    if not isinstance(values, dict):
        raise StudyError(f"--config {path}: expected a mapping of config keys, got {values!r}")
    return values
