"""Evaluate a checkpoint on an image folder: metrics, report.json and plots.

    from vit import Classifier
    from vit.inference.evaluate import evaluate_folder
    report = evaluate_folder(Classifier.from_checkpoint("runs/x/best.pt"), "data/pets",
                             output_dir="runs/x/eval")

The folder is ``DIR/<class>/<image>``, or ``DIR/test/<class>/...`` / ``DIR/val/<class>/...``
(test/ is preferred over val/). Folders are matched to the checkpoint's classes by name, so the
folder may hold fewer classes, or classes the model does not know (reported and left out).

Files written to the output folder:
    report.json             top1, top5, loss, ece, num_images, per_class, confusion_matrix,
                            unknown_classes, missing_classes, skipped, ...; accuracies,
                            precision, recall and F1 in percent, ECE in [0, 1]
    predictions.csv         per image: path, true label, predicted label, confidence
    confusion_matrix.png    rows normalised to the true class
    reliability.png         accuracy per confidence bin (calibration)
    mistakes.png            the most confidently wrong images, with true and predicted label
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vit import run_folder
from vit.data.sources import open_source
from vit.data.sources.base import ClassMatch, EvalSet, match_classes
from vit.data.sources.folder import EVAL_SUBDIRS, resolve_eval_dir, scan_eval_folder
from vit.data.sources.label_file import scan_eval_labels
from vit.errors import DataError
from vit.inference.classifier import Classifier
from vit.inference.metrics import (
    EvalAccumulator,
    build_report,
    most_confident_mistakes,
    reliability_bins,
)
from vit.io import atomic_write, make_output_dir, write_json

__all__ = [
    "EVAL_SUBDIRS",
    "ClassMatch",
    "EvalSet",
    "resolve_eval_dir",
    "match_classes",
    "scan_eval_folder",
    "scan_eval_labels",
    "compute_report",
    "evaluate_folder",
    "format_summary",
]

logger = logging.getLogger(__name__)

REPORT_FILE = "report.json"
PREDICTIONS_FILE = "predictions.csv"
CONFUSION_FILE = "confusion_matrix.png"
RELIABILITY_FILE = "reliability.png"
MISTAKES_FILE = "mistakes.png"


# --- metrics ----------------------------------------------------------------------------------


def compute_report(
    probs: torch.Tensor, targets: torch.Tensor, classes: Sequence[str]
) -> dict[str, Any]:
    """The metrics of ``vit.inference.metrics`` (torchmetrics) as a JSON-ready dict; see ``build_report``."""
    accumulator = EvalAccumulator(num_classes=len(classes))
    accumulator.update(probs, targets)
    return build_report(accumulator.compute(), classes)


@dataclass(frozen=True)
class Scored:
    """Probabilities of the readable images, with their labels and paths."""

    paths: list[str]
    probs: torch.Tensor  # (N, C)
    targets: torch.Tensor  # (N,)
    skipped: list[dict[str, str]]  # {"path", "reason"} of unreadable files


def score_images(
    clf: Classifier, samples: Sequence[tuple[str, int]], *, batch_size: int | None = None,
    show_progress: bool = False, tta: str | None = None,
) -> Scored:
    """Run the classifier over ``samples`` (``tta``: test-time augmentation, see
    ``Classifier.probabilities``); unreadable files are skipped with a warning."""
    scores = clf.predict_proba_files([p for p, _ in samples], batch_size=batch_size,
                                     show_progress=show_progress, tta=tta)
    keep = scores.readable
    skipped = [{"path": scores.paths[i], "reason": error}
               for i, error in enumerate(scores.errors) if error is not None]
    if not keep:
        raise DataError(f"none of the {len(samples)} images could be read "
                        f"(first: {skipped[0]['path']}: {skipped[0]['reason']})")
    if skipped:
        logger.warning("skipped %d unreadable images of %d (listed in %s)", len(skipped),
                       len(samples), REPORT_FILE)
    return Scored(paths=[samples[i][0] for i in keep], probs=scores.probs,
                  targets=torch.tensor([samples[i][1] for i in keep], dtype=torch.long),
                  skipped=skipped)


# --- files ------------------------------------------------------------------------------------


def write_predictions_csv(path: Path, scored: Scored, classes: Sequence[str]) -> None:
    """One row per image: path, true, predicted, confidence, correct."""
    confidence, predicted = scored.probs.max(dim=1)
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["path", "true", "predicted", "confidence", "correct"])
    for p, t, y, c in zip(scored.paths, scored.targets.tolist(), predicted.tolist(),
                          confidence.tolist(), strict=True):
        writer.writerow([p, classes[t], classes[y], f"{c:.6f}", int(t == y)])
    atomic_write(path, text.getvalue())


def _mistake_title(scored: Scored, i: int, classes: Sequence[str]) -> str:
    confidence, predicted = scored.probs[i].max(dim=0)
    return (f"true: {classes[int(scored.targets[i])]}\n"
            f"pred: {classes[int(predicted)]} {float(confidence):.0%}")


def write_plots(output_dir: Path, scored: Scored, report: dict[str, Any], clf: Classifier, *,
                num_mistakes: int) -> list[Path]:
    """Confusion matrix, reliability diagram and the most confident mistakes, as PNGs."""
    from vit.plots import plot_confusion_matrix, plot_image_grid, plot_reliability_diagram

    confusion, reliability, grid = (output_dir / name for name in
                                    (CONFUSION_FILE, RELIABILITY_FILE, MISTAKES_FILE))
    plot_confusion_matrix(report["confusion_matrix"], clf.classes, confusion, normalize=True)
    bins = reliability_bins(scored.probs, scored.targets)
    plot_reliability_diagram(bins, bins["ece"], reliability)
    mistakes = most_confident_mistakes(scored.probs, scored.targets, num_mistakes)
    plot_image_grid(clf.view([scored.paths[i] for i in mistakes]),
                    [_mistake_title(scored, i, clf.classes) for i in mistakes], grid,
                    title="most confident mistakes", title_colors=["red"] * len(mistakes))
    written = [confusion, reliability, grid]
    return written


# --- the whole evaluation ---------------------------------------------------------------------


def evaluate_folder(
    clf: Classifier,
    data_dir: str | os.PathLike[str],
    *,
    output_dir: str | os.PathLike[str] | None = None,
    batch_size: int | None = None,
    num_mistakes: int = 16,
    show_progress: bool = False,
    run_dir: str | os.PathLike[str] | None = None,
    tta: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``clf`` on an image folder; write report.json, predictions.csv and the plots
    to ``output_dir`` (when given) and return the report. With ``run_dir`` (the folder
    ``vit train`` wrote the checkpoint to), ``report["seen_by_run"]`` counts the evaluated
    images that the run trained on or picked its best epoch with. ``tta``: test-time
    augmentation, "flip" or "crops" (``Classifier.probabilities``)."""
    eval_set = open_source(data_dir).eval_set(clf.classes)
    out = make_output_dir(output_dir) if output_dir is not None else None
    logger.info("evaluating on %s: %d images", eval_set.description, len(eval_set.samples))
    scored = score_images(clf, eval_set.samples, batch_size=batch_size,
                          show_progress=show_progress, tta=tta)
    report = compute_report(scored.probs, scored.targets, clf.classes)
    report.update({
        "data_dir": str(data_dir),
        "eval_dir": str(eval_set.root),
        "unknown_classes": eval_set.match.unknown,
        "num_unknown_class_images": eval_set.num_unknown_images,
        "missing_classes": eval_set.match.missing,
        "skipped": [*eval_set.skipped, *scored.skipped],
        "tta": tta,
    })
    if run_dir is not None:
        report["seen_by_run"] = seen_by_run(run_dir, [path for path, _ in eval_set.samples])
    if out is not None:
        write_predictions_csv(out / PREDICTIONS_FILE, scored, clf.classes)
        report["plots"] = [p.name for p in write_plots(out, scored, report, clf,
                                                       num_mistakes=num_mistakes)]
        write_json(out / REPORT_FILE, report)
    return report


