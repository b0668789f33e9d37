"""`vit attention-stats`: mean attention distance and entropy against depth over a folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from vit.cli.options import (
        add_batch_size,
        add_checkpoint,
        add_common_flags,
        add_device_flag,
        add_parser,
    )

    p = add_parser(
        sub, "attention-stats", help="plot mean attention distance and entropy against depth",
        description="For each layer and head: the mean attention distance in pixels "
        "(Dosovitskiy et al. 2021, Fig. 7) and the attention entropy, averaged over the images "
        "of a folder. Writes attention_stats.png and attention_stats.json.")
    add_checkpoint(p)
    p.add_argument("--data", required=True, metavar="DIR",
                   help="image folder (searched recursively), a file or a glob")
    p.add_argument("--output", metavar="DIR",
                   help="where to write (default: CKPT's folder/attention_stats, or "
                   "attention_stats_untrained with --untrained)")
    p.add_argument("--max-images", type=int, default=1000, metavar="N",
                   help="use at most N images, evenly spread over the sorted list (default 1000)")
    p.add_argument("--untrained", action="store_true",
                   help="the same model before training: the checkpoint's architecture with "
                   "fresh weights from the run's seed")
    p.add_argument("--seed", type=int, metavar="N",
                   help="seed for --untrained (default: the run's)")
    add_batch_size(p, default=64)
    add_device_flag(p)
    add_common_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vit.errors import VitError
    from vit.figures.attention_files import write_attention_stats

    if args.max_images < 1:
        raise VitError(f"--max-images must be at least 1, got {args.max_images}")
    if args.seed is not None and not args.untrained:
        raise VitError("--seed only applies with --untrained")
    folder = "attention_stats_untrained" if args.untrained else "attention_stats"
    output = Path(args.output) if args.output else Path(args.checkpoint).parent / folder
    stats, json_path, png_path = write_attention_stats(
        checkpoint=args.checkpoint, data=args.data, output=output, max_images=args.max_images,
        batch_size=args.batch_size, device=args.device, untrained=args.untrained,
        seed=args.seed, show_progress=sys.stderr.isatty() and not args.quiet)
    print(f"{'layer':>5}  {'distance px (min-max over heads)':>34}  {'entropy nats':>12}")
    for layer, (dist, ent) in enumerate(zip(stats.distance_px, stats.entropy_nats,
                                            strict=True), start=1):
        spread = f"{sum(dist) / len(dist):6.1f} ({min(dist):5.1f}-{max(dist):5.1f})"
        print(f"{layer:>5}  {spread:>34}  {sum(ent) / len(ent):12.2f}")
    print(f"{stats.num_images} images; uniform attention has distance "
          f"{stats.uniform_distance_px:.1f} px and entropy {stats.max_entropy_nats:.2f} nats")
    print(f"wrote {png_path} and {json_path}")
    return 0
