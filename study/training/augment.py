"""Random augmentation of training batches on the training device, drawn per seed.

Each epoch, every seed draws one random shift, rotation, zoom and (where asked) left-right
flip per training image from its own generator (`Augmenter.draw`, after the epoch's batch
order), into a static device buffer; each step gathers its batch's draws by example index and
warps the batch with one `affine_grid` + `grid_sample`. So a seed's augmentation does not
depend on the seeds stacked beside it, a step syncs nothing with the host, and a CUDA graph
that captured the step reads each epoch's new draws from the same memory. Validation and test
images are never augmented (evaluation does not call it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Level:
    """How far one augmentation level warps an image (each drawn uniformly in +-)."""

    shift: float  # translation, as a fraction of the image side
    degrees: float  # rotation
    zoom: float  # scale change, as a fraction (a random crop-and-resize when zooming in)


# light: the small shifts and turns of patient positioning; strong: about twice that.
LEVELS = {"light": Level(shift=0.06, degrees=5.0, zoom=0.0),
          "strong": Level(shift=0.12, degrees=12.0, zoom=0.10)}
DRAWS = 5  # per image: shift x, shift y, rotation, zoom, flip


class Augmenter:
    """`level`'s random warps of `seeds` x `n` training images, drawn per epoch per seed."""

    def __init__(self, level: str, hflip: bool, seeds: int, n: int,
                 device: torch.device) -> None:
        self.level = LEVELS[level]
        self.hflip = hflip
        # One row of affine parameters per seed and example: theta (2, 3), flattened.
        self.theta = torch.zeros(seeds, n, 6, device=device)
        self.theta[..., 0] = self.theta[..., 4] = 1.0  # the identity until the first draw

    def draw(self, generators: list[torch.Generator]) -> None:
        """Draw this epoch's warps, seed k's from `generators[k]`, into the device buffer."""
        n = self.theta.shape[1]
        u = torch.stack([torch.rand(n, DRAWS, generator=g) for g in generators]) * 2 - 1
        level = self.level
        tx, ty = u[..., 0] * 2 * level.shift, u[..., 1] * 2 * level.shift  # grid spans [-1, 1]
        angle = u[..., 2] * math.radians(level.degrees)
        scale = 1.0 + u[..., 3] * level.zoom
        flip = torch.where(u[..., 4] < 0, -1.0, 1.0) if self.hflip else torch.ones_like(tx)
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        theta = torch.stack([cos * flip, -sin, tx, sin * flip, cos, ty], dim=-1)
        self.theta.copy_(theta, non_blocking=True)

    def __call__(self, images: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Warp (K, B, H*W) float images, seed k's row b by its draw for example idx[k, b]."""
        seeds, batch, pixels = images.shape
        side = math.isqrt(pixels)
        theta = self.theta.gather(1, idx.unsqueeze(-1).expand(-1, -1, 6))
        theta = theta.reshape(seeds * batch, 2, 3)
        size = (seeds * batch, 1, side, side)
        grid = F.affine_grid(theta, list(size), align_corners=False)
        warped = F.grid_sample(images.reshape(size), grid, mode="bilinear",
                               padding_mode="zeros", align_corners=False)
        return warped.reshape(seeds, batch, pixels)
