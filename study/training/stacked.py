"""Layers for K seeds at once: each holds K independent layers' parameters with a leading seed
dimension, so K repeats of a configuration train as one model and nothing mixes the seeds.

`StackedLinear` and `StackedBatchNorm1d` stack the MLP; `StackedConv2d` (one grouped
convolution) and `StackedBatchNorm2d` the CNN; `Standardize` (and its stacked form) puts the
training split's mean and SD into the model, so an exported model standardises its own input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Image maps are kept channels-last (NHWC): on the CPU PyTorch's max pooling and batch norm
# are several times faster on it than on NCHW (measured 22 vs 2.5 ms for a 64 x 48 x 28 x 28
# pooling, bench/RESULTS.md), and convolutions keep the layout they are given.
CHANNELS_LAST = torch.channels_last


class StackedLinear(nn.Module):
    """K independent linear layers: weight (K, out, in), bias (K, out).

    Input (K, B, in) holds one batch per seed; input (B, in) is one batch shared by every seed
    (evaluation). Either way one batched matmul, the same kernel for every K, so a seed's
    numbers do not depend on how many seeds it is stacked with. It computes W x^T + b, (K, out,
    B): so the weight's gradient comes out of the backward matmul in the weight's own layout
    (x W^T would give it transposed, and autograd would copy every weight's gradient each step;
    at batch 2 that copy and the slower transposed matmul made a 1024 x 256 layer 2-3x slower).
    """

    def __init__(self, layers: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in layers]))
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in layers]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.expand(len(self.weight), *x.shape)
        if 1 in self.weight.shape[1:]:
            # A matrix side of 1 (the BCE head) sends one seed and several seeds down different
            # BLAS paths, which round differently; elementwise products round alike for every K.
            products = x.unsqueeze(2) * self.weight.unsqueeze(1)  # (K, B, out, in)
            return products.sum(-1) + self.bias.unsqueeze(1)
        out = torch.baddbmm(self.bias.unsqueeze(2), self.weight, x.transpose(1, 2))
        return out.transpose(1, 2)


class _StackedBatchNorm(nn.Module):
    """K independent BatchNorm layers' parameters and running statistics, (K, C) each."""

    def __init__(self, layers: Sequence[nn.BatchNorm1d | nn.BatchNorm2d]) -> None:
        super().__init__()
        first = layers[0]
        self.eps, self.momentum = first.eps, first.momentum
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in layers]))
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in layers]))
        self.register_buffer("running_mean", torch.stack([m.running_mean for m in layers]))
        self.register_buffer("running_var", torch.stack([m.running_var for m in layers]))
        # Unused with a fixed momentum, but kept per seed like every other buffer, so each
        # seed's slice (and its best-weights copy) is exactly the plain layer's state.
        self.register_buffer("num_batches_tracked",
                             torch.stack([m.num_batches_tracked for m in layers]))

    def _normalise(self, flat: torch.Tensor) -> torch.Tensor:
        """F.batch_norm over (B, K*C, ...) channels: the kernel nn.BatchNorm uses, updating the
        (K, C) running statistics in place through their flat views."""
        if self.training:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(flat, self.running_mean.view(-1), self.running_var.view(-1),
                            self.weight.reshape(-1), self.bias.reshape(-1), self.training,
                            self.momentum, self.eps)


class StackedBatchNorm1d(_StackedBatchNorm):
    """K independent BatchNorm1d layers: statistics per seed and feature, over the batch only.

    The (K, B, C) activations are viewed as (B, K*C) channels and normalised by the same kernel
    as nn.BatchNorm1d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seeds, batch, channels = x.shape
        y = self._normalise(x.transpose(0, 1).reshape(batch, seeds * channels))
        return y.view(batch, seeds, channels).transpose(0, 1)


class StackedBatchNorm2d(_StackedBatchNorm):
    """K independent BatchNorm2d layers on (B, K*C, H, W) maps: seed k's channels are
    k*C ... k*C + C-1, so per-channel statistics are per seed and channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._normalise(x)


class StackedConv2d(nn.Module):
    """K independent Conv2d layers as one grouped convolution (groups=K is exactly K separate
    convolutions in one kernel): weight (K, out, in, k, k), bias (K, out) or none.

    Input and output are (B, K*C, H, W): seed k's channels side by side, as a grouped
    convolution reads and writes them.
    """

    def __init__(self, layers: Sequence[nn.Conv2d]) -> None:
        super().__init__()
        first = layers[0]
        self.stride, self.padding = first.stride, first.padding
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in layers]))
        self.bias = (nn.Parameter(torch.stack([m.bias.detach() for m in layers]))
                     if first.bias is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seeds = len(self.weight)
        weight = self.weight.reshape(-1, *self.weight.shape[2:])  # (K*out, in, k, k)
        bias = None if self.bias is None else self.bias.reshape(-1)
        out = F.conv2d(x, weight, bias, self.stride, self.padding, groups=seeds)
        # One layout for every K: a 1-channel input (one seed's first layer) would otherwise
        # give NCHW maps, and its seed would run other kernels than when stacked.
        return out.contiguous(memory_format=CHANNELS_LAST)


class Standardize(nn.Module):
    """(x - mean) / std with the training split's pixel mean and SD as buffers (saved with the
    weights, so an exported model standardises its input as in training), then the image
    shape the next layer wants: flat (B, H*W) for an MLP, (B, 1, H, W) for a CNN."""

    def __init__(self, mean: float = 0.0, std: float = 1.0, image: bool = False) -> None:
        super().__init__()
        self.image = image
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        if not self.image:
            return x.flatten(1)
        side = math.isqrt(x[0].numel())
        return x.reshape(len(x), 1, side, side).contiguous(memory_format=CHANNELS_LAST)


class StackedStandardize(nn.Module):
    """K `Standardize` layers (buffers (K,)): (K, B, H*W) or shared (B, H*W) pixels in; out,
    (K, B, H*W) for a stacked MLP or (B, K, H, W), seed k in channel k, for a stacked CNN."""

    def __init__(self, layers: Sequence[Standardize]) -> None:
        super().__init__()
        self.image = layers[0].image
        self.register_buffer("mean", torch.stack([m.mean for m in layers]))
        self.register_buffer("std", torch.stack([m.std for m in layers]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seeds = len(self.mean)
        if x.dim() == 2:
            x = x.expand(seeds, *x.shape)
        x = (x - self.mean.view(seeds, 1, 1)) / self.std.view(seeds, 1, 1)
        if not self.image:
            return x
        batch, side = x.shape[1], math.isqrt(x.shape[2])
        return x.transpose(0, 1).reshape(batch, seeds, side, side).contiguous(
            memory_format=CHANNELS_LAST)


def set_standardization(model: nn.Module, mean: float, std: float) -> None:
    """Fill every (plain or stacked) Standardize layer of `model` with `mean` and `std`."""
    for layer in model.modules():
        if isinstance(layer, (Standardize, StackedStandardize)):
            layer.mean.fill_(mean)
            layer.std.fill_(std)
