"""BCE and CE in one place: head width, criterion, targets, positive-class probability.

The homework scored a two-logit CE head with the BCE rule `sigmoid(out) > 0.5` broadcast against
(B, 1) labels and printed "100 %". Here each loss turns logits into one positive-class
probability per example, shape (B,), and every metric is computed from that (`training.metrics`),
so both losses are scored by the same rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from study.errors import StudyError
from study.training.config import LOSSES


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

    def per_example(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Return each example's loss, shape (B,), for (B, out) logits and (B,) labels.

        BCE is computed as the cross-entropy of the two logits (0, z): the same function,
        log(1 + e^z) - y z. BCEWithLogits' elementwise kernels round an element differently
        depending on where it falls in the tensor, so a seed's loss would depend on how many
        seeds are stacked beside it; the row-wise cross-entropy kernel rounds every row alike.
        """
        return F.cross_entropy(self._two_logits(logits), labels.to(torch.long),
                               reduction="none")

    def positive_probability(self, logits: torch.Tensor) -> torch.Tensor:
        """Return P(pneumonia) per example, shape (B,) (for BCE sigmoid(z), computed row-wise
        as softmax(0, z) for the reason `per_example` gives)."""
        return torch.softmax(self._two_logits(logits), dim=1)[:, 1]

    def _two_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return F.pad(logits, (1, 0)) if self.name == "bce" else logits


def get_loss(name: str) -> Loss:
    """Return the `Loss` for `bce` or `ce`."""
    if name not in LOSSES:
        raise StudyError(f"loss: must be one of {', '.join(LOSSES)}, got {name!r}")
    return Loss(name, out_features=1 if name == "bce" else 2)
