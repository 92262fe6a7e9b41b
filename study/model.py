"""The homework's MLP, generalised in depth, per-layer width, dropout and batch norm."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def layer_widths(depth: int, width: int | Sequence[int]) -> list[int]:
    """Return the hidden widths: `width` repeated `depth` times, or the per-layer list itself."""
    if isinstance(width, int):
        return [width] * depth
    widths = list(width)
    assert len(widths) == depth, (depth, widths)  # TrialConfig checks this for users
    return widths


def build_mlp(
    in_features: int,
    out_features: int,
    depth: int,
    width: int | Sequence[int],
    dropout: float,
    batchnorm: bool = True,
) -> nn.Sequential:
    """Flatten -> [Linear -> BatchNorm1d (optional) -> ReLU -> Dropout] x depth -> Linear head."""
    layers: list[nn.Module] = [nn.Flatten()]
    previous = in_features
    for hidden in layer_widths(depth, width):
        layers.append(nn.Linear(previous, hidden))
        if batchnorm:
            layers.append(nn.BatchNorm1d(hidden))
        layers += [nn.ReLU(), nn.Dropout(dropout)]
        previous = hidden
    layers.append(nn.Linear(previous, out_features))
    return nn.Sequential(*layers)
