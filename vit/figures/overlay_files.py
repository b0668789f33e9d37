"""Overlays for files on disk: the one renderer behind `vit explain` and the end of every run
(the quickstart's grid included).

For each image and each chosen method (one, a comma-separated list, or "all"): the saliency
map, drawn over the image at a size where a photo stays recognisable (at least ``DISPLAY_PX``,
the same crop the model saw), in a perceptually uniform colour map at moderate opacity, beside
the plain image in ``DIR/<stem>_<method>.png``, with a colour bar that says what the colours
mean (``colour_key``). Grid pages show the whole set, mistakes first (with several methods,
one image per row and one method per column; ``vit.figures.overlay_pages``), and
``DIR/index.html`` links the pages and lists every image. Each title says the true label when
the folder names it (``.../<class>/<image>``), the prediction and its probability; a wrong
prediction is written in red with a red frame, and each page's heading counts the mistakes.
Where a ``boxes.json`` gives each image's object (the synthetic shapes), each image also gets
the share of its map's relevance that lies on the object.
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
from vit.data.synthetic import BOXES_FILE, Box, load_boxes
from vit.data.transforms import eval_geometry
from vit.errors import VitError
from vit.explain.object_boxes import patch_mask
from vit.explain.overlay import DEFAULT_COLORMAP, overlay
from vit.explain.saliency import DEFAULT_METHOD, METHODS, saliency, zero_head_warning
from vit.figures.overlay_pages import (
    IMAGES_PER_PAGE,
    ROWS_PER_PAGE,
    Page,
    TileStore,
    mistakes_first,
    write_index,
    write_pages,
)
from vit.inference.classifier import Classifier, top_labels
from vit.io import make_output_dir
from vit.plots import ColourKey, plot_image_grid, plot_side_by_side

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
    on_object: float | None = None  # share of relevance on the object's box (share_method)

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
    if item.true_label is None:  # (no class folder, so no boxes.json of ours either)
        return f"{item.path.stem}: predicted {predicted}"
    verdict = "  WRONG" if item.wrong else ""
    on_object = "" if item.on_object is None else f" | {item.on_object:.0%} on the object"
    return f"true {item.true_label} | predicted {predicted}{verdict}{on_object}"


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


def colour_key(methods: Sequence[str], colormap: str) -> ColourKey:
    """What the overlay colours mean, for the colour bar under every overlay and page. Each map
    is scaled to its own range; a signed map (AttnLRP) shows only its positive part."""
    signed = "attnlrp" in methods
    low = "low (AttnLRP: zero or against)" if signed else "low"
    caption = (f"{colormap}: bright = the image's strongest relevance for the predicted class; "
               "dark = the weakest" + (", and for AttnLRP also zero and negative relevance "
                                       "(evidence against the class)" if signed else "")
               + ". Each map is scaled to its own maximum.")
    return colormap, low, "high: for the class", caption


def _draw_page(tiles: list, path: Path, *, methods: list[str], key: ColourKey,
               page_of: str) -> None:
    """One grid page of ``tiles`` (each image's cells, titles and colours)."""
    cells = [c for cell_list, _, _ in tiles for c in cell_list]
    titles = [t for _, title_list, _ in tiles for t in title_list]
    colours = [c for _, _, colour_list in tiles for c in colour_list]
    several = len(methods) > 1
    heading = ("image | " + ", ".join(methods)) if several else f"{methods[0]}: image | overlay"
    plot_image_grid(cells, titles, path, ncols=1 + len(methods) if several else min(3, len(cells)),
                    title=heading + page_of, title_colors=colours,
                    cell_size=(3.0, 3.3) if several else (4.6, 2.7), colour_key=key)


def _write_grids(tiles: TileStore, items: list[ExplainedImage], methods: list[str],
                 base: Path, key: ColourKey) -> list[Page]:
    """The grid pages, mistakes first; each heading counts the mistakes of the whole set."""
    known = [item for item in items if item.wrong is not None]
    wrong = sum(i.wrong for i in known)
    tally = (f"; {wrong} of {len(known)} predictions wrong (red)" + (", shown first" if wrong
                                                                     else "") if known else "")
    per_page = ROWS_PER_PAGE if len(methods) > 1 else IMAGES_PER_PAGE
    return write_pages(
        tiles, mistakes_first([item.wrong for item in items]), base=base, per_page=per_page,
        draw=lambda group, path: _draw_page(group, path, methods=methods, key=key,
                                            page_of=tally))


def _draw_item(item: ExplainedImage, image: np.ndarray, blended: list[np.ndarray],
               methods: list[str], stem: Path, *, topk: int, key: ColourKey
               ) -> tuple[list[np.ndarray], list[str], list[str | None]]:
    """One image's ``<stem>_<method>.png`` files (sets ``item.output``) and its grid cells,
    titles and title colours."""
    colour = _colour(item)
    outputs = [plot_side_by_side(image, picture, tile_title(item, topk=topk),
                                 Path(f"{stem}_{m}.png"), title_color=colour,
                                 labels=("image", f"{m} ({key[0]})"), colour_key=key)
               for m, picture in zip(methods, blended, strict=True)]
    item.output = outputs[0]
    if len(methods) > 1:
        return [image, *blended], [tile_title(item), *methods], [colour, *[None] * len(methods)]
    return [_framed_pair(image, blended[0], colour)], [tile_title(item)], [colour]


def object_boxes(paths: Sequence[str | Path]) -> dict[Path, Box]:
    """The object box of each image that a ``boxes.json`` in one of its folders' parents
    lists (the synthetic shapes: ``root/boxes.json``, keyed by the path below ``root``)."""
    found: dict[Path, Box] = {}
    roots: dict[Path, dict[str, Box] | None] = {}
    for path in map(Path, paths):
        for root in list(path.resolve().parents)[:4]:
            if root not in roots:
                roots[root] = load_boxes(root) if (root / BOXES_FILE).is_file() else None
            boxes = roots[root]
            key = path.resolve().relative_to(root).as_posix()
            if boxes is not None and key in boxes:
                found[Path(path)] = boxes[key]
                break
    return found


def object_share(saliency_map: torch.Tensor, box: Box, image_hw: tuple[int, int], *,
                 img_size: int, crop_pct: float | None) -> float | None:
    """The share of the map's positive relevance on the patches whose centre lies on the box,
    after the eval crop the model saw; None for a map with no positive relevance."""
    positive = saliency_map.float().clamp(min=0.0)
    total = float(positive.sum())
    if total <= 0.0:
        return None
    mask = patch_mask(box, image_hw, img_size=img_size, crop_pct=crop_pct,
                      patch_size=img_size // saliency_map.shape[-1])
    return float(positive[mask[:positive.shape[0], :positive.shape[1]]].sum()) / total


def share_method(methods: Sequence[str]) -> str:
    """The method whose map the share on the object is measured on: the default (AttnLRP, the
    best across the models measured) when drawn, else the first."""
    return DEFAULT_METHOD if DEFAULT_METHOD in methods else methods[0]


@dataclass
class Explained:
    """What ``explain_files`` wrote: one ``ExplainedImage`` per input (iterate over it), the
    grid pages, and the index."""

    items: list[ExplainedImage]
    pages: list[Page]
    index: Path | None
    key: ColourKey

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> ExplainedImage:
        return self.items[index]

@dataclass
class _Drawing:
    """What every batch of ``explain_files`` draws with."""

    clf: Classifier
    methods: list[str]
    options: dict[str, dict[str, Any]]
    out_dir: Path
    stems: dict[Path, str]
    boxes: dict[Path, Box]
    labels: Mapping[str, str] | None
    key: ColourKey
    alpha: float
    topk: int
    tiles: TileStore


def _explain_batch(d: _Drawing, batch: Sequence[str | Path]) -> list[ExplainedImage]:
    """Decode, predict and explain one batch; write its per-image files and keep its tiles."""
    good, views, shown, skipped = _read_views(d.clf, batch)
    if not views:
        return skipped
    x = d.clf.normalise(views).to(d.clf.device)
    with torch.no_grad():
        logits = d.clf.model(x).float()
    maps = {m: saliency(d.clf.model, x, m, target=logits.argmax(dim=1), **d.options[m]).cpu()
            for m in d.methods}
    predictions = top_labels(logits.softmax(dim=-1).cpu(), d.clf.classes, d.topk)
    items = []
    for i, (path, image, preds) in enumerate(zip(good, shown, predictions, strict=True)):
        item = ExplainedImage(path, None, preds,
                              true_label=true_label(path, d.clf.classes, d.labels))
        if path in d.boxes:
            item.on_object = object_share(
                maps[share_method(d.methods)][i], d.boxes[path], _image_hw(path),
                img_size=d.clf.img_size, crop_pct=d.clf.preprocess["crop_pct"])
        blended = [overlay(image, maps[m][i], alpha=d.alpha, colormap=d.key[0])
                   for m in d.methods]
        d.tiles.add(*_draw_item(item, image, blended, d.methods, d.out_dir / d.stems[path],
                                topk=d.topk, key=d.key))
        items.append(item)
    return skipped + items


def _image_hw(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.height, image.width


@dataclass(frozen=True)
class OverlayOptions:
    """How ``explain_files`` draws; the defaults are those of `vit explain`: rollout's head
    fusion and the share of the weakest attention it drops (``head_fusion``, ``discard_ratio``;
    attention: the fusion), the heat map's opacity and colour map, and the predictions named in
    each title (``topk``)."""

    head_fusion: str = "mean"
    discard_ratio: float = 0.0
    alpha: float = 0.5
    colormap: str = DEFAULT_COLORMAP
    topk: int = 3


def explain_files(
    *,
    checkpoint: str | Path,
    paths: Sequence[str | Path],
    output: str | Path,
    method: str = DEFAULT_METHOD,
    options: OverlayOptions | None = None,
    batch_size: int = 16,
    device: str = "auto",
    grid: str | Path | None = None,
    show_progress: bool = False,
    labels: Mapping[str, str] | None = None,
) -> Explained:
    """Write one side-by-side PNG per readable image and method, the grid pages (``grid``,
    default DIR/grid.png; several pages: grid_001.png, ...) and DIR/index.html; unreadable
    files are skipped. ``method``: see ``parse_methods``; ``options``: how to draw (default:
    ``OverlayOptions()``). ``labels``: path -> true label (a label file's); else the folder
    names it.

    Each batch is decoded and cropped once and runs the model's forward pass once (the
    predictions in the titles, and the class every class-specific map explains).
    """
    options = options or OverlayOptions()
    methods = parse_methods(method)
    out_dir = make_output_dir(output)
    clf = Classifier.from_checkpoint(checkpoint, device=device)
    warning = zero_head_warning(clf.model, methods)
    if warning:
        logger.warning("%s", warning)
    d = _Drawing(clf=clf, methods=methods, out_dir=out_dir, stems=_output_stems(paths),
                 options={m: _method_options(m, options.head_fusion, options.discard_ratio)
                          for m in methods},
                 boxes=object_boxes(paths), labels=labels,
                 key=colour_key(methods, options.colormap), alpha=options.alpha,
                 topk=options.topk, tiles=TileStore())
    results: list[ExplainedImage] = []
    batches = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    try:
        for batch in tqdm(batches, desc=f"explain ({method})",
                          disable=not show_progress or len(batches) < 2):
            results += _explain_batch(d, batch)
        drawn = [r for r in results if not r.error]
        if not drawn:
            if paths:
                raise VitError("none of the images could be read; nothing to explain")
            return Explained(results, [], None, d.key)
        pages = _write_grids(d.tiles, drawn, methods, Path(grid) if grid else out_dir / "grid.png",
                             d.key)
    finally:
        d.tiles.close()
    index = write_index(out_dir / "index.html", drawn, pages, methods=methods, key=d.key[3])
    return Explained(results, pages, index, d.key)
