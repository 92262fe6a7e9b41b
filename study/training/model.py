"""The homework's MLP, generalised in depth, per-layer width, dropout and batch norm; and the
same MLP stacked over seeds, so K repeats of a configuration train as one model. The model
family is a trial parameter: `build_model` and `build_stacked_model` build the MLP or the CNN
(`training.cnn`) a `TrialConfig` names.

The stacked model keeps the plain model's layer indices (`1.weight`, `2.running_mean`, ...) with
a leading seed dimension on every parameter and buffer, so `unstack_state` turns seed k's slice
back into the plain model's state dict (for `study evaluate` and exported models).
`build_model` and `build_stacked_model` are the one place a model is built from a
`TrialConfig`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from study.training.cnn import StackedCNN, build_cnn
from study.training.config import TrialConfig, check_cnn_fits
from study.training.losses import get_loss
from study.training.stacked import (
    StackedBatchNorm1d,
    StackedLinear,
    StackedStandardize,
    Standardize,
)


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
    standardize: bool = False,
) -> nn.Sequential:
    """Flatten -> [Linear -> BatchNorm1d (optional) -> ReLU -> Dropout] x depth -> Linear head;
    with `standardize`, the Flatten is a `Standardize` (the training split's mean and SD)."""
    layers: list[nn.Module] = [Standardize() if standardize else nn.Flatten()]
    previous = in_features
    for hidden in layer_widths(depth, width):
        layers.append(nn.Linear(previous, hidden))
        if batchnorm:
            layers.append(nn.BatchNorm1d(hidden))
        layers += [nn.ReLU(), nn.Dropout(dropout)]
        previous = hidden
    layers.append(nn.Linear(previous, out_features))
    return nn.Sequential(*layers)


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
            elif isinstance(first, Standardize):
                layers.append(StackedStandardize(column))
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
    standardize: bool = False,
) -> StackedMLP:
    """Return the stacked MLP of `seeds`: seed s's slice is initialised exactly as
    `torch.manual_seed(s); build_mlp(...)` would be. Leaves torch's global generator where the
    last seed's initialisation left it (for one seed: where the plain model's would)."""
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(build_mlp(in_features, out_features, depth, width, dropout, batchnorm,
                                standardize))
    return StackedMLP(models)


STACKED = (StackedMLP, StackedCNN)  # the stacked models: (K, B, out) logits, `.seeds`


def is_stacked_state(state: dict[str, torch.Tensor]) -> bool:
    """True for a stacked model's state dict: its first layer weight has a seed dimension in
    front of a linear weight's two or a convolution's four (3-d or 5-d; plain: 2-d or 4-d)."""
    weights = [v for k, v in state.items() if k.endswith("weight")]
    return bool(weights) and weights[0].dim() in (3, 5)


def unstack_state(state: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    """Return seed `index`'s slice of a stacked state dict as the plain model's state dict."""
    return {k: v[index] for k, v in state.items()}


def _cnn(config: TrialConfig, image_size: int) -> nn.Sequential:
    check_cnn_fits(config.depth, image_size)
    return build_cnn(get_loss(config.loss).out_features, config.depth,
                     layer_widths(config.depth, config.width), config.kernel_size, config.pool,
                     config.dropout, config.batchnorm)


def build_model(config: TrialConfig, image_size: int) -> nn.Sequential:
    """Return the plain (one-seed) model `config` describes, for `image_size`-pixel squares.
    Raises StudyError for a CNN deeper than such images allow."""
    if config.model == "cnn":
        return _cnn(config, image_size)
    return build_mlp(image_size**2, get_loss(config.loss).out_features, config.depth,
                     config.width, config.dropout, config.batchnorm, config.normalizes)


def build_stacked_model(config: TrialConfig, image_size: int) -> StackedMLP | StackedCNN:
    """Return `config`'s seeds stacked as one model, each initialised as it would be alone
    (`torch.manual_seed(seed); build_model(...)`)."""
    if config.model == "cnn":
        models = []
        for seed in config.seeds:
            torch.manual_seed(seed)
            models.append(_cnn(config, image_size))
        return StackedCNN(models)
    return build_stacked_mlp(config.seeds, image_size**2, get_loss(config.loss).out_features,
                             config.depth, config.width, config.dropout, config.batchnorm,
                             config.normalizes)


def image_size_of(weights: dict[str, torch.Tensor], model: str = "mlp") -> int | None:
    """The image size a (plain or stacked) MLP's weights were built for; None when they hold
    no layer weights, or for a CNN (whose weights fit any size: its checkpoints say which)."""
    first = next((v for k, v in weights.items()
                  if k.endswith("weight") and getattr(v, "ndim", 0) >= 2), None)
    if first is None or model == "cnn":
        return None
    return int(round(first.shape[-1] ** 0.5))


def check_fits(config: TrialConfig, image_size: int) -> None:
    """Raise StudyError where `config`'s model cannot take `image_size`-pixel images (a CNN
    deeper than they can be halved), before anything is built or written."""
    if config.model == "cnn":
        check_cnn_fits(config.depth, image_size)
