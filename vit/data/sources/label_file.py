"""A label file: ``LABELS.csv`` with path,label[,split] columns (``vit.data.labels``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vit.config import Config
from vit.data.images import check_classes_readable
from vit.data.labels import is_label_file, read_label_file
from vit.data.sources.base import (
    DataSource,
    EvalSet,
    LoaderOptions,
    RunData,
    checked,
    match_classes,
    preflight_workers,
)
from vit.data.splits import stratified_split
from vit.errors import DataError

__all__ = ["LabelFileSource", "scan_eval_labels"]

logger = logging.getLogger(__name__)


class LabelFileSource(DataSource):
    """``--data LABELS.csv``; paths relative to the file's folder."""

    name = "label file"

    @classmethod
    def accepts(cls, spec: str | os.PathLike[str]) -> bool:
        return is_label_file(spec)

    def prepare(self, cfg: Config) -> RunData:
        """Rows marked ``val`` validate (the ``test`` rows are left for ``vit evaluate``);
        without a split column, or with no ``val`` row, a stratified ``data.val_fraction`` of
        the training rows is held out. Missing files, empty labels and files that fail the
        quick check are skipped and reported."""
        from vit.data.check import quick_check_paths

        d = cfg.data
        labels = read_label_file(self.spec)
        rows = labels.of_split("train") if labels.has_split else labels.rows
        val_rows = labels.of_split("val")
        skipped = list(labels.skipped)
        if d.preflight and d.pipeline != "memory":
            skipped += quick_check_paths([r.path for r in rows + val_rows],
                                         workers=preflight_workers(cfg))
        bad = {s["path"] for s in skipped}
        classes = sorted({r.label for r in rows})
        index = {name: i for i, name in enumerate(classes)}
        train = [(r.path, index[r.label]) for r in rows if r.path not in bad]
        check_classes_readable(labels.path, classes, train, skipped)
        unknown = sorted({r.label for r in val_rows} - set(classes))
        if unknown:
            raise DataError(f"{labels.path}: the val rows have labels {unknown} that no train "
                            "row has; every class needs training images")
        split: dict[str, Any] = {"kind": "label_file", "file": str(labels.path)}
        if val_rows:
            val = [(r.path, index[r.label]) for r in val_rows if r.path not in bad]
            split["val_files"] = [p for p, _ in val]
        else:
            train_idx, val_idx = stratified_split(
                [t for _, t in train], val_fraction=d.val_fraction, seed=cfg.train.seed)
            train, val = [train[i] for i in train_idx], [train[i] for i in val_idx]
            split.update(val_fraction=d.val_fraction, seed=cfg.train.seed,
                         val_files=[p for p, _ in val])
        logger.info("%s: %d rows for training, %d for validation, %d test rows left out, %d "
                    "skipped", labels.path, len(train), len(val), len(labels.of_split("test")),
                    len(skipped))
        data = RunData(root=labels.path.parent, classes=classes, train_samples=train,
                       val_samples=val, split=split, skipped=skipped, source=self)
        return checked(data, source=str(self.spec))

    def loaders(self, cfg: Config, data: RunData, options: LoaderOptions
                ) -> tuple[Any, Any, RunData]:
        from vit.data.sources.folder import memory_loaders, sample_loaders

        if cfg.data.pipeline == "memory":
            return memory_loaders(cfg, data, options)
        return sample_loaders(cfg, data, options)

    def eval_set(self, model_classes: Sequence[str]) -> EvalSet:
        return scan_eval_labels(self.spec, model_classes)

    def trained_on(self) -> Callable[[Path], bool]:
        """Its rows the split did not hold out or test."""
        files = {str(Path(r.path).resolve())
                 for r in read_label_file(self.spec, warn=False).rows if r.split != "test"}
        return lambda path: str(path) in files


def scan_eval_labels(label_file: str | os.PathLike[str], model_classes: Sequence[str]
                     ) -> EvalSet:
    """A label file's rows to evaluate on: its ``test`` rows, else its ``val`` rows, else every
    row (no split column); labels matched to the model's classes by name, as class folders
    are."""
    labels = read_label_file(label_file)
    rows = labels.rows
    if labels.has_split:
        rows = labels.of_split("test") or labels.of_split("val")
        if not rows:
            raise DataError(f"{labels.path} has no test or val rows to evaluate on (its split "
                            "column marks every row train)")
    names = sorted({r.label for r in rows})
    match = match_classes(names, model_classes)
    samples = [(r.path, match.targets[r.label]) for r in rows if r.label in match.targets]
    if match.unknown:
        logger.warning("the model does not know the labels %s; their %d images are left out",
                       match.unknown, len(rows) - len(samples))
    return EvalSet(root=labels.path, samples=samples, match=match,
                   num_unknown_images=len(rows) - len(samples), skipped=tuple(labels.skipped),
                   description=str(label_file))
