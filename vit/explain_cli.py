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

from tqdm.auto import tqdm

from vit.errors import VitError

logger = logging.getLogger(__name__)



def parse_methods(method: str) -> list[str]:
    """``"legrad"``, ``"rollout,legrad"`` or ``"all"`` -> a list of saliency method names."""
    from vit.explainers import METHODS

    names = list(METHODS) if method == "all" else [m.strip() for m in method.split(",") if m.strip()]
    if not names or any(m not in METHODS for m in names):
        raise VitError(f"--method must be one of {', '.join(METHODS)}, a comma-separated list of "
                       f"them, or all; got {method!r}")
    return names


def _options(method: str, head_fusion: str, discard_ratio: float) -> dict[str, Any]:
    if method == "rollout":
        return {"head_fusion": head_fusion, "discard_ratio": discard_ratio}
    return {"head_fusion": head_fusion} if method == "attention" else {}


@dataclass
class ExplainedImage:
    path: Path
    output: Path | None
    predictions: list[tuple[str, float]]
    error: str | None = None


def _title(predictions: list[tuple[str, float]]) -> str:
    return ", ".join(f"{label} {p:.0%}" for label, p in predictions)


def _output_dir(output: str | Path) -> Path:
    out_dir = Path(output)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VitError(f"cannot create output folder {str(out_dir)!r}: {e.strerror or e}") from e
    return out_dir


def _read(batch: Sequence[str | Path], results: list[ExplainedImage]) -> tuple[list, list[Path]]:
    """The readable images of ``batch`` and their paths; the others go to ``results``."""
    from vit.data import UnreadableImageError, load_image

    images, good = [], []
    for p in batch:
        try:
            images.append(load_image(p))
            good.append(Path(p))
        except UnreadableImageError as e:
            logger.warning("skipping %s: %s", p, e.reason)
            results.append(ExplainedImage(Path(p), None, [], error=e.reason))
    return images, good


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
    default DIR/grid.png); unreadable files are skipped. ``method``: see ``parse_methods``."""
    from vit.explain import overlay, saliency
    from vit.plots import plot_image_grid, plot_side_by_side
    from vit.predict import Classifier

    methods = parse_methods(method)
    out_dir = _output_dir(output)
    clf = Classifier.from_checkpoint(checkpoint, device=device)
    # DIR/<stem>_<method>.png; when two inputs share a stem (a/1.png, b/1.png) the folder
    # name is put in front so no overlay overwrites another
    stems = Counter(Path(p).stem for p in paths)

    def out_name(path: Path, name: str) -> Path:
        stem = path.stem if stems[path.stem] == 1 else f"{path.parent.name}_{path.stem}"
        return out_dir / f"{stem}_{name}.png"

    results: list[ExplainedImage] = []
    cells, titles = [], []
    batches = [list(paths[i:i + batch_size]) for i in range(0, len(paths), batch_size)]
    for batch in tqdm(batches, desc=f"explain ({method})", disable=not show_progress or len(batches) < 2):
        images, good = _read(batch, results)
        if not images:
            continue
        x = clf.transform(images).to(clf.device)
        maps = {m: saliency(clf.model, x, m, **_options(m, head_fusion, discard_ratio)).cpu()
                for m in methods}
        predictions = clf.predict(images, topk=topk)
        for i, (path, view, preds) in enumerate(zip(good, clf.view(images), predictions, strict=True)):
            blended = [overlay(view, maps[m][i], alpha=alpha) for m in methods]
            for name, picture in zip(methods, blended, strict=True):
                plot_side_by_side(view, picture, _title(preds), out_name(path, name),
                                  labels=("input", name))
            results.append(ExplainedImage(path, out_name(path, methods[0]), preds))
            caption = f"{path.stem}: {_title(preds[:1])}"
            cells += [view, *blended] if len(methods) > 1 else blended
            titles += [caption, *methods] if len(methods) > 1 else [caption]
    if not cells:
        if paths:
            raise VitError("none of the images could be read; nothing to explain")
        return results
    several = len(methods) > 1
    plot_image_grid(cells, titles, Path(grid) if grid else out_dir / "grid.png",
                    ncols=1 + len(methods) if several else None,
                    title="one image per row, one method per column" if several
                    else f"{method} overlays")
    return results
