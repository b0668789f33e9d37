"""`vit evaluate` / `python evaluate.py`: metrics, report.json and plots for a checkpoint."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vit.errors import VitError


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
        sub, "evaluate", help="measure a checkpoint on a labelled image folder",
        description="Evaluate on DIR/<class>/<image>, or on DIR/test/ (preferred) or DIR/val/, "
        "or on a label file's test (else val, else all) rows. Folders and labels are matched to the checkpoint's classes by name. Writes report.json, "
        "predictions.csv, confusion_matrix.png, reliability.png and mistakes.png.")
    add_checkpoint(p)
    p.add_argument("--data", required=True, metavar="DIR|LABELS.csv",
                   help="labelled image folder, or a label file (CSV with path,label; its test "
                   "rows, else its val rows, when it has a split column)")
    p.add_argument("--output", metavar="DIR",
                   help="where to write the report (default: CKPT's folder/eval-<DIR name>)")
    add_batch_size(p, default=64)
    p.add_argument("--num-mistakes", type=int, default=16, metavar="N",
                   help="images in mistakes.png (default 16)")
    add_tta_flag(p)
    add_device_flag(p)
    add_common_flags(p)
    p.set_defaults(func=run)


def default_output_dir(checkpoint: str, data: str) -> Path:
    """``runs/x/best.pt`` + ``data/pets`` -> ``runs/x/eval-pets``."""
    name = Path(data).expanduser().resolve().name or "data"
    return Path(checkpoint).parent / f"eval-{name}"


def run(args: argparse.Namespace) -> int:
    from vit.inference.classifier import Classifier
    from vit.inference.evaluate import evaluate_folder, format_summary

    if args.batch_size < 1:
        raise VitError(f"--batch-size must be at least 1, got {args.batch_size}")
    output = Path(args.output) if args.output else default_output_dir(args.checkpoint, args.data)
    clf = Classifier.from_checkpoint(args.checkpoint, device=args.device,
                                     batch_size=args.batch_size)
    report = evaluate_folder(clf, args.data, output_dir=output, num_mistakes=args.num_mistakes,
                             show_progress=sys.stderr.isatty() and not args.quiet,
                             run_dir=Path(args.checkpoint).parent, tta=args.tta)
    sys.stdout.write(format_summary(report))
    print(f"report: {output / 'report.json'}")
    return 0
