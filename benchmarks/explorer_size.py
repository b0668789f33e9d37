"""How large the attention explorer page is, and how long `vit explain --html` takes to write it.

    python benchmarks/explorer_size.py --images /tmp/data/flowers/train --num 16 \\
        --json benchmarks/results/explorer_size_cpu.json

The issue's goal: a page of 16 images from ViT-S/16 at 224 px is at most 40 MB. Without
``--checkpoint`` the model is ``vit_small_patch16_224`` with random weights (seed 0; no trained
ViT-S/16 is at hand offline), saved as a checkpoint with ImageNet preprocessing. ``--images``
takes a folder (``--num`` images evenly spread over it) or ``noise`` (uniform random pixels, the
least compressible input). Each ``--bits`` value runs the real command::

    vit explain --checkpoint CKPT IMAGES... --html PAGE --attention-bits B [--auc-steps 0]

the first with ``--auc-steps`` (default 32, the command's default), the others without the
faithfulness curves, which add a few numbers to the page and most of the time. The click-redraw
time in a browser is measured by ``tests/test_explorer_browser.py`` (it prints it).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

if not __package__:  # run as `python benchmarks/explorer_size.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import (
    Column,
    command_line,
    format_header,
    format_table,
    machine_info,
    parse_list,
    write_json,
)

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "crop_pct": 0.875}


def random_checkpoint(path: Path, model_name: str, num_classes: int) -> Path:
    from vit.io import atomic_save
    from vit.models.checkpoint import make_checkpoint
    from vit.models.presets import create_model

    torch.manual_seed(0)
    model = create_model(model_name, num_classes=num_classes)
    preprocess = {"img_size": model.config.img_size, **IMAGENET}
    atomic_save(make_checkpoint(model=model, classes=[f"class {i}" for i in range(num_classes)],
                                preprocess=preprocess, config={}, epoch=0, step=0,
                                best_top1=None, metrics={}), path)
    return path


def pick_images(source: str, num: int, scratch: Path) -> list[str]:
    """``num`` files evenly spread over a folder, or ``num`` noise images written to scratch."""
    if source == "noise":
        rng = np.random.default_rng(0)
        paths = []
        for i in range(num):
            path = scratch / f"noise_{i:02d}.png"
            Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(path)
            paths.append(str(path))
        return paths
    from vit.data.folders import expand_paths
    from vit.explain.attention_stats import spread_sample

    return [str(p) for p in spread_sample(expand_paths([source]), num)]


def measure(checkpoint: Path, images: list[str], page: Path, bits: int, auc_steps: int) -> dict:
    from vit.cli import main

    argv = ["explain", "--checkpoint", str(checkpoint), *images, "--html", str(page),
            "--attention-bits", str(bits), "--auc-steps", str(auc_steps), "--quiet"]
    started = time.perf_counter()
    if main(argv) != 0:
        raise SystemExit("vit explain failed")
    return {"attention_bits": bits, "auc_steps": auc_steps,
            "size_mb": page.stat().st_size / 1e6, "seconds": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, help="image folder, or 'noise'")
    parser.add_argument("--num", type=int, default=16)
    parser.add_argument("--checkpoint", help="default: vit_small_patch16_224, random weights")
    parser.add_argument("--bits", default="6,5,8", help="attention bits, the first with AUC")
    parser.add_argument("--auc-steps", type=int, default=32, help="for the first page")
    parser.add_argument("--keep", metavar="HTML", help="copy the first page here")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    info = machine_info(torch.device("cpu"), command_line(__file__, sys.argv[1:] if argv is None
                                                          else argv))
    print(format_header(info))
    with tempfile.TemporaryDirectory(prefix="explorer_size_") as scratch:
        scratch = Path(scratch)
        checkpoint = Path(args.checkpoint) if args.checkpoint else random_checkpoint(
            scratch / "vit_s16_random.pt", "vit_small_patch16_224", num_classes=5)
        images = pick_images(args.images, args.num, scratch)
        rows = []
        for k, bits in enumerate(int(b) for b in parse_list(args.bits)):
            page = scratch / f"page_{bits}.html"
            rows.append(measure(checkpoint, images, page, bits, args.auc_steps if k == 0 else 0))
            if k == 0 and args.keep:
                Path(args.keep).write_bytes(page.read_bytes())
    print(format_table(rows, [Column("attention_bits", "bits"), Column("auc_steps", "AUC steps"),
                              Column("size_mb", "page MB", ".1f"),
                              Column("seconds", "seconds", ".0f")]))
    if args.json:
        write_json(args.json, {"setup": {**info, "images": args.images, "num": len(images),
                                         "checkpoint": args.checkpoint or
                                         "vit_small_patch16_224, random weights (seed 0)"},
                               "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
