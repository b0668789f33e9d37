"""`vit check DIR`: decode every image below DIR in parallel processes and name every bad one."""

from __future__ import annotations

import argparse
import os
import sys
import time


def register(sub: argparse._SubParsersAction) -> None:
    from vit.cli.options import add_common_flags, add_parser

    p = add_parser(
        sub, "check", help="decode every image of a folder and list the unreadable ones",
        description="The full check: decode every image below DIR (any layout, searched "
        "recursively) in parallel processes; print one line per unreadable file (PATH: reason) "
        "and a summary. Exit code 0 when all decode, 1 when some do not. Training does not need "
        "it: `vit train` checks headers only and skips files that fail later.")
    p.add_argument("data", metavar="DIR", help="image folder")
    p.add_argument("--workers", type=int, metavar="N",
                   help="decoding processes (default: one per CPU)")
    p.add_argument("--output", metavar="FILE.json",
                   help="also write {images, unreadable: [{path, reason}]} as JSON "
                   "(default: none)")
    add_common_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vit.data.check import full_check
    from vit.data.folders import expand_paths
    from vit.errors import ConfigError

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    start = time.perf_counter()
    paths = [str(p) for p in expand_paths([args.data])]
    bad = full_check(paths, workers=args.workers or os.cpu_count() or 1)
    for record in bad:
        print(f"{record['path']}: {record['reason']}")
    if args.output:
        from vit.io import write_json

        write_json(args.output, {"images": len(paths), "unreadable": bad})
    print(f"checked {args.data}: {len(paths)} images, {len(bad)} unreadable "
          f"({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return 1 if bad else 0