def seen_by_run(run_dir: str | os.PathLike[str], paths: Sequence[str]) -> dict[str, int]:
    """How many of ``paths`` the run in ``run_dir`` trained on (``training``) or chose its best
    epoch with (``validation``), from its split.json and config.yaml; zeros when the folder
    holds no such record (an exported model, a moved checkpoint)."""

    run_dir = Path(run_dir)
    counts = {"training": 0, "validation": 0}
    try:
        split = run_folder.read_split(run_dir, missing_ok=False)
        root = run_folder.read_data_root(run_dir)
        trained_on = open_source(root).trained_on()
    except (OSError, ValueError, KeyError, TypeError, DataError):
        return counts
    val_files = {str(Path(f).resolve()) for f in split.get("val_files", [])}
    val_dir = Path(split["val_dir"]).resolve() if split.get("val_dir") else None
    for path in paths:
        resolved = Path(path).resolve()
        if str(resolved) in val_files or (val_dir is not None and resolved.is_relative_to(val_dir)):
            counts["validation"] += 1
        elif trained_on(resolved):
            counts["training"] += 1
    return counts


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}%"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def format_summary(report: dict[str, Any]) -> str:
    """A short text table of ``report`` for the terminal."""
    lines = [
        f"{report['num_images']} images from {report.get('eval_dir', '?')}"
        + (f" (test-time augmentation: {report['tta']})" if report.get("tta") else ""),
        f"top-1 {_percent(report['top1'])}   "
        + (f"top-5 {_percent(report['top5'])}   " if report.get("top5") is not None else "")
        + f"loss {_number(report['loss'])}   ECE {_number(report['ece'])}",
    ]
    width = max(len("class"), *(len(name) for name in report["per_class"]))
    lines.append(f"{'class':<{width}}  precision   recall       f1  support")
    for name, row in report["per_class"].items():
        lines.append(f"{name:<{width}}  {_percent(row['precision']):>9}  "
                     f"{_percent(row['recall']):>7}  {_percent(row['f1']):>7}  {row['support']:>7}")
    for key, what in (("unknown_classes", "folders the model does not know (left out)"),
                      ("missing_classes", "model classes without a folder"),
                      ("skipped", "unreadable files skipped")):
        if report.get(key):
            lines.append(f"{what}: {len(report[key])}")
    lines += _seen_warnings(report)
    return "\n".join(lines) + "\n"


def _seen_warnings(report: dict[str, Any]) -> list[str]:
    """Say when the evaluated images are not held out from the run that made the model."""
    seen, total = report.get("seen_by_run") or {}, report["num_images"]
    lines = []
    if seen.get("validation"):
        lines.append(f"note: {seen['validation']} of these {total} images are the run's own "
                     "validation images, which picked best.pt: this repeats the selection score "
                     "and overstates accuracy on new images; keep a held-out DIR/test/ folder "
                     "and evaluate on it")
    if seen.get("training"):
        lines.append(f"note: {seen['training']} of these {total} images are the run's training "
                     "images: this measures memory, not accuracy on new images")
    return lines
