"""BCE and CE in one place: head width, criterion, targets, positive-class probability.

The homework scored a two-logit CE head with the BCE rule `sigmoid(out) > 0.5` broadcast against
(B, 1) labels and printed "100 %". Here each loss turns logits into one positive-class
probability per example, shape (B,), and every metric is computed from that (`study.metrics`),
so both losses are scored by the same rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from study.config import LOSSES
from study.errors import StudyError


@dataclass(frozen=True)
class Loss:
    """How one loss shapes the head, the targets and the scores."""

    name: str
    out_features: int  # head width: 1 logit for BCE, 2 for CE

    def criterion(self, reduction: str = "mean") -> nn.Module:
        """Return the PyTorch criterion for this loss."""
        if self.name == "bce":
            return nn.BCEWithLogitsLoss(reduction=reduction)
        return nn.CrossEntropyLoss(reduction=reduction)

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """Return labels (B,) in {0, 1} in the dtype and shape the criterion expects."""
        if self.name == "bce":
            return labels.to(torch.float32).unsqueeze(1)  # (B, 1) float, like the logits
        return labels.to(torch.long)  # (B,) class indices

    def positive_probability(self, logits: torch.Tensor) -> torch.Tensor:
        """Return P(pneumonia) per example, shape (B,)."""
        if self.name == "bce":
            return torch.sigmoid(logits[:, 0])
        return torch.softmax(logits, dim=1)[:, 1]


def get_loss(name: str) -> Loss:
    """Return the `Loss` for `bce` or `ce`."""
    if name not in LOSSES:
        raise StudyError(f"loss: must be one of {', '.join(LOSSES)}, got {name!r}")
    return Loss(name, out_features=1 if name == "bce" else 2)
