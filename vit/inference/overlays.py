"""Overlays for files on disk: the work behind `vit explain` and the quickstart's last step.

For each image and each chosen method (one, a comma-separated list, or "all"): the saliency
map, the overlay on the image the model saw, and ``DIR/<stem>_<method>.png`` with the input
beside its overlay, titled with the top-k predictions. ``DIR/grid.png`` shows the whole set; with
several methods, one image per row and one method per column.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from vit.data.images import UnreadableImageError, load_image
from vit.errors import VitError
from vit.explain.overlay import overlay
from vit.explain.saliency import METHODS, saliency
from vit.inference.classifier import Classifier, top_labels
from vit.io import make_output_dir
from vit.plots import plot_image_grid, plot_side_by_side

logger = logging.getLogger(__name__)


@dataclass
class ExplainedImage:
    path: Path
    output: Path | None
    predictions: list[tuple[str, float]]
    error: str | None = None


def _title(predictions: list[tuple[str, float]]) -> str:
    return ", ".join(f"{label} {p:.0%}" for label, p in predictions)


def parse_methods(method: str) -> list[str]:
    """``"legrad"``, ``"rollout,legrad"`` or ``"all"`` -> a list of saliency method names."""
    names = list(METHODS) if method == "all" else [m.strip() for m in method.split(",") if m.strip()]
    if not names or any(m not in METHODS for m in names):
        raise VitError(f"--method must be one of {', '.join(METHODS)}, a comma-separated list of "
                       f"them, or all; got {method!r}")
    return names


def _output_stems(paths: Sequence[str | Path]) -> dict[Path, str]:
    """``<stem>`` per input (``<stem>_<method>.png``); when two inputs share a stem (a/1.png,
    b/1.png) the folder name is put in front, so no overlay overwrites another."""
    stems = Counter(Path(p).stem for p in paths)
    return {Path(p): Path(p).stem if stems[Path(p).stem] == 1
            else f"{Path(p).parent.name}_{Path(p).stem}" for p in paths}


def _method_options(method: str, head_fusion: str, discard_ratio: float) -> dict[str, Any]:
    if method == "rollout":
        return {"head_fusion": head_fusion, "discard_ratio": discard_ratio}
    if method == "attention":
        return {"head_fusion": head_fusion}
    return {}


def _read_views(clf: Classifier, paths: Sequence[str | Path]
                ) -> tuple[list[Path], list[np.ndarray], list[ExplainedImage]]:
    """Decode and crop each image once: (readable paths, their views, skipped files)."""
    good, views, skipped = [], [], []
    for p in paths:
        try:
            views.extend(clf.view(load_image(p)))
            good.append(Path(p))
        except UnreadableImageError as e:
            logger.warning("skipping %s: %s", p, e.reason)
            skipped.append(ExplainedImage(Path(p), None, [], error=e.reason))
    return good, views, skipped


def _draw_grid(cells: list[np.ndarray], titles: list[str], methods: list[str], path: Path) -> None:
    several = len(methods) > 1
    plot_image_grid(cells, titles, path, ncols=1 + len(methods) if several else None,
                    title="one image per row, one method per column" if several
                    else f"{methods[0]} overlays")


def explain_files(
    *,
    checkpoint: str | Path,
    paths: Sequence[str | Path],
    output: str | Path,
    method: str = "rollout",
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    alpha: float = 0.5,
    topk: int = 3,
    batch_size: int = 16,
    device: str = "auto",
    grid: str | Path | None = None,
    show_progress: bool = False,
) -> list[ExplainedImage]:
    """Write one side-by-side PNG per readable image and method, and the grid (``grid``,
    default DIR/grid.png); unreadable files are skipped. ``method``: see ``parse_methods``.

    Each batch is decoded and cropped once and runs the model's forward pass once (the
    predictions in the titles, and the class every class-specific map explains).
    """
    methods = parse_methods(method)
    options = {m: _method_options(m, head_fusion, discard_ratio) for m in methods}
    out_dir = make_output_dir(output)
    clf = Classifier.from_checkpoint(checkpoint, device=device)
    stems = _output_stems(paths)
    results: list[ExplainedImage] = []
    cells, titles = [], []
    batches = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    for batch in tqdm(batches, desc=f"explain ({method})",
                      disable=not show_progress or len(batches) < 2):
        good, views, skipped = _read_views(clf, batch)
        results += skipped
        if not views:
            continue
        x = clf.normalise(views).to(clf.device)
        with torch.no_grad():
            logits = clf.model(x).float()
        maps = {m: saliency(clf.model, x, m, target=logits.argmax(dim=1), **options[m]).cpu()
                for m in methods}
        predictions = top_labels(logits.softmax(dim=-1).cpu(), clf.classes, topk)
        for i, (path, view, preds) in enumerate(zip(good, views, predictions, strict=True)):
            blended = [overlay(view, maps[m][i], alpha=alpha) for m in methods]
            outputs = [plot_side_by_side(view, picture, _title(preds),
                                         out_dir / f"{stems[path]}_{m}.png", labels=("input", m))
                       for m, picture in zip(methods, blended, strict=True)]
            results.append(ExplainedImage(path, outputs[0], preds))
            caption = f"{path.stem}: {_title(preds[:1])}"
            cells += [view, *blended] if len(methods) > 1 else blended
            titles += [caption, *methods] if len(methods) > 1 else [caption]
    if cells:
        _draw_grid(cells, titles, methods, Path(grid) if grid else out_dir / "grid.png")
    elif paths:
        raise VitError("none of the images could be read; nothing to explain")
    return results
