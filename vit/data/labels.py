"""Label files: a CSV of ``path,label`` (and optionally ``split``) instead of class folders.

    labels = read_label_file("data/labels.csv")
    labels.rows        # [LabelRow(path, label, split, line)], the usable rows, in file order
    labels.skipped     # [{"path", "reason"}]: a missing file or an empty label

Paths are relative to the CSV's folder (absolute paths are kept). ``split``, when the column is
there, takes ``train``, ``val`` (also ``valid``, ``validation``) or ``test``, case-insensitive;
an empty cell or another value is an error naming the line. Columns are found by name in the
header row, in any order; other columns are ignored. A row whose file is missing or whose label
is empty is skipped, counted and reported like an unreadable image.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vit.errors import DataError

__all__ = ["SPLITS", "LabelRow", "LabelFile", "is_label_file", "read_label_file",
           "expand_with_labels"]

logger = logging.getLogger(__name__)

SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
REQUIRED = ("path", "label")


@dataclass(frozen=True)
class LabelRow:
    path: str  # as a file path: the CSV's folder joined with the cell
    label: str
    split: str | None  # "train", "val", "test", or None without a split column
    line: int  # in the CSV, 1-based (the header is line 1)


@dataclass
class LabelFile:
    path: Path
    rows: list[LabelRow]
    has_split: bool
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        """The sorted labels of the usable rows (every split)."""
        return sorted({r.label for r in self.rows})

    def of_split(self, *names: str) -> list[LabelRow]:
        return [r for r in self.rows if r.split in names]


def is_label_file(spec: str | os.PathLike[str] | None) -> bool:
    """Whether ``--data`` names a label file (``.csv``) rather than a folder or shards."""
    return spec is not None and str(spec).lower().endswith(".csv")


def _header(reader: Sequence[str] | None, path: Path) -> dict[str, int]:
    if reader is None:
        raise DataError(f"{path} is empty; a label file needs a header row with the columns "
                        "path,label (and optionally split)")
    columns = {name.strip().lower(): i for i, name in enumerate(reader)}
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise DataError(f"{path} has the columns {[c.strip() for c in reader]} but lacks "
                        f"{missing}; a label file needs a header row with path,label (and "
                        "optionally split: train, val or test), one image per row")
    return columns


def _split_of(cell: str, line: int, path: Path) -> str:
    split = SPLITS.get(cell.strip().lower())
    if split is None:
        raise DataError(f"{path} line {line}: split {cell!r} is none of train, val (or valid, "
                        "validation), test")
    return split


def read_label_file(path: str | os.PathLike[str], *, warn: bool = True) -> LabelFile:
    """Read and check a label file (see the module docstring); ``DataError`` when it cannot be
    used at all (missing, no header, no path/label columns, a bad split, no usable row).
    ``warn``: one warning per skipped row."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"label file {path} does not exist; check the path")
    folder = path.parent
    rows, skipped = [], []
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        columns = _header(next(reader, None), path)
        col_split = columns.get("split")
        for line, cells in enumerate(reader, start=2):
            if not any(c.strip() for c in cells):
                continue  # a blank line
            cells = cells + [""] * (len(columns) - len(cells))
            file = str(folder / cells[columns["path"]].strip())
            label = cells[columns["label"]].strip()
            split = _split_of(cells[col_split], line, path) if col_split is not None else None
            if not label:
                skipped.append({"path": file, "reason": f"empty label in {path.name} line {line}"})
            elif not os.path.isfile(file):
                skipped.append({"path": file, "reason": f"listed in {path.name} line {line} "
                                "but no such file"})
            else:
                rows.append(LabelRow(file, label, split, line))
    for record in skipped if warn else []:
        logger.warning("Skipping %s: %s", record["path"], record["reason"])
    if not rows:
        raise DataError(f"{path} lists no usable image ({len(skipped)} rows skipped: missing "
                        "files or empty labels)")
    return LabelFile(path=path, rows=rows, has_split=col_split is not None, skipped=skipped)


def expand_with_labels(patterns: Sequence[str | os.PathLike[str]]
                       ) -> tuple[list[Path], dict[str, str]]:
    """``expand_paths`` where a label file stands for its rows' images: (paths, the label of
    each path that came from a label file)."""
    from vit.data.folders import expand_paths

    paths: list[Path] = []
    labels: dict[str, str] = {}
    for pattern in patterns:
        if is_label_file(pattern):
            rows = read_label_file(pattern).rows
            paths += [Path(r.path) for r in rows]
            labels.update({r.path: r.label for r in rows})
        else:
            paths += expand_paths([pattern])
    return paths, labels
