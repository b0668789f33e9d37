"""Overlays for files on disk: the work behind `vit explain` and the quickstart's last step.

For each image: the saliency map of the chosen method, the overlay on the image the model saw,
and ``DIR/<stem>_<method>.png`` with the input beside its overlay, titled with the top-k
predictions; ``DIR/grid.png`` shows the whole set.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from vit.data.images import UnreadableImageError, load_image
from vit.errors import VitError
from vit.explain.overlay import overlay
from vit.explain.rollout import METHODS, explain
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


def _output_names(paths: Sequence[str | Path], method: str) -> dict[Path, str]:
    """``<stem>_<method>.png`` per input; when two inputs share a stem (a/1.png, b/1.png) the
    folder name is put in front, so no overlay overwrites another."""
    stems = Counter(Path(p).stem for p in paths)
    return {Path(p): (Path(p).stem if stems[Path(p).stem] == 1
                      else f"{Path(p).parent.name}_{Path(p).stem}") + f"_{method}.png"
            for p in paths}


def _method_options(method: str, head_fusion: str, discard_ratio: float) -> dict[str, Any]:
    if method not in METHODS:
        raise VitError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
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
    show_progress: bool = False,
) -> list[ExplainedImage]:
    """Write one side-by-side PNG per readable image and a grid; unreadable files are skipped.

    Each batch is decoded and cropped once, and one forward pass gives both the saliency maps
    and the predictions in the titles.
    """
    options = _method_options(method, head_fusion, discard_ratio)
    out_dir = make_output_dir(output)
    clf = Classifier.from_checkpoint(checkpoint, device=device)
    names = _output_names(paths, method)
    results: list[ExplainedImage] = []
    overlays, titles = [], []
    batches = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    for batch in tqdm(batches, desc=f"explain ({method})",
                      disable=not show_progress or len(batches) < 2):
        good, views, skipped = _read_views(clf, batch)
        results += skipped
        if not views:
            continue
        saliency, logits = explain(clf.model, clf.normalise(views).to(clf.device), method=method,
                                   return_logits=True, **options)
        predictions = top_labels(logits.float().softmax(dim=-1).cpu(), clf.classes, topk)
        for path, view, sal, preds in zip(good, views, saliency.cpu(), predictions, strict=True):
            blended = overlay(view, sal, alpha=alpha)
            target = plot_side_by_side(view, blended, _title(preds), out_dir / names[path])
            results.append(ExplainedImage(path, target, preds))
            overlays.append(blended)
            titles.append(f"{path.stem}: {_title(preds[:1])}")
    if overlays:
        plot_image_grid(overlays, titles, out_dir / "grid.png", title=f"{method} overlays")
    elif paths:
        raise VitError("none of the images could be read; nothing to explain")
    return results
