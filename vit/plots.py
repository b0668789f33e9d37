"""PNG figures for training, evaluation, explanation and benchmarks.

Every function draws on its own `matplotlib.figure.Figure` with the Agg canvas (no pyplot
state), so it works headless and from threads, writes the PNG atomically and returns the path.
Figures have a fixed size in inches at `DPI`, so the pixel size of each PNG is predictable.
"""

from __future__ import annotations

import logging
import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from vit.io import atomic_write

logger = logging.getLogger(__name__)

DPI = 120
CURVES_SIZE = (15.0, 4.5)
RELIABILITY_SIZE = (6.0, 7.0)
SIDE_BY_SIDE_SIZE = (9.0, 4.8)
ACCURACY_VS_TIME_SIZE = (8.0, 5.0)
GRID_CELL_SIZE = (3.0, 3.3)
MAX_ANNOTATED_CLASSES = 20
MAX_LABELLED_CLASSES = 60
_TITLE_WIDTH = 30

PathLike = str | os.PathLike[str]
# What the colours of a heat map mean: (matplotlib colour map, low end, high end, caption),
# drawn as a colour bar under the overlays (vit.figures.overlay_files.colour_key).
ColourKey = tuple[str, str, str, str]
KEY_HEIGHT = 0.9  # inches a grid gains for its colour bar


def new_figure(size: tuple[float, float]) -> Figure:
    """An empty figure of ``size`` inches (constrained layout, ``DPI``), drawn off screen; write
    it with ``save_figure``."""
    figure = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


_JPEG_SUFFIXES = (".jpg", ".jpeg")


def save_figure(figure: Figure, path: PathLike) -> Path:
    """Write `figure` to `path` atomically (JPEG at quality 90 when the name ends in .jpg or
    .jpeg, PNG otherwise), free it, and return the path."""
    jpeg = Path(path).suffix.lower() in _JPEG_SUFFIXES
    options = dict(format="jpeg", pil_kwargs={"quality": 90}) if jpeg else dict(format="png")
    try:
        path = atomic_write(path, lambda f: figure.savefig(f, dpi=DPI, **options))
    finally:
        figure.clear()
    logger.debug("wrote %s", path)
    return path


def _series(records: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    """Float values of `key` across records, NaN where missing or None."""
    values = [record.get(key) for record in records]
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def _plot_series(axes: Axes, x: np.ndarray, y: np.ndarray, label: str, **style: Any) -> bool:
    """Plot y against x with markers, skipping NaNs; False when there is nothing to plot."""
    keep = np.isfinite(y)
    if not keep.any():
        return False
    axes.plot(x[keep], y[keep], marker="o", markersize=3, label=label, **style)
    return True


def _finish_axes(axes: Axes, title: str, ylabel: str, has_data: bool, legend: bool = True) -> None:
    axes.set_title(title)
    axes.set_xlabel("epoch")
    axes.set_ylabel(ylabel)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    if has_data and legend:
        axes.legend(loc="best", fontsize=9)
    if not has_data:
        axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)


