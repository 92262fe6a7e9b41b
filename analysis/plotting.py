"""The one place the analysis configures matplotlib, and what every `plot_*` function shares.

Every analysis module takes pyplot from here (`from analysis.plotting import plt`), so the
non-interactive Agg backend is chosen once, before pyplot is first used: the report only ever
writes figures to files, runs on headless machines and in forked worker processes, and must
never open a window or load a GUI toolkit. Modules that draw nothing (results, summary,
html_report) do not import this one, so importing them stays free of matplotlib.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # figures are only ever written to files

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402

__all__ = ["Axes", "new_axes", "plt"]


def new_axes(ax: Axes | None, size: tuple[float, float]) -> Axes:
    """Return `ax`, or the Axes of a new figure of `size` (inches) when it is None."""
    if ax is not None:
        return ax
    _, ax = plt.subplots(figsize=size)
    return ax
