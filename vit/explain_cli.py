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

from tqdm.auto import tqdm

from vit.errors import VitError
from vit.io import make_output_dir

logger = logging.getLogger(__name__)

METHODS = ("rollout", "grad-rollout", "attention")


@dataclass
class ExplainedImage:
    path: Path
    output: Path | None
    predictions: list[tuple[str, float]]
    error: str | None = None


def _title(predictions: list[tuple[str, float]]) -> str:
    return ", ".join(f"{label} {p:.0%}" for label, p in predictions)


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
    """Write one side-by-side PNG per readable image and a grid; unreadable files are skipped."""
    from vit.data import UnreadableImageError, load_image
    from vit.explain import explain, overlay
    from vit.plots import plot_image_grid, plot_side_by_side
    from vit.predict import Classifier

    if method not in METHODS:
        raise VitError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    out_dir = make_output_dir(output)
    clf = Classifier.from_checkpoint(checkpoint, device=device)
    kwargs = {}
    if method == "rollout":
        kwargs = {"head_fusion": head_fusion, "discard_ratio": discard_ratio}
    elif method == "attention":
        kwargs = {"head_fusion": head_fusion}

    # DIR/<stem>_<method>.png; when two inputs share a stem (a/1.png, b/1.png) the folder
    # name is put in front so no overlay overwrites another
    stems = Counter(Path(p).stem for p in paths)

    def out_name(path: Path) -> str:
        stem = path.stem if stems[path.stem] == 1 else f"{path.parent.name}_{path.stem}"
        return f"{stem}_{method}.png"

    results: list[ExplainedImage] = []
    overlays, titles = [], []
    batches = [list(paths[i:i + batch_size]) for i in range(0, len(paths), batch_size)]
    for batch in tqdm(batches, desc=f"explain ({method})", disable=not show_progress or len(batches) < 2):
        images, good = [], []
        for p in batch:
            try:
                images.append(load_image(p))
                good.append(Path(p))
            except UnreadableImageError as e:
                logger.warning("skipping %s: %s", p, e.reason)
                results.append(ExplainedImage(Path(p), None, [], error=e.reason))
        if not images:
            continue
        x = clf.transform(images).to(clf.device)
        saliency = explain(clf.model, x, method=method, **kwargs).cpu()
        predictions = clf.predict(images, topk=topk)
        views = clf.view(images)
        for path, view, sal, preds in zip(good, views, saliency, predictions, strict=True):
            blended = overlay(view, sal, alpha=alpha)
            target = out_dir / out_name(path)
            plot_side_by_side(view, blended, _title(preds), target)
            results.append(ExplainedImage(path, target, preds))
            overlays.append(blended)
            titles.append(f"{path.stem}: {_title(preds[:1])}")
    if overlays:
        plot_image_grid(overlays, titles, out_dir / "grid.png", title=f"{method} overlays")
    elif paths:
        raise VitError("none of the images could be read; nothing to explain")
    return results
