"""The per-image predictions each run saves with its final checkpoint (PREDICTIONS_FILE), read.

One reader for every use of them: `read_predictions` (each seed's test correctness, for the
test-set intervals) and `from_predictions` with a reader of its own (the clinical readout).
numpy only, never pickle.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from study.core.names import PREDICTIONS_FILE

T = TypeVar("T")


def from_predictions(trial_dir: Path, read: Callable[[Any], T]) -> T | None:
    """`read(saved)` of the trial's last checkpoint whose PREDICTIONS_FILE reads (an older one
    where the newest cannot be read, or lacks what `read` takes); None where none does (older
    experiments). `saved` is numpy's NpzFile: numpy only, never pickle."""
    for path in sorted(Path(trial_dir).glob(f"checkpoint_*/{PREDICTIONS_FILE}"), reverse=True):
        try:
            with np.load(path, allow_pickle=False) as saved:
                return read(saved)
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            continue
    return None


def read_predictions(trial_dir: Path) -> dict[int, np.ndarray]:
    """Each seed's per-image test correctness (bool, in the test set's order) of its kept
    weights, from the trial's last checkpoint that holds PREDICTIONS_FILE; {} where none does
    (older experiments) or the file cannot be read."""
    def correctness(saved: Any) -> dict[int, np.ndarray]:
        correct = saved["predicted"] == saved["labels"][None, :]
        return {int(s): correct[i] for i, s in enumerate(saved["seeds"])}

    return from_predictions(trial_dir, correctness) or {}
