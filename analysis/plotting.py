"""What every figure of the analysis shares: the Axes a `plot_*` function draws on."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # figures are only ever written to files

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402


def new_axes(ax: Axes | None, size: tuple[float, float]) -> Axes:
    """Return `ax`, or the Axes of a new figure of `size` (inches) when it is None."""
    if ax is not None:
        return ax
    _, ax = plt.subplots(figsize=size)
    return ax
