"""Synthetic chest X-rays: a deterministic stand-in for the homework's data.

Each image is a low-resolution frontal chest film: a bright thorax on a dark background, two
darker lung fields, a bright mediastinum and spine between them, curved rib bands across the
lungs, per-patient variation in pose, size and exposure, and noise. Positives (pneumonia) carry
one to four diffuse opacities of varying size and contrast inside the lungs. The difficulty is
set so that a sensible MLP scores roughly 85-92 % and poor configurations clearly less.
"""

from __future__ import annotations

import numpy as np

_CHUNK = 256  # images rendered at once; bounds the float32 temporaries at 256x256


def _render(rng: np.random.Generator, labels: np.ndarray, size: int) -> np.ndarray:
    """Render one uint8 image per label, shape (len(labels), size, size)."""
    n = len(labels)
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    yy = coords[None, :, None]
    xx = coords[None, None, :]

    def p(low: float, high: float) -> np.ndarray:
        return rng.uniform(low, high, size=(n, 1, 1)).astype(np.float32)

    # Patient pose and build: centre shift, thorax half-widths, exposure.
    cx, cy = p(-0.08, 0.08), p(-0.06, 0.06)
    tw, th = p(0.72, 0.9), p(0.8, 0.98)
    exposure = p(0.8, 1.2)
    thorax = np.exp(-(((xx - cx) / tw) ** 2 + ((yy - cy - 0.05) / th) ** 2) ** 3)
    img = 25.0 + 140.0 * thorax

    # Lung fields: two ellipses either side of the mediastinum.
    lung_w, lung_h, gap = p(0.24, 0.32), p(0.5, 0.62), p(0.2, 0.28)
    lung_depth = p(70.0, 95.0)
    lungs = np.zeros((n, size, size), dtype=np.float32)
    centres = []
    for side in (-1.0, 1.0):
        lx = cx + side * (gap + lung_w)
        ly = cy - 0.02
        d = ((xx - lx) / lung_w) ** 2 + ((yy - ly) / lung_h) ** 2
        lungs = np.maximum(lungs, 1.0 / (1.0 + np.exp(np.minimum((d - 1.0) * 8.0, 60.0))))
        centres.append((lx, ly))
    img -= lung_depth * lungs

    # Ribs: curved bright bands over the lungs, with per-patient spacing and phase.
    spacing, phase = p(7.0, 9.5), p(0.0, 2 * np.pi)
    curve = yy + 0.35 * (xx - cx) ** 2
    ribs = 0.5 + 0.5 * np.sin(curve * spacing * np.pi + phase)
    img += p(10.0, 22.0) * ribs**3 * lungs

    # Mediastinum and spine: a bright vertical strip.
    img += 35.0 * np.exp(-(((xx - cx) / 0.11) ** 2)) * thorax

    # Opacities for positives: diffuse blobs inside the lungs.
    pos = np.flatnonzero(labels == 1)
    for i in pos:
        for _ in range(rng.integers(1, 5)):
            lx, ly = centres[rng.integers(0, 2)]
            ox = lx[i, 0, 0] + rng.uniform(-0.7, 0.7) * lung_w[i, 0, 0]
            oy = ly[i, 0, 0] + rng.uniform(-0.7, 0.7) * lung_h[i, 0, 0]
            sigma = rng.uniform(0.1, 0.25)
            contrast = rng.uniform(30.0, 60.0)
            blob = np.exp(-((xx[0] - ox) ** 2 + (yy[0] - oy) ** 2) / (2 * sigma**2))
            img[i] += contrast * blob * lungs[i]

    img = img * exposure + rng.normal(0.0, 10.0, size=img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def make_synthetic(
    n_per_class: int, size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 (2n, size, size), labels int64 (2n,)), classes interleaved."""
    rng = np.random.default_rng(seed)
    labels = np.tile(np.array([0, 1], dtype=np.int64), n_per_class)
    chunks = [
        _render(rng, labels[start : start + _CHUNK], size)
        for start in range(0, len(labels), _CHUNK)
    ]
    return np.concatenate(chunks), labels
