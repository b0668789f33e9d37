"""Overlays for files on disk: the one renderer behind `vit explain` and the end of every run
(the quickstart's grid included).

For each image and each chosen method (one, a comma-separated list, or "all"): the saliency
map, drawn over the image at a size where a photo stays recognisable (at least ``DISPLAY_PX``,
the same crop the model saw), in a perceptually uniform colour map at moderate opacity, beside
the plain image in ``DIR/<stem>_<method>.png``; ``DIR/grid.png`` shows the whole set (with
several methods, one image per row and one method per column). Each title says the true label
when the folder names it (``.../<class>/<image>``), the prediction and its probability; a wrong
prediction is written in red with a red frame, and the grid's heading counts the mistakes.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from vit.data.images import UnreadableImageError, load_image
from vit.data.transforms import eval_geometry
from vit.errors import VitError
from vit.explain.overlay import DEFAULT_COLORMAP, overlay
from vit.explain.saliency import DEFAULT_METHOD, METHODS, saliency
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


def true_label(path: str | Path, classes: Sequence[str],
               labels: Mapping[str, str] | None = None) -> str | None:
    """The image's label in ``labels`` (a label file's), else the class its folder names
    (``.../<class>/<image>``), when it is a model class."""
    name = (labels or {}).get(str(path)) or Path(path).parent.name
    return name if name in classes else None


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


def _draw_grid(cells: list[np.ndarray], titles: list[str], colours: list[str],
               methods: list[str], items: list[ExplainedImage], path: Path) -> None:
    several = len(methods) > 1
    heading = ("image | " + ", ".join(methods)) if several else f"{methods[0]}: image | overlay"
    known = [item for item in items if item.wrong is not None]
    if known:
        heading += f"; {sum(i.wrong for i in known)} of {len(known)} predictions wrong (red)"
    plot_image_grid(cells, titles, path, ncols=1 + len(methods) if several else min(3, len(cells)),
                    title=heading, title_colors=colours,
                    cell_size=(3.0, 3.3) if several else (4.6, 2.7))


def _draw_item(item: ExplainedImage, image: np.ndarray, blended: list[np.ndarray],
               methods: list[str], stem: Path, *, topk: int, colormap: str
               ) -> tuple[list[np.ndarray], list[str], list[str | None]]:
    """One image's ``<stem>_<method>.png`` files (sets ``item.output``) and its grid cells,
    titles and title colours."""
    colour = _colour(item)
    outputs = [plot_side_by_side(image, picture, tile_title(item, topk=topk),
                                 Path(f"{stem}_{m}.png"), title_color=colour,
                                 labels=("image", f"{m} ({colormap})"))
               for m, picture in zip(methods, blended, strict=True)]
    item.output = outputs[0]
    if len(methods) > 1:
        return [image, *blended], [tile_title(item), *methods], [colour, *[None] * len(methods)]
    return [_framed_pair(image, blended[0], colour)], [tile_title(item)], [colour]


def explain_files(
    *,
    checkpoint: str | Path,
    paths: Sequence[str | Path],
    output: str | Path,
    method: str = DEFAULT_METHOD,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    alpha: float = 0.5,
    topk: int = 3,
    batch_size: int = 16,
    device: str = "auto",
    grid: str | Path | None = None,
    show_progress: bool = False,
    colormap: str = DEFAULT_COLORMAP,
    labels: Mapping[str, str] | None = None,
) -> list[ExplainedImage]:
    """Write one side-by-side PNG per readable image and method, and the grid (``grid``,
    default DIR/grid.png); unreadable files are skipped. ``method``: see ``parse_methods``.
    ``labels``: path -> true label (a label file's); else the folder names it.

    Each batch is decoded and cropped once and runs the model's forward pass once (the
    predictions in the titles, and the class every class-specific map explains).
    """
    methods = parse_methods(method)
    options = {m: _method_options(m, head_fusion, discard_ratio) for m in methods}
    out_dir = make_output_dir(output)
    clf = Classifier.from_checkpoint(checkpoint, device=device)
    stems = _output_stems(paths)
    results: list[ExplainedImage] = []
    cells, titles, colours = [], [], []
    batches = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    for batch in tqdm(batches, desc=f"explain ({method})",
                      disable=not show_progress or len(batches) < 2):
        good, views, shown, skipped = _read_views(clf, batch)
        results += skipped
        if not views:
            continue
        x = clf.normalise(views).to(clf.device)
        with torch.no_grad():
            logits = clf.model(x).float()
        maps = {m: saliency(clf.model, x, m, target=logits.argmax(dim=1), **options[m]).cpu()
                for m in methods}
        predictions = top_labels(logits.softmax(dim=-1).cpu(), clf.classes, topk)
        for i, (path, image, preds) in enumerate(zip(good, shown, predictions, strict=True)):
            item = ExplainedImage(path, None, preds, true_label=true_label(path, clf.classes, labels))
            blended = [overlay(image, maps[m][i], alpha=alpha, colormap=colormap)
                       for m in methods]
            row = _draw_item(item, image, blended, methods, out_dir / stems[path],
                             topk=topk, colormap=colormap)
            results.append(item)
            for grid_list, values in zip((cells, titles, colours), row, strict=True):
                grid_list += values
    if cells:
        _draw_grid(cells, titles, colours, methods, [r for r in results if not r.error],
                   Path(grid) if grid else out_dir / "grid.png")
    elif paths:
        raise VitError("none of the images could be read; nothing to explain")
    return results
