"""`vit predict`: classify image files, folders and globs with a checkpoint."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from vit.errors import DataError, VitError

if TYPE_CHECKING:
    from vit.inference.classifier import FilePrediction

FORMATS = ("table", "json", "csv")
CSV_COLUMNS = ("path", "rank", "label", "probability", "error")


def register(sub: argparse._SubParsersAction) -> None:
    from vit.cli.options import (
        add_batch_size,
        add_checkpoint,
        add_common_flags,
        add_device_flag,
        add_parser,
        add_tta_flag,
    )

    p = add_parser(
        sub, "predict", help="classify images with a checkpoint",
        description="Print the top-k classes of each image. PATH may be an image file, a folder "
        "(searched recursively for images) or a glob such as 'photos/**/*.jpg' (quote it).",
        epilog="Unreadable images are skipped with a warning and listed with their error; "
        "the exit code is 2 only when none could be read.")
    add_checkpoint(p)
    p.add_argument("paths", nargs="+", metavar="PATH", help="images, folders or globs")
    p.add_argument("--topk", type=int, default=5, metavar="K",
                   help="classes per image (default 5, at most the number of classes)")
    add_batch_size(p, default=64)
    p.add_argument("--format", default="table", choices=FORMATS, help="output format")
    add_tta_flag(p)
    p.add_argument("--output", metavar="FILE", help="write to this file (default: stdout)")
    add_device_flag(p)
    add_common_flags(p)
    p.set_defaults(func=run)


# --- rendering --------------------------------------------------------------------------------


def to_records(results: Sequence[FilePrediction]) -> list[dict[str, Any]]:
    """JSON-ready dicts: path, predictions [{label, probability}], and error for skipped files."""
    records = []
    for r in results:
        record: dict[str, Any] = {
            "path": r.path,
            "predictions": [{"label": label, "probability": p}
                            for label, p in r.predictions or []],
        }
        if r.error is not None:
            record["error"] = r.error
        records.append(record)
    return records


def render_json(results: Sequence[FilePrediction]) -> str:
    return json.dumps(to_records(results), indent=2) + "\n"


def render_csv(results: Sequence[FilePrediction]) -> str:
    """One row per (file, rank); a skipped file is one row with only path and error."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in results:
        if r.error is not None:
            writer.writerow([r.path, "", "", "", r.error])
        for rank, (label, p) in enumerate(r.predictions or [], start=1):
            writer.writerow([r.path, rank, label, repr(p), ""])
    return buffer.getvalue()


def render_table(results: Sequence[FilePrediction]) -> str:
    """Aligned text: the path, then each label with its probability in percent."""
    path_width = max([len("PATH"), *(len(r.path) for r in results)])
    label_width = max([0, *(len(label) for r in results for label, _ in r.predictions or [])])
    lines = [f"{'PATH':<{path_width}}  PREDICTIONS"]
    for r in results:
        if r.error is not None:
            cells = f"skipped: {r.error}"
        else:
            cells = "  ".join(f"{label:<{label_width}} {p:6.1%}" for label, p in r.predictions)
        lines.append(f"{r.path:<{path_width}}  {cells}".rstrip())
    return "\n".join(lines) + "\n"


RENDERERS = {"table": render_table, "json": render_json, "csv": render_csv}


def write_text(text: str, output: str | None) -> None:
    if output is None:
        sys.stdout.write(text)
        return
    from vit.io import atomic_write

    atomic_write(output, text)


# --- the command ------------------------------------------------------------------------------


def _check_args(args: argparse.Namespace) -> None:
    if args.topk < 1:
        raise VitError(f"--topk must be at least 1, got {args.topk}")
    if args.batch_size < 1:
        raise VitError(f"--batch-size must be at least 1, got {args.batch_size}")


def run(args: argparse.Namespace) -> int:
    from vit.data.folders import expand_paths
    from vit.inference.classifier import Classifier

    _check_args(args)
    paths = expand_paths(args.paths)  # a mistyped path stops here, before the model loads
    clf = Classifier.from_checkpoint(args.checkpoint, device=args.device,
                                     batch_size=args.batch_size)
    results = clf.predict_files(paths, topk=args.topk, tta=args.tta,
                                show_progress=sys.stderr.isatty() and not args.quiet)
    if all(r.error is not None for r in results):
        raise DataError(f"none of the {len(results)} images could be read "
                        f"(first: {results[0].path}: {results[0].error})")
    write_text(RENDERERS[args.format](results), args.output)
    return 0
