"""Evaluation: each seed's loss, metrics and per-image probabilities on a split, no gradients.

Evaluation needs no gradients, so batches are large, up to a pixel budget per launch.
"""

from __future__ import annotations

import torch
from torch import nn

from study.training.device import DeviceSplit, scale
from study.training.losses import Loss
from study.training.metrics import classification_metrics
from study.training.model import STACKED
from study.training.stacked import StackedConv2d

EVAL_BATCH = 2048  # evaluation needs no gradients, so large batches are cheap ...
EVAL_PIXELS = 2**22  # ... up to 16 MiB of float32 pixels: at 256x256 a 2048-image batch
#                      would be a 512 MiB temporary in every concurrent trial
EVAL_PIXELS_CUDA = 2**26  # on a GPU, 256 MiB: 1,024 images at 256x256, so a validation or
#                           test split is one or two launches of the model, not dozens


def positive_probability(loss: Loss, logits: torch.Tensor) -> torch.Tensor:
    """P(pneumonia) per seed and example, (K, B), from (K, B, out) logits."""
    seeds, batch, out = logits.shape
    return loss.positive_probability(logits.reshape(seeds * batch, out)).view(seeds, batch)


def seed_classification_metrics(prob: torch.Tensor, labels: torch.Tensor
                                ) -> dict[str, torch.Tensor]:
    """`classification_metrics` of each seed's row of (K, N) scores and labels, as (K,) tensors."""
    rows = [classification_metrics(p, y) for p, y in zip(prob, labels, strict=True)]
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def eval_rows(model: nn.Module, split: DeviceSplit) -> int:
    """Images per evaluation batch: up to EVAL_BATCH, within the pixel budget. On the CPU a
    CNN's first maps (all its seeds' channels) must fit that budget too: they are channels
    times its input, and past the caches every layer streams them from memory (a 400-image
    batch of 3 stacked seeds' 16-channel 28x28 maps, 60 MB, evaluated at half the speed of
    111-image batches)."""
    budget = EVAL_PIXELS_CUDA if split.images.is_cuda else EVAL_PIXELS
    per_image = max(1, split.images.shape[1])
    if not split.images.is_cuda:
        conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d | StackedConv2d)),
                    None)
        if conv is not None:  # (out, in, k, k) or, stacked, (K, out, in, k, k)
            per_image *= conv.weight.shape[:-3].numel()
    return max(1, min(EVAL_BATCH, budget // per_image))


@torch.no_grad()
def predict(model: nn.Module, loss: Loss, split: DeviceSplit
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return each seed's summed loss (K,) and P(pneumonia) per image (K, N) on `split` (K = 1
    for a plain model)."""
    model.eval()
    stacked = isinstance(model, STACKED)
    seeds = model.seeds if stacked else 1
    total = torch.zeros(seeds, device=split.images.device)
    probs = []
    rows = eval_rows(model, split)
    for start in range(0, len(split), rows):
        images = split.images[start : start + rows]
        labels = split.labels[start : start + rows]
        logits = model(scale(images))
        logits = logits if stacked else logits.unsqueeze(0)
        per_example = loss.per_example(logits.reshape(-1, logits.shape[-1]),
                                       labels.repeat(seeds))
        total += per_example.view(seeds, -1).sum(1)
        probs.append(positive_probability(loss, logits))
    return total, torch.cat(probs, 1)


def evaluate(model: nn.Module, loss: Loss, split: DeviceSplit,
             probs: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Return loss, accuracy (%), AUROC, sensitivity and specificity on `split`; with `probs`,
    append the (K, N) probabilities to it.

    For a stacked model every value is a (K,) tensor, one per seed (all seeds see the same
    batches); for a plain model (`study evaluate`), a 0-d tensor.
    """
    total, prob = predict(model, loss, split)
    if probs is not None:
        probs.append(prob)
    labels = split.labels.expand(len(prob), -1)
    out = {"loss": total / len(split), **seed_classification_metrics(prob, labels)}
    return out if isinstance(model, STACKED) else {k: v[0] for k, v in out.items()}
