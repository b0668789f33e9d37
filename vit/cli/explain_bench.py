"""`vit explain-bench`: how faithful and how sane each saliency method is on a checkpoint."""

from __future__ import annotations

import argparse
import shlex
import sys


def register(sub: argparse._SubParsersAction) -> None:
    from vit.cli.main import add_common_flags, add_device_flag, add_parser

    p = add_parser(
        sub, "explain-bench", help="measure the saliency methods: faithfulness and sanity",
        description="For every method, a random map and the occlusion oracle, on held-out "
        "images of DIR: deletion and insertion AUC with pixels replaced and with patch tokens "
        "dropped, the LeRF-MoRF gap, the model-randomisation sanity check, and, when DIR holds "
        "objects.json (two objects per image), how often the map for each object's class puts "
        "its top patch on that object. Writes explain_bench.md and explain_bench.json.")
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="best.pt from `vit train`")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="its val/ part, the run's held-out split, or a folder with objects.json")
    p.add_argument("--methods", default="all", metavar="LIST",
                   help="comma-separated, from rollout, grad-rollout, attention, legrad, attnlrp, "
                   "gradcam, random, occlusion (default: all)")
    p.add_argument("--images", type=int, default=200, metavar="N", help="at most N images")
    p.add_argument("--steps", type=int, default=32, metavar="N",
                   help="points on each deletion/insertion curve (at most the patch count)")
    p.add_argument("--batch-size", type=int, default=25, metavar="N",
                   help="images per forward pass")
    p.add_argument("--no-sanity", action="store_true", help="skip the randomisation check")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baseline and checks")
    p.add_argument("--output", metavar="DIR", help="default: CKPT's folder/explain_bench")
    add_device_flag(p)
    add_common_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vit.explain.bench import BENCH_METHODS
    from vit.explain.bench_report import markdown_report
    from vit.inference.explain_bench import run_explain_bench

    methods = list(BENCH_METHODS) if args.methods == "all" else \
        [m.strip() for m in args.methods.split(",") if m.strip()]
    result, paths = run_explain_bench(
        args.checkpoint, args.data, methods=methods, images=args.images, steps=args.steps,
        seed=args.seed, batch_size=args.batch_size, sanity=not args.no_sanity,
        output=args.output, device=args.device,
        command=shlex.join(["vit", "explain-bench", *sys.argv[2:]]),
        show_progress=sys.stderr.isatty() and not args.quiet)
    print(markdown_report(result))
    print(f"\nwrote {', '.join(str(p) for p in paths[:-1])} and {paths[-1]}")
    return 0
