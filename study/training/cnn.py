"""A small convolutional network, plain and stacked over seeds like the MLP.

Standardize -> [Conv2d -> BatchNorm2d (optional) -> max pool /2 -> ReLU, or ReLU -> average
pool /2] x depth -> global average pooling -> Dropout -> Linear head. Global average pooling
makes the head's size independent of the image's, so one architecture fits any image size; each
block halves the image, so a depth needs images of at least 2**depth pixels a side
(`config.check_cnn_fits`).

The stacked CNN runs K seeds' convolutions as one grouped convolution (groups=K) over their
channels side by side, (B, K*C, H, W), and their BatchNorm over those K*C channels; the
layer indices and parameter shapes are the plain model's with a leading seed dimension, so
`model.unstack_state` gives each seed's plain state dict back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from study.training.stacked import (
    CHANNELS_LAST,
    StackedBatchNorm2d,
    StackedConv2d,
    StackedLinear,
    StackedStandardize,
    Standardize,
)


class Conv2d(nn.Conv2d):
    """nn.Conv2d whose output is channels-last, as `StackedConv2d`'s: one layout, and the
    same kernels, for a seed alone, stacked, or exported (the state dict is nn.Conv2d's)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).contiguous(memory_format=CHANNELS_LAST)


def build_cnn(
    out_features: int,
    depth: int,
    widths: Sequence[int],
    kernel_size: int = 3,
    pool: str = "max",
    dropout: float = 0.0,
    batchnorm: bool = True,
) -> nn.Sequential:
    """The plain CNN: (B, H*W) or (B, H, W) pixels in [0, 1] in, (B, out_features) logits out.

    With batch norm a convolution has no bias: BatchNorm subtracts the batch mean, so the
    bias's gradient is zero but for rounding, and Adam would turn that noise into steps.
    """
    layers: list[nn.Module] = [Standardize(image=True)]
    assert len(widths) == depth, (depth, widths)  # TrialConfig checks this for users
    previous = 1
    for channels in widths:
        layers.append(Conv2d(previous, channels, kernel_size, padding=kernel_size // 2,
                             bias=not batchnorm))
        if batchnorm:
            layers.append(nn.BatchNorm2d(channels))
        # ReLU and max pooling commute exactly (values and gradients: ReLU is monotone), so max
        # pooling goes first and ReLU runs on a quarter of the map; average pooling does not.
        layers += ([nn.MaxPool2d(2), nn.ReLU()] if pool == "max"
                   else [nn.ReLU(), nn.AvgPool2d(2)])
        previous = channels
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
               nn.Linear(previous, out_features)]
    return nn.Sequential(*layers)


class SeedsFirst(nn.Module):
    """(B, K*C, 1, 1) pooled maps -> (K, B, C) features, the stacked head's layout."""

    def __init__(self, seeds: int) -> None:
        super().__init__()
        self.seeds = seeds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = len(x)
        return x.reshape(batch, self.seeds, -1).transpose(0, 1)


class StackedCNN(nn.Sequential):
    """`build_cnn`'s model for K seeds at once, built from K plain models (one per seed).

    Input: (K, B, H*W) pixels, one batch per seed, or (B, H*W) shared by all seeds. Output:
    (K, B, out) logits. Every seed's parameters, BatchNorm statistics and dropout masks are
    its own; nothing in the forward pass mixes seeds.
    """

    def __init__(self, models: Sequence[nn.Sequential]) -> None:
        seeds = len(models)
        layers: list[nn.Module] = []
        for column in zip(*models, strict=True):
            first = column[0]
            if isinstance(first, Standardize):
                layers.append(StackedStandardize(column))
            elif isinstance(first, nn.Conv2d):
                layers.append(StackedConv2d(column))
            elif isinstance(first, nn.BatchNorm2d):
                layers.append(StackedBatchNorm2d(column))
            elif isinstance(first, nn.Linear):
                layers.append(StackedLinear(column))
            elif isinstance(first, nn.Flatten):
                layers.append(SeedsFirst(seeds))
            elif isinstance(first, (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                                    nn.Dropout)):
                layers.append(first)  # per channel or element: the seeds stay apart
            else:
                raise TypeError(f"cannot stack {type(first).__name__}")
        super().__init__(*layers)
        self.seeds = seeds
