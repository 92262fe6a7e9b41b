"""Saving and loading trained models without pickle (`torch.load(weights_only=True)`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from study.config import TrialConfig
from study.errors import StudyError
from study.io import AtomicWriter
from study.losses import get_loss
from study.model import build_mlp, is_stacked_state, unstack_state

MODEL_FILE = "model.pt"


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
    image_size = int(payload["image_size"])
    model = build_mlp(image_size**2, get_loss(config.loss).out_features, config.depth,
                      config.width, config.dropout, config.batchnorm)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:200]
        raise StudyError(
            f"--checkpoint {path}: weights do not match the architecture in its config ({detail})"
        ) from None
    return config, model, image_size
