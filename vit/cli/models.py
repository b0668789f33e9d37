"""`vit models`: the model presets, what they cost and what each is for."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from vit.cli.options import add_parser

    p = add_parser(sub, "models", help="list the model presets (--model NAME)",
                   description="The names --model accepts, with parameters, forward FLOPs per "
                   "image at the default image size, and what each is for.")
    p.add_argument("--num-classes", type=int, default=0, metavar="N",
                   help="count a head for N classes in PARAMS and GFLOPS (default: 0, no head: "
                   "the backbone, as `vit train` logs it before the head it adds)")
    p.set_defaults(func=run)


def format_table(rows: list[dict]) -> str:
    header = ("NAME", "IMG", "PATCH", "PARAMS", "GFLOPS", "FOR")
    cells = [header] + [(r["name"], f"{r['img_size']} px", str(r["patch_size"]),
                         f"{r['params'] / 1e6:.2f}M", f"{r['gflops']:.3f}", r["purpose"])
                        for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header) - 1)]
    lines = ["  ".join([*(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)),
                        row[-1]]) for row in cells]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    from vit.errors import VitError
    from vit.models.presets import describe_models

    if args.num_classes < 0:
        raise VitError(f"--num-classes must be at least 0, got {args.num_classes}")
    print(format_table(describe_models(num_classes=args.num_classes)), end="")
    head = (f"with a head for {args.num_classes} classes" if args.num_classes else
            "without the classification head, as `vit train` logs them; the head adds (width "
            "+ 1) x classes (--num-classes N counts one)")
    print(f"PARAMS: {head}. GFLOPS: one forward pass of one image at IMG (2 per multiply-add); "
          "training costs about 3x. Another size: --img-size N (the position embedding is "
          "resampled).")
    print("Also: --model timm:NAME trains timm's own ViT-family model of that name (DINOv2, "
          "EVA-02, DeiT, SigLIP, BEiT, ...; docs/timm.md).")
    return 0
