"""`vit explain`: attention overlays for images, as PNG files."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    from vit.cli.main import add_common_flags, add_parser

    p = add_parser(sub, "explain", help="draw attention-rollout overlays for images",
                       description="Overlay where the model looks on each image; writes "
                       "DIR/<stem>_<method>.png per image (the image beside its overlay) and "
                       "DIR/grid.png. Titles give the true label when the image's folder is "
                       "named after a class, the prediction and its probability; mistakes are "
                       "red.")
    p.add_argument("--checkpoint", required=True, metavar="CKPT",
                   help="best.pt from `vit train`, or an exported .safetensors")
    p.add_argument("paths", nargs="+", metavar="PATH", help="images, folders or globs")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the PNG files")
    p.add_argument("--method", default="rollout", choices=["rollout", "grad-rollout", "attention"],
                   help="attention rollout, gradient rollout, or the last layer's attention")
    p.add_argument("--head-fusion", default="mean", choices=["mean", "max", "min"],
                   help="how rollout combines the heads of a layer")
    p.add_argument("--discard-ratio", type=float, default=0.0, metavar="F",
                   help="share of the weakest attention entries rollout drops per row")
    p.add_argument("--alpha", type=float, default=0.5, metavar="A",
                   help="opacity of the heat map over the image (0..1)")
    p.add_argument("--colormap", default="inferno", metavar="NAME",
                   help="matplotlib colour map of the heat map; perceptually uniform ones "
                   "(inferno, viridis, magma, cividis) show the map's steps truthfully")
    p.add_argument("--topk", type=int, default=3, metavar="K",
                   help="predictions named in each picture's title")
    p.add_argument("--batch-size", type=int, default=16, metavar="N",
                   help="images per forward pass")
    p.add_argument("--device", default="auto", metavar="auto|cpu|cuda",
                   help="where to run; auto picks the GPU when there is one")
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
        colormap=args.colormap,
        topk=args.topk, batch_size=args.batch_size, device=args.device,
        show_progress=sys.stderr.isatty() and not args.quiet)
    for r in results:
        if not r.error:  # unreadable files were already reported as warnings
            print(f"{r.output}  {', '.join(f'{lab} {p:.1%}' for lab, p in r.predictions)}")
    return 0
