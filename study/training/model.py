"""The homework's MLP, generalised in depth, per-layer width, dropout and batch norm; and the
same MLP stacked over seeds, so K repeats of a configuration train as one model.

The stacked model keeps the plain model's layer indices (`1.weight`, `2.running_mean`, ...) with
a leading seed dimension on every parameter and buffer, so `unstack_state` turns seed k's slice
back into the plain model's state dict (for `study evaluate` and exported models).
`build_model` and `build_stacked_model` are the one place a model is built from a
`TrialConfig`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from study.training.config import TrialConfig
from study.training.losses import get_loss


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


class StackedBatchNorm1d(nn.Module):
    """K independent BatchNorm1d layers: statistics per seed and feature, over the batch only.

    The (K, B, C) activations are viewed as (B, K*C) channels and normalised by the same kernel
    as nn.BatchNorm1d, which updates the (K, C) running statistics in place through their views.
    """

    def __init__(self, layers: Sequence[nn.BatchNorm1d]) -> None:
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seeds, batch, channels = x.shape
        if self.training:
            self.num_batches_tracked.add_(1)
        flat = x.transpose(0, 1).reshape(batch, seeds * channels)
        y = F.batch_norm(flat, self.running_mean.view(-1), self.running_var.view(-1),
                         self.weight.reshape(-1), self.bias.reshape(-1), self.training,
                         self.momentum, self.eps)
        return y.view(batch, seeds, channels).transpose(0, 1)


class StackedMLP(nn.Sequential):
    """`build_mlp`'s model for K seeds at once, built from K plain models (one per seed).

    Input: (K, B, in) pixels, one batch per seed, or (B, in) shared by all seeds. Output:
    (K, B, out) logits. Every seed's parameters, BatchNorm statistics and dropout masks are
    its own; nothing in the forward pass mixes seeds.
    """

    def __init__(self, models: Sequence[nn.Sequential]) -> None:
        layers: list[nn.Module] = []
        for column in zip(*models, strict=True):
            first = column[0]
            if isinstance(first, nn.Flatten):
                layers.append(nn.Identity())  # inputs arrive flattened; keeps the indices
            elif isinstance(first, nn.Linear):
                layers.append(StackedLinear(column))
            elif isinstance(first, nn.BatchNorm1d):
                layers.append(StackedBatchNorm1d(column))
            elif isinstance(first, nn.Dropout):
                layers.append(nn.Dropout(first.p))  # elementwise: a mask per seed and example
            elif isinstance(first, nn.ReLU):
                layers.append(nn.ReLU())
            else:
                raise TypeError(f"cannot stack {type(first).__name__}")
        super().__init__(*layers)
        self.seeds = len(models)


def build_stacked_mlp(
    seeds: Sequence[int],
    in_features: int,
    out_features: int,
    depth: int,
    width: int | Sequence[int],
    dropout: float,
    batchnorm: bool = True,
) -> StackedMLP:
    """Return the stacked MLP of `seeds`: seed s's slice is initialised exactly as
    `torch.manual_seed(s); build_mlp(...)` would be. Leaves torch's global generator where the
    last seed's initialisation left it (for one seed: where the plain model's would)."""
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(build_mlp(in_features, out_features, depth, width, dropout, batchnorm))
    return StackedMLP(models)


def is_stacked_state(state: dict[str, torch.Tensor]) -> bool:
    """True for a stacked model's state dict (its linear weights are 3-d, a plain one's 2-d)."""
    weights = [v for k, v in state.items() if k.endswith("weight")]
    return bool(weights) and weights[0].dim() == 3


def unstack_state(state: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    """Return seed `index`'s slice of a stacked state dict as the plain model's state dict."""
    return {k: v[index] for k, v in state.items()}


def build_model(config: TrialConfig, image_size: int) -> nn.Sequential:
    """Return the plain (one-seed) model `config` describes, for `image_size`-pixel squares."""
    return build_mlp(image_size**2, get_loss(config.loss).out_features, config.depth,
                     config.width, config.dropout, config.batchnorm)


def build_stacked_model(config: TrialConfig, image_size: int) -> StackedMLP:
    """Return `config`'s seeds stacked as one model, each initialised as it would be alone."""
    return build_stacked_mlp(config.seeds, image_size**2, get_loss(config.loss).out_features,
                             config.depth, config.width, config.dropout, config.batchnorm)


def image_size_of(weights: dict[str, torch.Tensor]) -> int | None:
    """The image size a (plain or stacked) model's weights were built for; None when they hold
    no layer weights."""
    first = next((v for k, v in weights.items()
                  if k.endswith("weight") and getattr(v, "ndim", 0) >= 2), None)
    return None if first is None else int(round(first.shape[-1] ** 0.5))
