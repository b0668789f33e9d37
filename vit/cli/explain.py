"""`vit explain`: saliency overlays for images, as PNG files (one method or several)."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    from vit.cli.main import add_common_flags

    p = sub.add_parser("explain", help="draw saliency overlays for images",
                       description="Overlay where the model looks on each image; writes "
                       "DIR/<stem>_<method>.png per image and method, and DIR/grid.png (with "
                       "several methods: one image per row, one method per column).")
    p.add_argument("--checkpoint", required=True, metavar="CKPT")
    p.add_argument("paths", nargs="+", metavar="PATH", help="images, folders or globs")
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--method", default="rollout", metavar="NAME",
                   help="rollout, grad-rollout, attention, legrad, attnlrp or gradcam; a "
                   "comma-separated list of them; or all (default: rollout)")
    p.add_argument("--head-fusion", default="mean", choices=["mean", "max", "min"])
    p.add_argument("--discard-ratio", type=float, default=0.0, metavar="F")
    p.add_argument("--alpha", type=float, default=0.5, metavar="A")
    p.add_argument("--topk", type=int, default=3, metavar="K")
    p.add_argument("--batch-size", type=int, default=16, metavar="N")
    p.add_argument("--grid", metavar="PNG", help="where to write the grid (default DIR/grid.png)")
    p.add_argument("--device", default="auto")
    add_common_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vit.data.folders import expand_paths
    from vit.inference.overlays import explain_files

    if args.batch_size < 1:
        from vit.errors import VitError

        raise VitError(f"--batch-size must be at least 1, got {args.batch_size}")
    paths = expand_paths(args.paths)
    results = explain_files(
        checkpoint=args.checkpoint, paths=paths, output=args.output, method=args.method,
        head_fusion=args.head_fusion, discard_ratio=args.discard_ratio, alpha=args.alpha,
        topk=args.topk, batch_size=args.batch_size, device=args.device, grid=args.grid,
        show_progress=sys.stderr.isatty() and not args.quiet)
    for r in results:
        if not r.error:  # unreadable files were already reported as warnings
            print(f"{r.output}  {', '.join(f'{lab} {p:.1%}' for lab, p in r.predictions)}")
    return 0
