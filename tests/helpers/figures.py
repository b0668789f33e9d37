"""The figures a plot function hands to matplotlib, kept for the test to read.

``record_saved_figures(monkeypatch)`` makes every ``Figure.savefig`` append its figure to the
list it returns, and keeps those figures from being cleared after saving (vit.plots frees each
figure once written), so a test checks the data drawn (lines, images, bars, texts) and not only
that a PNG exists.
"""

from __future__ import annotations

import threading

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure


def record_saved_figures(monkeypatch) -> list[Figure]:
    saved: list[Figure] = []
    lock = threading.Lock()
    real_savefig, real_clear = Figure.savefig, Figure.clear

    def savefig(self, *args, **kwargs):
        with lock:
            if not any(figure is self for figure in saved):
                saved.append(self)
        return real_savefig(self, *args, **kwargs)

    def clear(self, *args, **kwargs):
        if any(figure is self for figure in saved):
            return None  # the test reads it after the plot function returned
        return real_clear(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    monkeypatch.setattr(Figure, "clear", clear)
    return saved


def plot_axes(figure: Figure) -> list[Axes]:
    """The figure's axes without its colour bars."""
    return [axes for axes in figure.axes if axes.get_label() != "<colorbar>"]


def lines_by_label(axes: Axes) -> dict[str, tuple[list[float], list[float]]]:
    """label -> (x, y) of each labelled line (matplotlib's own ``_child`` lines left out)."""
    return {line.get_label(): (np.asarray(line.get_xdata(), float).tolist(),
                               np.asarray(line.get_ydata(), float).tolist())
            for line in axes.get_lines() if not line.get_label().startswith("_")}


def texts(container) -> list[str]:
    """The free texts of an axes or a figure (titles and labels are not among them)."""
    return [text.get_text() for text in container.texts]


def bars(axes: Axes, label: str) -> list[tuple[float, float, float, float]]:
    """(x, bottom, width, height) of each bar of the bar container labelled ``label``."""
    for container in axes.containers:
        if container.get_label() == label:
            return [(float(p.get_x()), float(p.get_y()), float(p.get_width()),
                     float(p.get_height())) for p in container.patches]
    raise AssertionError(f"no bars labelled {label!r}: "
                         f"{[c.get_label() for c in axes.containers]}")
