"""`vit shard`: write an image folder as WebDataset tar shards that `vit train` streams."""

from __future__ import annotations

import argparse
import re
import sys

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30}


def parse_size(text: str) -> int:
    """'512MB' -> 512000000 bytes (KB/MB/GB are powers of 1000, KiB/MiB/GiB of 1024)."""
    from vit.errors import ConfigError

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).upper() not in _UNITS or float(match.group(1)) <= 0:
        raise ConfigError(f"--shard-size must be a size such as 512MB or 1GiB, got {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def register(sub: argparse._SubParsersAction) -> None:
    from vit.cli.options import add_common_flags, add_parser

    p = add_parser(
        sub, "shard", help="write an image folder as WebDataset tar shards",
        description="Write DIR (DIR/<class>/<image>, or DIR/train + DIR/val) as tar shards: "
        "OUT/train-NNNNNN.tar and OUT/val-NNNNNN.tar (one sample = the image file's bytes as "
        "stored + its class index), OUT/classes.txt and OUT/_info.json (sample counts per "
        "shard, as timm's wds reader reads them). Without DIR/val the validation images are "
        "held out as `vit train` would (--val-fraction, --seed). Train with --data "
        "'OUT/train-{000000..NNNNNN}.tar' (the command prints it).")
    p.add_argument("--data", required=True, metavar="DIR", help="image folder")
    p.add_argument("--output", required=True, metavar="OUT", help="folder for the shards")
    p.add_argument("--shard-size", default="512MB", metavar="SIZE",
                   help="bytes of images per shard (default 512MB)")
    p.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                   help="share of images held out for validation when DIR has no val/")
    p.add_argument("--seed", type=int, default=0, metavar="N",
                   help="seed of that held-out split (the same as `vit train --seed`)")
    p.add_argument("--workers", type=int, default=2, metavar="N",
                   help="processes for the header check")
    add_common_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vit.data.shards import write_shards
    from vit.errors import ConfigError

    if not 0 < args.val_fraction < 1:
        raise ConfigError(f"--val-fraction must be between 0 and 1, got {args.val_fraction}")
    info = write_shards(args.data, args.output, shard_bytes=parse_size(args.shard_size),
                        val_fraction=args.val_fraction, seed=args.seed,
                        workers=max(args.workers, 1))
    out = Path(args.output)
    for name, split in info["splits"].items():
        last = len(split["filenames"]) - 1
        print(f"{name}: {split['num_samples']} images in {last + 1} shards: "
              f"'{out / name}-{{000000..{last:06d}}}.tar'")
    if info["skipped"]:
        print(f"{len(info['skipped'])} unreadable files left out; listed in "
              f"{out / '_info.json'}", file=sys.stderr)
    return 0
