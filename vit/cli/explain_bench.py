"""`vit explain-bench`: how faithful and how sane each saliency method is on a checkpoint, and
which one to believe for it."""

from __future__ import annotations

import argparse
import shlex
import sys

# vit.bench.run's and vit.bench.measures's defaults, repeated so that the parser
# needs no torch (tests/test_explain_bench.py keeps them equal)
DEFAULT_IMAGES, DEFAULT_STEPS, DEFAULT_BATCH_SIZE, DEFAULT_SANITY_IMAGES = 32, 16, 16, 16


def register(sub: argparse._SubParsersAction) -> None:
    from vit.cli.options import (
        add_batch_size,
        add_checkpoint,
        add_common_flags,
        add_device_flag,
        add_parser,
    )
    from vit.explain.catalog import CATALOG
    from vit.text import count_in_words

    p = add_parser(
        sub, "explain-bench", help="measure the saliency methods and recommend one for the model",
        description="For every method, a random map and the occlusion oracle, on held-out "
        "images of DIR: deletion and insertion AUC with patch tokens dropped (and with pixels "
        "replaced: --pixels), the LeRF-MoRF gap, the model-randomisation sanity check, and, when DIR holds "
        "objects.json (two objects per image), how often the map for each object's class puts "
        "its top patch on that object. Ends with the method to believe for this model, by a "
        "rule the report states, and records it beside CKPT (explain_method.json), where vit "
        "explain, the end-of-run overlays, the explorer page and vit demo use it. Writes "
        "explain_bench.md, .json and .png. The defaults end within about 3 minutes on 2 CPU "
        "cores for a 12-block, width-192 model at 32 px (measured: 240 CPU-seconds; "
        "benchmarks/RESULTS.md); larger models, inputs or --images take longer (the progress "
        "bar estimates the time left, also as a line every 30 s in a log).")
    add_checkpoint(p, help="best.pt from `vit train`")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="its val/ part, the run's held-out split, or a folder with objects.json")
    p.add_argument("--methods", default="all", metavar="LIST",
                   help=f"comma-separated, from {', '.join(m.name for m in CATALOG)}, random, "
                   f"occlusion (default: all; only a run of all {count_in_words(len(CATALOG))} "
                   "saliency methods with the randomisation check records a recommendation)")
    p.add_argument("--images", type=int, default=DEFAULT_IMAGES, metavar="N",
                   help="at most N images, classes taking turns (default: %(default)s)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, metavar="N",
                   help="points on each deletion/insertion curve, at most the patch count "
                   "(default: %(default)s)")
    add_batch_size(p, default=DEFAULT_BATCH_SIZE)
    p.add_argument("--no-sanity", action="store_true", help="skip the randomisation check")
    p.add_argument("--sanity-images", type=int, default=DEFAULT_SANITY_IMAGES, metavar="N",
                   help="images (spread over the N) that take the randomisation check "
                   "(default: %(default)s)")
    p.add_argument("--full-cascade", action="store_true",
                   help="randomisation check at every stage (the head, then one block more at a "
                   "time) instead of the head, half the blocks and all of them, and on the "
                   "occlusion oracle too (one forward pass per patch at each stage)")
    p.add_argument("--pixels", action="store_true",
                   help="also deletion, insertion and LeRF-MoRF with pixels replaced by a "
                   "baseline (about three times the forward passes of the token columns)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baseline and checks")
    p.add_argument("--output", metavar="DIR", help="default: CKPT's folder/explain_bench")
    add_device_flag(p)
    add_common_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vit.bench.measures import BENCH_METHODS, BenchSettings
    from vit.bench.report import markdown_report
    from vit.bench.run import run_explain_bench

    methods = list(BENCH_METHODS) if args.methods == "all" else \
        [m.strip() for m in args.methods.split(",") if m.strip()]
    settings = BenchSettings(methods=methods, steps=args.steps, seed=args.seed,
                             batch_size=args.batch_size, sanity=not args.no_sanity,
                             sanity_images=args.sanity_images, full_cascade=args.full_cascade,
                             pixels=args.pixels)
    result, paths = run_explain_bench(
        args.checkpoint, args.data, settings=settings, images=args.images, output=args.output,
        device=args.device, command=shlex.join(["vit", "explain-bench", *sys.argv[2:]]),
        show_progress=not args.quiet)  # a log file gets a line with the time left every 30 s
    print(markdown_report(result))
    print(f"\nwrote {', '.join(str(p) for p in paths[:-1])} and {paths[-1]}")
    return 0