def plot_training_curves(records: Sequence[Mapping[str, Any]], path: PathLike) -> Path:
    """Loss, accuracy (best top-1 marked) and learning rate per epoch from metrics.jsonl rows.

    Missing keys and None values are skipped, so partial runs and runs without validation work.
    """
    rows = sorted(records, key=lambda r: float(r.get("epoch") or 0))
    epochs = _series(rows, "epoch")
    if not np.isfinite(epochs).all():
        epochs = np.arange(1, len(rows) + 1, dtype=float)
    figure = new_figure(CURVES_SIZE)
    loss_axes, acc_axes, lr_axes = figure.subplots(1, 3)

    plotted = [
        _plot_series(loss_axes, epochs, _series(rows, "train_loss"), "train"),
        _plot_series(loss_axes, epochs, _series(rows, "val_loss"), "val"),
    ]
    _finish_axes(loss_axes, "Loss", "loss", any(plotted))

    top1 = _series(rows, "val_top1")
    plotted = [
        _plot_series(acc_axes, epochs, top1, "val top-1"),
        _plot_series(acc_axes, epochs, _series(rows, "val_top5"), "val top-5"),
    ]
    if np.isfinite(top1).any():
        best = int(np.nanargmax(top1))
        acc_axes.scatter(
            [epochs[best]],
            [top1[best]],
            s=90,
            facecolors="none",
            edgecolors="crimson",
            linewidths=1.5,
            zorder=3,
        )
        acc_axes.text(
            0.98,
            0.04,
            f"best top-1 {top1[best]:.4g}% @ epoch {epochs[best]:g}",
            transform=acc_axes.transAxes,
            ha="right",
            va="bottom",
            fontsize=9,
            color="crimson",
            bbox={"facecolor": "white", "edgecolor": "crimson"},
        )
    _finish_axes(acc_axes, "Validation accuracy", "accuracy (%)", any(plotted))
    acc_axes.yaxis.set_major_formatter(PercentFormatter(xmax=100, decimals=0))

    has_lr = _plot_series(lr_axes, epochs, _series(rows, "lr"), "lr", color="tab:green")
    lr_axes.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    _finish_axes(lr_axes, "Learning rate", "learning rate", has_lr, legend=False)
    if len(set(epochs.tolist())) == 1:  # a single epoch: centre it instead of fractional ticks
        for axes in (loss_axes, acc_axes, lr_axes):
            axes.set_xlim(epochs[0] - 1, epochs[0] + 1)
    return save_figure(figure, path)


