"""Attention for image files and checkpoints: the work behind `vit explain --html` and
`vit attention-stats`.

    write_explorer_page(checkpoint="runs/x/best.pt", paths=[...], output="page.html")
    write_attention_stats(checkpoint="runs/x/best.pt", data="photos", output="stats")

The page and the statistics themselves are made by ``vit.explain.explorer`` and
``vit.explain.attention_stats``
from a model or a classifier; this module loads the checkpoint and reads the files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from vit.errors import ConfigError, DataError, VitError
from vit.explain.attention_stats import (
    AttentionStats,
    folder_attention_stats,
    plot_attention_stats,
    readable_images,
    spread_sample,
)
from vit.explain.explorer import PageOptions, batch_records, page_from_records
from vit.io import atomic_write

__all__ = ["ExplorerResult", "check_html_output", "write_attention_stats", "write_explorer_page"]

logger = logging.getLogger(__name__)


def check_html_output(output: str | os.PathLike[str]) -> Path:
    """The page's path, or a one-line ``VitError`` when it cannot be written there."""
    path = Path(output)
    if path.is_dir():
        raise VitError(f"--html {output} is a folder; name the page file, e.g. "
                       f"{path / 'explorer.html'}")
    folder = path.parent
    if not folder.exists():
        raise VitError(f"cannot write {output}: the folder {folder} does not exist; create it "
                       "first or choose another path")
    if not folder.is_dir():
        raise VitError(f"cannot write {output}: {folder} is a file, not a folder")
    return path


# ---------------------------------------------------------------------------------------------
# `vit explain --html`
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExplorerResult:
    path: Path
    size_bytes: int
    images: int
    skipped: int


def write_explorer_page(
    *, checkpoint: str | os.PathLike[str], paths: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str], options: PageOptions | None = None, batch_size: int = 16,
    device: str = "auto", show_progress: bool = False,
) -> ExplorerResult:
    """Write the explorer page of image files; unreadable files are skipped with a warning."""
    from vit.explain.saliency import METHODS, zero_head_warning
    from vit.inference.classifier import Classifier

    out = check_html_output(output)
    options = options or PageOptions()
    options.check()
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    clf = Classifier.from_checkpoint(checkpoint, device=device)
    warning = zero_head_warning(clf.model, METHODS)  # the page shows every method's map
    if warning:
        logger.warning("%s", warning)
    records: list[dict[str, Any]] = []
    batches = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    for batch in tqdm(batches, desc="explorer page", unit="batch",
                      disable=not show_progress or len(batches) < 2):
        found = readable_images(batch)
        if found:
            records += batch_records(clf, [array for _, array in found],
                                     [str(path) for path, _ in found], options)
    if not records:
        raise DataError("none of the images could be read; nothing to explain")
    html = page_from_records(clf, records, options, title=str(checkpoint)).encode("utf-8")
    atomic_write(out, html)
    return ExplorerResult(out, len(html), len(records), len(paths) - len(records))


# ---------------------------------------------------------------------------------------------
# `vit attention-stats`
# ---------------------------------------------------------------------------------------------


def _classifier(checkpoint: str | os.PathLike[str], *, untrained: bool, seed: int | None,
                device: str, batch_size: int) -> tuple[Any, str]:
    """The checkpoint's classifier, or (``untrained``) the same model freshly initialised.

    The fresh weights come from ``torch.manual_seed(seed)`` and the model's constructor, as
    ``vit train`` makes them (``seed`` defaults to the run's ``train.seed``).
    """
    from vit.inference.classifier import Classifier
    from vit.models.architecture import model_from_spec
    from vit.models.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    model = model_from_checkpoint(ckpt)
    weights = "trained"
    if untrained:
        if seed is None:
            seed = int((ckpt.get("config") or {}).get("train", {}).get("seed", 0))
        torch.manual_seed(seed)
        model = model_from_spec(ckpt["model_config"]).eval()
        weights = f"untrained (fresh initialisation, seed {seed})"
    clf = Classifier(model, classes=ckpt["classes"], preprocess=ckpt["preprocess"],
                     device=device, batch_size=batch_size)
    return clf, weights


def write_attention_stats(
    *, checkpoint: str | os.PathLike[str], data: str | os.PathLike[str],
    output: str | os.PathLike[str], max_images: int = 1000, batch_size: int = 64,
    device: str = "auto", untrained: bool = False, seed: int | None = None,
    show_progress: bool = False,
) -> tuple[AttentionStats, Path, Path]:
    """Stats over (at most ``max_images``, evenly spread) images of a folder -> JSON and PNG.

    Writes ``OUTPUT/attention_stats.json`` and ``OUTPUT/attention_stats.png``; returns the stats
    and the two paths.
    """
    from vit.data.folders import expand_paths

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    paths = spread_sample(expand_paths([data]), max_images)
    clf, weights = _classifier(checkpoint, untrained=untrained, seed=seed, device=device,
                               batch_size=batch_size)
    stats = folder_attention_stats(clf, paths, batch_size=batch_size, show_progress=show_progress)
    stats.source = {"checkpoint": os.fspath(checkpoint), "data": os.fspath(data),
                    "weights": weights, "images_listed": len(paths)}
    out = Path(output)
    json_path, png_path = out / "attention_stats.json", out / "attention_stats.png"
    atomic_write(json_path, stats.to_json().encode())
    title = f"{os.fspath(checkpoint)}, {weights}: {stats.num_images} images of {os.fspath(data)}"
    plot_attention_stats(stats, png_path, title=title)
    return stats, json_path, png_path
