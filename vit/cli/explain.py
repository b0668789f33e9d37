"""`vit explain`: saliency overlays for images, as PNG files (one method or several), and/or
one attention explorer page."""

from __future__ import annotations

import argparse
import sys

from vit.explain.catalog import DEFAULT_METHOD  # the catalog needs no torch, nor does the parser


def register(sub: argparse._SubParsersAction) -> None:
    from vit.cli.options import (
        add_batch_size,
        add_checkpoint,
        add_common_flags,
        add_device_flag,
        add_parser,
    )
    from vit.explain.catalog import CATALOG

    names = [m.name for m in CATALOG]
    p = add_parser(sub, "explain", help="draw saliency overlays for images",
                   description="Overlay where the model looks on each image; writes "
                   "DIR/<stem>_<method>.png per image and method (the image beside its overlay, "
                   "with a colour bar), grid pages of at most 18 images and 5 MB, mistakes first "
                   "(DIR/grid.png, or grid_001.png, ...; with several methods one image per row, "
                   "one method per column) and DIR/index.html linking them (--output), and/or one "
                   "self-contained HTML page to explore every layer and head (--html). Titles "
                   "give the true label when the image's folder is named after a class, the "
                   "prediction and its probability; mistakes are red. With a boxes.json (the "
                   "synthetic shapes), the share of each map on the object.")
    add_checkpoint(p)
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="images, folders, globs, or a label file (labels.csv: path,label; its "
                   "labels title the pictures)")
    p.add_argument("--output", metavar="DIR",
                   help="folder for the PNG overlays (default: none; --output or --html needed)")
    p.add_argument("--html", metavar="FILE",
                   help="write the attention explorer page here (default: none)")
    p.add_argument("--method", metavar="NAME",
                   help=f"{', '.join(names[:-1])} or {names[-1]}; a "
                   "comma-separated list of them; or all (default: the method `vit "
                   "explain-bench` recommended for this model, recorded beside CKPT; without "
                   f"one, {DEFAULT_METHOD})")
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
    p.add_argument("--auc-steps", type=int, default=32, metavar="N",
                   help="--html: deletion/insertion curve steps per map (0 skips them)")
    p.add_argument("--attention-bits", type=int, default=6, metavar="B",
                   help="--html: bits per stored attention weight, 1-8")
    add_batch_size(p, default=16)
    p.add_argument("--grid", metavar="FILE",
                   help="where to write the grid, .png or .jpg; several pages get _001, _002, "
                   "... (default DIR/grid.png)")
    add_device_flag(p)
    add_common_flags(p)
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    from vit.errors import VitError

    if args.output is None and args.html is None:
        raise VitError("vit explain needs --output DIR (PNG overlays) or --html FILE (the "
                       "explorer page), or both")
    if args.batch_size < 1:
        raise VitError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.auc_steps < 0:
        raise VitError(f"--auc-steps must be 0 (skip) or more, got {args.auc_steps}")
    if not 1 <= args.attention_bits <= 8:
        raise VitError(f"--attention-bits must be in [1, 8], got {args.attention_bits}")


def _write_page(args: argparse.Namespace, paths: list, method: str, show_progress: bool) -> None:
    from vit.explain.explorer import PageOptions
    from vit.figures.attention_files import write_explorer_page

    options = PageOptions(topk=args.topk, head_fusion=args.head_fusion,
                          discard_ratio=args.discard_ratio, auc_steps=args.auc_steps,
                          attention_bits=args.attention_bits,
                          method=None if "," in method or method == "all" else method)
    result = write_explorer_page(checkpoint=args.checkpoint, paths=paths, output=args.html,
                                 options=options, batch_size=args.batch_size, device=args.device,
                                 show_progress=show_progress)
    skipped = f", {result.skipped} unreadable skipped" if result.skipped else ""
    print(f"explorer page: {result.path} ({result.images} images{skipped}, "
          f"{result.size_bytes / 1e6:.1f} MB); open it in a browser")


def _describe(item) -> str:
    """``true ants | predicted bees 71%, ants 20%  WRONG  (on the object 34%)``."""
    predicted = ", ".join(f"{label} {p:.1%}" for label, p in item.predictions)
    text = f"predicted {predicted}"
    if item.true_label is not None:
        text = f"true {item.true_label} | {text}" + ("  WRONG" if item.wrong else "")
    if item.on_object is not None:
        text += f"  (on the object {item.on_object:.0%})"
    return text


def _print_summary(results, method: str, note: str = "") -> None:
    """One line per image (mistakes first), then what was wrong, the pages and the index;
    ``note`` follows the method's name (why it was used)."""
    from vit.figures.overlay_files import parse_methods, share_method
    from vit.figures.overlay_pages import mistakes_first

    drawn = [r for r in results if not r.error]  # unreadable files were already warned about
    for i in mistakes_first([r.wrong for r in drawn]):
        print(f"{drawn[i].output}  {_describe(drawn[i])}")
    known = [r for r in drawn if r.wrong is not None]
    wrong = sum(r.wrong for r in known)
    tally = (f"{wrong} of {len(known)} predictions wrong" + (" (listed first)" if wrong else "")
             if known else "true labels unknown (no class folders or label file)")
    pages = results.pages
    where = pages[0].path if len(pages) == 1 else (
        f"{len(pages)} grid pages {pages[0].path.name} ... {pages[-1].path.name}")
    print(f"{len(drawn)} images explained ({method}{note}): {tally}; {where}; "
          f"index {results.index}")
    shares = sorted(r.on_object for r in drawn if r.on_object is not None)
    if shares:
        background = sum(1 for v in shares if v < 0.5)
        print(f"relevance on the object (boxes.json; {share_method(parse_methods(method))}): "
              f"median {shares[len(shares) // 2]:.0%}; {background} of {len(shares)} maps put "
              "most of it on the background")
    print(f"colours: {results.key[3]}")


def run(args: argparse.Namespace) -> int:
    from vit.data.labels import expand_with_labels
    from vit.explain.recommend import choose_method
    from vit.figures.attention_files import check_html_output
    from vit.figures.overlay_files import OverlayOptions, explain_files

    _check(args)
    if args.html is not None:
        check_html_output(args.html)  # before any work
    paths, labels = expand_with_labels(args.paths)
    show_progress = sys.stderr.isatty() and not args.quiet
    choice = choose_method(args.checkpoint, args.method)
    if choice.source == "recorded" and not args.quiet:  # explain-bench's record: one line
        print(choice.why, file=sys.stderr)
    note = (", the default: no explain-bench recommendation recorded for this model"
            if choice.source == "default" else "")
    if args.output is not None:
        options = OverlayOptions(head_fusion=args.head_fusion, discard_ratio=args.discard_ratio,
                                 alpha=args.alpha, colormap=args.colormap, topk=args.topk)
        results = explain_files(
            checkpoint=args.checkpoint, paths=paths, output=args.output, method=choice.method,
            options=options, batch_size=args.batch_size, device=args.device, grid=args.grid,
            show_progress=show_progress, labels=labels)
        _print_summary(results, choice.method, note)
    if args.html is not None:
        _write_page(args, paths, choice.method, show_progress)
    return 0
