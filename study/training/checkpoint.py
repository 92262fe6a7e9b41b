"""Saving and loading trained models without pickle (`torch.load(weights_only=True)`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from study.core.files import AtomicWriter, write_bytes_atomic
from study.core.names import MODEL_FILE
from study.errors import StudyError
from study.training.config import TrialConfig
from study.training.metrics import THRESHOLD
from study.training.model import build_model, is_stacked_state, unstack_state


def save_model(path: Path, model_state: dict[str, torch.Tensor], config: TrialConfig,
               image_size: int, index: int = 0) -> None:
    """Write the weights with the config and image size needed to rebuild the model.

    A stacked state (several seeds) is saved as seed `index`'s plain model, with that seed in
    its config and `repeats` 1: a model file always holds one model.
    """
    if is_stacked_state(model_state):
        model_state = unstack_state(model_state, index)
        config = dataclasses.replace(config, seed=config.seeds[index], repeats=1)
    cpu_state = {k: v.detach().cpu() for k, v in model_state.items()}
    payload = {"state_dict": cpu_state, "config": config.to_dict(), "image_size": image_size}
    with AtomicWriter(path) as out:  # a crash never leaves half a model
        torch.save(payload, out)


def save_predictions(path: Path, prob: torch.Tensor, labels: torch.Tensor,
                     seeds: list[int], val_prob: torch.Tensor | None = None,
                     val_labels: torch.Tensor | None = None) -> None:
    """Write each seed's test P(pneumonia) per image, (K, N), with the decision and the labels,
    and (given) the same weights' on validation, from which the report chooses an operating
    threshold, as a small .npz (about 3 bytes per image and seed) that numpy reads without
    pickle."""
    import io

    import numpy as np

    def cpu(t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().to(torch.float64).numpy()

    extra = {}
    if val_prob is not None and val_labels is not None:
        extra = {"val_prob": cpu(val_prob).astype(np.float16),
                 "val_labels": cpu(val_labels).astype(np.uint8)}
    buffer = io.BytesIO()
    np.savez(buffer, prob=cpu(prob).astype(np.float16),
             predicted=(cpu(prob) >= THRESHOLD).astype(np.uint8),
             labels=cpu(labels).astype(np.uint8),
             seeds=np.asarray(seeds, dtype=np.int64), **extra)
    write_bytes_atomic(path, buffer.getvalue())


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint file without executing anything it may carry."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise StudyError(f"--checkpoint {path}: no such file") from None
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StudyError(
            f"--checkpoint {path}: not a loadable weights-only checkpoint ({first[:200]})"
        ) from None


def load_model(path: str | Path) -> tuple[TrialConfig, nn.Module, int]:
    """Return (config, model with its weights, image size) from a model file or run folder."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    payload = read_checkpoint(path)
    if not isinstance(payload, dict) or not {"state_dict", "config", "image_size"} <= set(payload):
        raise StudyError(
            f"--checkpoint {path}: expected keys state_dict, config, image_size; "
            f"found {sorted(payload) if isinstance(payload, dict) else type(payload).__name__}"
        )
    config = TrialConfig.from_dict(payload["config"], where=f"--checkpoint {path}")
    image_size = payload["image_size"]
    if isinstance(image_size, torch.Tensor) and image_size.numel() == 1:
        image_size = image_size.item()
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
        raise StudyError(f"--checkpoint {path}: image_size must be an integer >= 1, "
                         f"got {image_size!r:.100}")
    state = payload["state_dict"]
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise StudyError(f"--checkpoint {path}: state_dict must map names to tensors")

    def build() -> nn.Module:
        return build_model(config, image_size)

    # Shapes first, on the meta device (nothing allocated): a damaged image size or width
    # must not build a model of terabytes before the weights are found not to fit.
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in build().state_dict().items()}
    except (RuntimeError, OverflowError, ValueError) as exc:  # sizes past int64
        raise StudyError(f"--checkpoint {path}: no model can be built from its config and "
                         f"image_size {image_size} ({str(exc)[:100]})") from None
    found = {k: tuple(v.shape) for k, v in state.items()}
    for key in sorted(set(expected) | set(found)):
        if expected.get(key) != found.get(key):
            raise StudyError(
                f"--checkpoint {path}: weights do not match the architecture in its config "
                f"(image_size {image_size}, depth {config.depth}, width {config.width}): "
                f"{key} should be {expected.get(key, 'absent')}, found {found.get(key, 'absent')}"
            )
    model = build()
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:200]
        raise StudyError(
            f"--checkpoint {path}: weights do not match the architecture in its config ({detail})"
        ) from None
    return config, model, image_size
