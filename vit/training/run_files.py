"""What a run writes as it goes, besides config.yaml and the data files: metrics.jsonl,
last.pt, best.pt and curves.png after every epoch (or at most every ``train.save_every_s``
seconds), and at the end the saliency overlays of held-out images and the explorer page."""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vit import run_folder
from vit.config import TrainConfig
from vit.data.sources import RunData
from vit.io import append_jsonl, atomic_save, read_jsonl
from vit.training.checkpointing import best_checkpoint
from vit.training.quickstart import write_explorer

__all__ = ["EpochSaver", "EndFiles", "write_end_files", "held_out_examples", "write_overlays",
           "tracked_images"]

logger = logging.getLogger(__name__)


def _snapshot(obj: Any) -> Any:
    """A copy with every tensor cloned to the CPU (what a checkpoint holds at this moment)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _snapshot(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_snapshot(v) for v in obj)
    return obj


PLOT_EVERY_S = 10.0  # curves.png is redrawn at most this often, and after the last epoch


class EpochSaver:
    """The per-epoch files: metrics.jsonl every epoch; last.pt and best.pt every epoch, or at
    most every ``every_s`` seconds (the best weights wait in memory meanwhile); curves.png at
    most every ``PLOT_EVERY_S`` seconds and at the end."""

    def __init__(self, run_dir: Path, *, every_s: float):
        self.run_dir, self.every_s = run_dir, every_s
        self.last_write = time.perf_counter()
        self.last_plot = -math.inf
        self.pending_best: dict[str, Any] | None = None

    def epoch_done(self, metrics: dict[str, Any], checkpoint: dict[str, Any], improved: bool,
                   *, force: bool = False) -> None:
        # metrics first: a crash before last.pt is written redoes this epoch, and resume drops
        # the line again (truncate_metrics), so metrics.jsonl never holds an epoch twice.
        append_jsonl(self.run_dir / run_folder.METRICS, metrics)
        due = force or self.every_s <= 0 or time.perf_counter() - self.last_write >= self.every_s
        if improved:
            best = best_checkpoint(checkpoint)
            self.pending_best = best if due else _snapshot(best)
        if not due:
            return
        self.flush_best()
        atomic_save(checkpoint, self.run_dir / run_folder.LAST)
        self.last_write = time.perf_counter()
        if not force and self.last_write - self.last_plot < PLOT_EVERY_S:
            return  # drawing takes ~0.5 s: more than a whole epoch on a GPU
        self.last_plot = self.last_write
        try:
            from vit.plots import plot_training_curves

            plot_training_curves(read_jsonl(self.run_dir / run_folder.METRICS),
                                 self.run_dir / run_folder.CURVES)
        except Exception as e:  # a plotting problem must never end a training run
            logger.warning("could not draw curves.png: %s", e)

    def flush_best(self) -> None:
        if self.pending_best is not None:
            atomic_save(self.pending_best, self.run_dir / run_folder.BEST)
            self.pending_best = None


@dataclass
class EndFiles:
    """What the run's last step drew: held-out images, their overlays, the explorer page."""

    held_out: list[str] = field(default_factory=list)
    overlays: Path | None = None
    method: str | None = None  # the saliency method of the overlays
    explorer: Path | None = None


def write_end_files(run_dir: Path, data: RunData, *, train: TrainConfig,
                    device: torch.device) -> EndFiles:
    """The run's last step (main process): the unreadable files named once more, overlays of
    ``train.explain_samples`` held-out images, the explorer page (``train.explorer_page``)."""
    if data.skipped:
        logger.warning("%d unreadable files skipped; they are listed with the reason in %s",
                       len(data.skipped), run_dir / run_folder.DATA_REPORT)
    end = EndFiles()
    if train.explain_samples > 0 and data.val_samples:
        end.held_out = held_out_examples(data.val_samples, train.explain_samples)
        drawn = write_overlays(run_dir, end.held_out, device=device)
        end.overlays, end.method = drawn if drawn else (None, None)
    if train.explorer_page and end.held_out:
        end.explorer = write_explorer(run_dir, end.held_out, device=train.device)
    return end


def held_out_examples(samples: list[tuple[str, int]], num_images: int) -> list[str]:
    """Up to ``num_images`` paths from ``samples``, one class after another, so that a grid of
    them shows every class."""
    by_class: dict[int, list[str]] = {}
    for path, target in samples:
        by_class.setdefault(target, []).append(path)
    rounds = itertools.zip_longest(*by_class.values())
    return [path for row in rounds for path in row if path is not None][:num_images]


def write_overlays(run_dir: Path, paths: list[str], *, device: torch.device
                   ) -> tuple[Path, str] | None:
    """Saliency overlays of held-out images (``held_out_examples``) by best.pt, into
    RUN/overlays (the last step of a run: ``train.explain_samples``), by the method
    ``vit.explain.recommend.choose_method`` picks (explain-bench's recommendation recorded in
    RUN, else the default; one log line says which): (the folder, the method); None when they
    could not be drawn."""
    from vit.explain.recommend import choose_method
    from vit.figures.overlay_files import explain_files

    out = run_dir / "overlays"
    try:
        choice = choose_method(run_dir / run_folder.BEST)
        logger.info("overlays: %s", choice.why)
        explain_files(checkpoint=run_dir / run_folder.BEST, output=out, method=choice.method,
                      paths=paths, device=str(device))
    except Exception as e:  # a drawing problem must never end a finished run
        logger.warning("could not draw the saliency overlays: %s", e)
        return None
    return out, choice.method


TRACKED_OVERLAYS = 4  # overlays sent to the trackers besides the grid


def tracked_images(run_dir: Path, val_samples: list[tuple[str, int]], *,
                   device: torch.device) -> dict[str, Path]:
    """What the trackers get at the end of a run: curves.png, the confusion matrix of best.pt
    on the validation images (drawn here into RUN/confusion_matrix.png; not for shards, whose
    validation images are not listed) and the overlays' grid and first few pictures."""
    images = {"curves": run_dir / run_folder.CURVES}
    if val_samples:
        try:
            images["confusion_matrix"] = _confusion_matrix(run_dir, val_samples, device=device)
        except Exception as e:  # a drawing problem must never end a finished run
            logger.warning("could not draw the confusion matrix: %s", e)
    overlays = run_dir / "overlays"
    pages = sorted(overlays.glob("grid_[0-9][0-9][0-9].png"))  # over 18 images: several pages
    images["overlays/grid"] = pages[0] if pages else overlays / "grid.png"
    pictures = sorted(p for p in overlays.glob("*.png")
                      if p.name != "grid.png" and p not in pages)
    for path in pictures[:TRACKED_OVERLAYS]:
        images[f"overlays/{path.stem}"] = path
    return images


def _confusion_matrix(run_dir: Path, val_samples: list[tuple[str, int]], *,
                      device: torch.device) -> Path:
    from vit.inference.classifier import Classifier
    from vit.inference.evaluate import compute_report, score_images
    from vit.plots import plot_confusion_matrix

    clf = Classifier.from_checkpoint(run_dir / run_folder.BEST, device=str(device))
    scored = score_images(clf, val_samples)
    report = compute_report(scored.probs, scored.targets, clf.classes)
    return plot_confusion_matrix(report["confusion_matrix"], clf.classes,
                                 run_dir / "confusion_matrix.png", normalize=True)
