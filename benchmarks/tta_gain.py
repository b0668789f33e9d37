"""What test-time augmentation (``--tta flip|crops``) gains on held-out images of a run.

    python benchmarks/tta_gain.py --run runs/cifar10 --per-class 200 \\
        --json benchmarks/results/tta_cifar10_cpu.json

The images are the run's own validation files (its ``split.json``), never trained on, the first
``--per-class`` of each class (sorted by path); each is scored by ``best.pt`` without TTA, with
``flip`` and with ``crops`` (``vit.inference.tta``). Reports top-1, NLL and ECE per mode, the
images TTA fixed and broke against no TTA, and the time per mode.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

if not __package__:  # run as `python benchmarks/tta_gain.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import (
    Column,
    command_line,
    format_header,
    format_table,
    machine_info,
    write_json,
)

MODES = (None, "flip", "crops")


def held_out(run: Path, per_class: int) -> tuple[list[str], list[str]]:
    """(paths, class names) of up to ``per_class`` validation files per class of the run."""
    split = json.loads((run / "split.json").read_text())
    if "val_files" not in split:
        raise SystemExit(f"{run}/split.json lists no validation files (kind {split.get('kind')})")
    by_class: dict[str, list[str]] = {}
    for path in sorted(split["val_files"]):
        by_class.setdefault(Path(path).parent.name, []).append(path)
    paths = [p for files in by_class.values() for p in files[:per_class]]
    return paths, [Path(p).parent.name for p in paths]


def score(clf, paths: list[str], labels: list[str], tta: str | None, batch_size: int) -> dict:
    from vit.inference.metrics import reliability_bins

    start = time.perf_counter()
    probs = clf.predict_proba_files(paths, batch_size=batch_size, tta=tta).probs
    seconds = time.perf_counter() - start
    targets = torch.tensor([clf.classes.index(name) for name in labels])
    correct = probs.argmax(1) == targets
    return {"tta": tta or "none", "top1": 100.0 * correct.float().mean().item(),
            "nll": F.nll_loss(probs.clamp_min(1e-12).log(), targets).item(),
            "ece": reliability_bins(probs, targets)["ece"], "seconds": seconds,
            "_correct": correct}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a run folder (best.pt, split.json)")
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    from vit.inference.classifier import Classifier

    run = Path(args.run)
    clf = Classifier.from_checkpoint(run / "best.pt", device=args.device)
    paths, labels = held_out(run, args.per_class)
    info = machine_info(clf.device, command_line(__file__, sys.argv[1:] if argv is None else argv))
    rows = [score(clf, paths, labels, tta, args.batch_size) for tta in MODES]
    base = rows[0].pop("_correct")
    for row in rows[1:]:
        correct = row.pop("_correct")
        row["fixed"] = int((correct & ~base).sum())
        row["broken"] = int((~correct & base).sum())
        row["gain_points"] = row["top1"] - rows[0]["top1"]
    print(format_header(info))
    print(f"{len(paths)} held-out images of {run} ({args.per_class} per class)")
    print(format_table(rows, [Column("tta", "tta"), Column("top1", "top-1 %", ".2f"),
                              Column("gain_points", "gain (points)", "+.2f"),
                              Column("fixed", "fixed"), Column("broken", "broken"),
                              Column("nll", "NLL", ".4f"), Column("ece", "ECE", ".4f"),
                              Column("seconds", "seconds", ".1f")]))
    result = {**info, "run": str(run), "images": len(paths), "rows": rows}
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