def _row_normalise(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its sum; rows without images stay zero."""
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)


def _confusion_size(num_classes: int) -> tuple[float, float]:
    """Figure size in inches: grows with the class count, plus room for the colour bar."""
    side = min(max(4.0 + 0.45 * num_classes, 6.0), 16.0)
    return side + 1.5, side


def plot_confusion_matrix(
    matrix: Any, classes: Sequence[str], path: PathLike, normalize: bool = True
) -> Path:
    """Confusion matrix (rows = true class), row-normalised by default.

    Cells are annotated up to 20 classes; tick labels are shown up to 60 classes.
    """
    counts = np.asarray(matrix, dtype=float)
    num_classes = len(classes)
    if counts.shape != (num_classes, num_classes):
        raise ValueError(f"matrix of shape {counts.shape} does not match {num_classes} classes")
    values = _row_normalise(counts) if normalize else counts
    figure = new_figure(_confusion_size(num_classes))
    axes = figure.subplots()
    vmax = 1.0 if normalize else max(float(values.max()), 1.0)
    image = axes.imshow(values, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    figure.colorbar(
        image, ax=axes, shrink=0.8, label="fraction of true class" if normalize else "images"
    )
    axes.set_title("Confusion matrix" + (" (row-normalised)" if normalize else ""))
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    if num_classes <= MAX_LABELLED_CLASSES:
        fontsize = 10 if num_classes <= 20 else 7
        axes.set_xticks(
            range(num_classes),
            labels=list(classes),
            rotation=45,
            ha="right",
            rotation_mode="anchor",
            fontsize=fontsize,
        )
        axes.set_yticks(range(num_classes), labels=list(classes), fontsize=fontsize)
    else:
        axes.set_xticks([])
        axes.set_yticks([])
    if num_classes <= MAX_ANNOTATED_CLASSES:
        for row in range(num_classes):
            for col in range(num_classes):
                value = values[row, col]
                text = f"{value:.2f}" if normalize else f"{int(value)}"
                color = "white" if value > 0.5 * vmax else "black"
                axes.text(col, row, text, ha="center", va="center", color=color, fontsize=8)
    return save_figure(figure, path)


def plot_reliability_diagram(
    bins: Mapping[str, Sequence[float]], ece: float, path: PathLike
) -> Path:
    """Accuracy per confidence bin against the diagonal, the gap shaded, counts below.

    `bins` is `vit.inference.metrics.reliability_bins(...)`; empty bins are left out.
    """
    accuracy = np.asarray(bins["bin_accuracy"], dtype=float)
    confidence = np.asarray(bins["bin_confidence"], dtype=float)
    count = np.asarray(bins["bin_count"], dtype=float)
    edges = np.asarray(bins.get("bin_edges", np.linspace(0, 1, len(count) + 1)), dtype=float)
    lefts, widths = edges[:-1], np.diff(edges)
    used = count > 0

    figure = new_figure(RELIABILITY_SIZE)
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(
        lefts[used],
        accuracy[used],
        width=widths[used],
        align="edge",
        color="tab:blue",
        edgecolor="black",
        linewidth=0.6,
        label="accuracy",
    )
    gap_low = np.minimum(accuracy, confidence)[used]
    top.bar(
        lefts[used],
        np.abs(confidence - accuracy)[used],
        bottom=gap_low,
        width=widths[used],
        align="edge",
        color="tab:red",
        alpha=0.3,
        edgecolor="tab:red",
        hatch="//",
        linewidth=0.6,
        label="gap to confidence",
    )
    top.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"Reliability diagram (ECE = {ece:.3f})")
    top.legend(loc="upper left", fontsize=9)
    top.grid(alpha=0.3)

    bottom.bar(
        lefts, count, width=widths, align="edge", color="gray", edgecolor="black", linewidth=0.6
    )
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("images")
    bottom.grid(alpha=0.3)
    return save_figure(figure, path)


def _grid_shape(num_images: int, ncols: int | None) -> tuple[int, int]:
    """(rows, cols) for a grid: `ncols` if given, else about square."""
    cols = ncols if ncols else math.ceil(math.sqrt(num_images))
    cols = max(1, min(cols, num_images))
    return math.ceil(num_images / cols), cols


def _wrap(title: str, width: int = _TITLE_WIDTH, max_lines: int = 3) -> str:
    """Wrap a long title (e.g. a file name) onto a few lines."""
    return "\n".join(textwrap.wrap(title, width, max_lines=max_lines, placeholder="…")) or title


def plot_image_grid(
    images: Sequence[np.ndarray],
    titles: Sequence[str],
    path: PathLike,
    ncols: int | None = None,
    title: str | None = None,
    title_colors: Sequence[str | None] | None = None,
    cell_size: tuple[float, float] = GRID_CELL_SIZE,
    colour_key: ColourKey | None = None,
) -> Path:
    """A grid of HxWx3 uint8 images, each with its (wrapped) title.

    `title_colors` optionally colours each title (e.g. "red" for a wrong prediction);
    `cell_size` is (width, height) in inches per image; `colour_key` adds a colour bar that
    says what a heat map's colours mean (the figure is KEY_HEIGHT taller).
    An empty list gives a small figure saying there is nothing to show.
    """
    if len(titles) != len(images):
        raise ValueError(f"{len(images)} images but {len(titles)} titles")
    if title_colors is not None and len(title_colors) != len(images):
        raise ValueError(f"{len(images)} images but {len(title_colors)} title colours")
    if len(images) == 0:
        figure = new_figure(GRID_CELL_SIZE)
        figure.text(0.5, 0.5, "nothing to show", ha="center", va="center")
        if title:
            figure.suptitle(title)
        return save_figure(figure, path)

    rows, cols = _grid_shape(len(images), ncols)
    cell_w, cell_h = cell_size
    extra = (0.5 if title else 0.0) + (KEY_HEIGHT if colour_key else 0.0)
    figure = new_figure((cell_w * cols, cell_h * rows + extra))
    axes_grid = figure.subplots(rows, cols, squeeze=False).ravel()
    colors = title_colors or [None] * len(images)
    for axes, image, caption, color in zip(axes_grid, images, titles, colors, strict=False):
        axes.imshow(np.asarray(image), cmap="gray" if np.ndim(image) == 2 else None)
        axes.set_title(_wrap(caption), fontsize=9, color=color or "black")
    for axes in axes_grid:
        axes.axis("off")
    if title:
        figure.suptitle(title, fontsize=13)
    if colour_key:
        _add_colour_key(figure, list(axes_grid), colour_key, shrink=min(0.9, 2.4 / cols))
    return save_figure(figure, path)


def _add_colour_key(figure: Figure, axes: list[Axes], key: ColourKey, *, shrink: float) -> None:
    """A horizontal colour bar under ``axes``: the colour map from its low to its high end,
    named at both ends, with the caption under it."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    colormap, low, high, caption = key
    bar = figure.colorbar(ScalarMappable(Normalize(0.0, 1.0), colormap), ax=axes,
                          location="bottom", shrink=shrink, aspect=30, ticks=[0.0, 1.0])
    bar.ax.set_xticklabels([low, high], fontsize=8)
    bar.set_label(_wrap(caption, width=80, max_lines=3), fontsize=8)


def plot_side_by_side(
    image: np.ndarray,
    overlay: np.ndarray,
    title: str,
    path: PathLike,
    labels: tuple[str, str] = ("input", "attention rollout"),
    title_color: str | None = None,
    colour_key: ColourKey | None = None,
) -> Path:
    """The input image beside its overlay (e.g. attention rollout), under one title (in
    ``title_color``, e.g. red for a wrong prediction); ``colour_key``: a colour bar under the
    overlay that says what its colours mean."""
    figure = new_figure(SIDE_BY_SIDE_SIZE)
    panels = figure.subplots(1, 2)
    for axes, picture, label in zip(panels, (image, overlay), labels, strict=True):
        axes.imshow(np.asarray(picture), cmap="gray" if np.ndim(picture) == 2 else None)
        axes.set_title(label, fontsize=10)
        axes.axis("off")
    if colour_key:
        _add_colour_key(figure, [panels[1]], colour_key, shrink=0.95)
    figure.suptitle(_wrap(title, width=70, max_lines=2), fontsize=12,
                    color=title_color or "black")
    return save_figure(figure, path)


def _time_unit(max_seconds: float) -> tuple[str, float]:
    """A readable unit for a time axis that reaches `max_seconds`: (name, seconds per unit)."""
    if max_seconds >= 2 * 3600:
        return "h", 3600.0
    if max_seconds >= 2 * 60:
        return "min", 60.0
    return "s", 1.0


def plot_accuracy_vs_time(
    series: Mapping[str, Sequence[tuple[float, float]]], path: PathLike, *,
    title: str = "Accuracy vs. training time", budgets_s: Sequence[float] = (),
) -> Path:
    """Accuracy (percent) against wall-clock seconds, one line per named run (e.g. per training
    recipe, from the ``elapsed_s`` and ``val_top1`` of its metrics.jsonl); a dotted vertical
    line at each of ``budgets_s``."""
    points = {name: sorted(values) for name, values in series.items() if values}
    max_seconds = max([*budgets_s, *(t for values in points.values() for t, _ in values)],
                      default=0.0)
    unit, scale = _time_unit(max_seconds)
    figure = new_figure(ACCURACY_VS_TIME_SIZE)
    axes = figure.subplots()
    for name, values in points.items():
        seconds, accuracy = (np.array(column, dtype=float) for column in zip(*values, strict=True))
        axes.plot(
            seconds / scale,
            accuracy,
            marker="o",
            markersize=3,
            label=f"{name} (best {np.nanmax(accuracy):.4g})",
        )
    for budget in budgets_s:
        axes.axvline(budget / scale, color="grey", linestyle=":", linewidth=1)
    axes.set_title(title, fontsize=10)
    axes.set_xlabel(f"wall-clock time ({unit}), set-up and evaluation included")
    axes.set_ylabel("accuracy (%)")
    axes.grid(alpha=0.3)
    if points:
        axes.legend(loc="lower right", fontsize=9)
    else:
        axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
    return save_figure(figure, path)
