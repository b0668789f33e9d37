"""Overlays for files on disk: the one renderer behind `vit explain` and the end of every run
(the quickstart's grid included).

For each image: the saliency map of the chosen method, drawn over the image at a size where a
photo stays recognisable (at least ``DISPLAY_PX``, the same crop the model saw), with a
perceptually uniform colour map at moderate opacity, beside the plain image;
``DIR/<stem>_<method>.png`` holds the pair under its title, ``DIR/grid.png`` all pairs. Each
title says the true label when the folder names it (``.../<class>/<image>``), the prediction
and its probability; a wrong prediction is written in red with a red frame, and the grid's
heading counts the mistakes.
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
from vit.data.transforms import eval_geometry
from vit.errors import VitError
from vit.explain.overlay import DEFAULT_COLORMAP, overlay
from vit.explain.rollout import METHODS, explain
from vit.inference.classifier import Classifier, top_labels
from vit.io import make_output_dir
from vit.plots import plot_image_grid, plot_side_by_side

logger = logging.getLogger(__name__)

DISPLAY_PX = 160  # the smallest side a picture is drawn at (small inputs are enlarged)
WRONG, RIGHT, UNKNOWN = "crimson", "forestgreen", "dimgray"  # frame and title colours
FRAME_PX = 4


@dataclass
class ExplainedImage:
    path: Path
    output: Path | None
    predictions: list[tuple[str, float]]
    error: str | None = None
    true_label: str | None = None

    @property
    def wrong(self) -> bool | None:
        """True / False when the true label is known, else None."""
        if self.true_label is None or not self.predictions:
            return None
        return self.predictions[0][0] != self.true_label


def true_label(path: str | Path, classes: Sequence[str]) -> str | None:
    """The class an image's folder names (``.../<class>/<image>``), when it is a model class."""
    name = Path(path).parent.name
    return name if name in classes else None


def _title(predictions: list[tuple[str, float]]) -> str:
    return ", ".join(f"{label} {p:.0%}" for label, p in predictions)


def tile_title(item: ExplainedImage, *, topk: int | None = None) -> str:
    """``true circle | predicted square 59%  WRONG`` (top-k predictions with ``topk``)."""
    predicted = _title(item.predictions[:topk] if topk else item.predictions[:1])
    if item.true_label is None:
        return f"{item.path.stem}: predicted {predicted}"
    verdict = "  WRONG" if item.wrong else ""
    return f"true {item.true_label} | predicted {predicted}{verdict}"


def _colour(item: ExplainedImage) -> str:
    return UNKNOWN if item.wrong is None else WRONG if item.wrong else RIGHT


def _framed_pair(image: np.ndarray, blended: np.ndarray, colour: str) -> np.ndarray:
    """The image and its overlay side by side, in a frame of ``colour`` (red: a mistake)."""
    import matplotlib.colors

    rgb = np.array(matplotlib.colors.to_rgb(colour)) * 255
    gap = np.full((image.shape[0], FRAME_PX, 3), 255, dtype=np.uint8)
    pair = np.concatenate([image, gap, blended], axis=1)  # (H, 2W + gap, 3)
    framed = np.empty((pair.shape[0] + 2 * FRAME_PX, pair.shape[1] + 2 * FRAME_PX, 3), np.uint8)
    framed[:] = rgb.astype(np.uint8)
    framed[FRAME_PX:-FRAME_PX, FRAME_PX:-FRAME_PX] = pair
    return framed


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
                ) -> tuple[list[Path], list[np.ndarray], list[np.ndarray], list[ExplainedImage]]:
    """Decode each image once: (readable paths, the views the model sees, the same crops at
    display size, skipped files)."""
    display = eval_geometry(max(DISPLAY_PX, clf.img_size), clf.preprocess["crop_pct"])
    good, views, shown, skipped = [], [], [], []
    for p in paths:
        try:
            rgb = np.asarray(load_image(p))
        except UnreadableImageError as e:
            logger.warning("skipping %s: %s", p, e.reason)
            skipped.append(ExplainedImage(Path(p), None, [], error=e.reason))
            continue
        views.extend(clf.view(rgb))
        shown.append(display(image=rgb)["image"])
        good.append(Path(p))
    return good, views, shown, skipped


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
    colormap: str = DEFAULT_COLORMAP,
) -> list[ExplainedImage]:
    """Write one side-by-side PNG per readable image and a grid; unreadable files are skipped.

    Each batch is decoded once, and one forward pass gives both the saliency maps and the
    predictions in the titles.
    """
    options = _method_options(method, head_fusion, discard_ratio)
    out_dir = make_output_dir(output)
    clf = Classifier.from_checkpoint(checkpoint, device=device)
    names = _output_names(paths, method)
    results: list[ExplainedImage] = []
    tiles = []
    batches = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    for batch in tqdm(batches, desc=f"explain ({method})",
                      disable=not show_progress or len(batches) < 2):
        good, views, shown, skipped = _read_views(clf, batch)
        results += skipped
        if not views:
            continue
        saliency, logits = explain(clf.model, clf.normalise(views).to(clf.device), method=method,
                                   return_logits=True, **options)
        predictions = top_labels(logits.float().softmax(dim=-1).cpu(), clf.classes, topk)
        for path, image, sal, preds in zip(good, shown, saliency.cpu(), predictions, strict=True):
            item = ExplainedImage(path, None, preds, true_label=true_label(path, clf.classes))
            blended = overlay(image, sal, alpha=alpha, colormap=colormap)
            item.output = plot_side_by_side(image, blended, tile_title(item, topk=topk),
                                            out_dir / names[path], title_color=_colour(item),
                                            labels=("image", f"{method} ({colormap})"))
            results.append(item)
            tiles.append((_framed_pair(image, blended, _colour(item)), item))
    if tiles:
        _write_grid(tiles, out_dir / "grid.png", method=method)
    elif paths:
        raise VitError("none of the images could be read; nothing to explain")
    return results


def _write_grid(tiles: list[tuple[np.ndarray, ExplainedImage]], path: Path, *, method: str
                ) -> Path:
    items = [item for _, item in tiles]
    known = [item for item in items if item.wrong is not None]
    heading = f"{method}: image | overlay"
    if known:
        wrong = sum(item.wrong for item in known)
        heading += f"; {wrong} of {len(known)} predictions wrong (red frame)"
    return plot_image_grid([tile for tile, _ in tiles], [tile_title(item) for item in items],
                           path, title=heading, title_colors=[_colour(i) for i in items],
                           cell_size=(4.6, 2.7), ncols=min(3, len(items)))
