"""Export a trial's kept weights as a model file: the best run of a study, ready to evaluate.

A trial's checkpoints (`checkpoint_*/state.pt`) hold the training state of every seed it
stacked; a model file holds one plain model with the configuration that built it
(`checkpoint.save_model`), which `study evaluate --checkpoint` and `load_model` read. PyTorch
only: `study report` calls this in a worker process, so the report itself never imports torch.
"""

from __future__ import annotations

from pathlib import Path

import torch

from study.core.names import TRIAL_STATE_FILE
from study.errors import StudyError
from study.training.checkpoint import save_model
from study.training.config import TrialConfig
from study.training.model import image_size_of


def export_trial_model(trial_dir: Path, path: Path, seed: int | None = None) -> Path | None:
    """Write seed `seed`'s kept weights (those of its best validation loss) from the trial's
    latest checkpoint to `path`; return `path`, or None where the trial kept no checkpoint.

    `seed` picks the slice of a stacked trial (its config's first seed when None or not one of
    its seeds). Raises StudyError where the checkpoint cannot be read or holds no model.
    """
    checkpoints = sorted(Path(trial_dir).glob(f"checkpoint_*/{TRIAL_STATE_FILE}"))
    if not checkpoints:
        return None
    source = checkpoints[-1]
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StudyError(f"{source}: the best trial's checkpoint cannot be read "
                         f"({first[:200]})") from None
    # The weights of the best validation loss where the loop kept them, else the last ones.
    weights = state.get("best_model") or state.get("model") if isinstance(state, dict) else None
    if not isinstance(weights, dict) or not isinstance(state.get("config"), dict):
        raise StudyError(f"{source}: the best trial's checkpoint holds no config and weights")
    config = TrialConfig.from_dict(state["config"], where=str(source))
    image_size = state.get("image_size") or image_size_of(weights, config.model)
    if image_size is None:
        raise StudyError(f"{source}: the best trial's checkpoint holds no layer weights")
    seed = config.seed if seed is None else seed
    index = config.seeds.index(seed) if seed in config.seeds else 0
    save_model(path, weights, config, image_size, index=index)
    return path
