"""`vit export`: a checkpoint as safetensors or ONNX, each with a JSON sidecar."""

from __future__ import annotations

import argparse

# vit.inference.export's values, repeated so that building the parser imports no torch
# (tests/test_cli_help.py keeps them equal)
FORMATS = ("safetensors", "onnx")
ONNX_OPSET = 17


def register(sub: argparse._SubParsersAction) -> None:
    from vit.cli.options import add_checkpoint, add_common_flags, add_parser

    p = add_parser(
        sub, "export", help="export a checkpoint as safetensors or ONNX",
        description="Write the model for deployment: FILE.safetensors + FILE.json (loadable by "
        "`vit predict` and Classifier.from_checkpoint), or FILE.onnx + FILE.onnx.json (input "
        "'images' N x 3 x S x S, output 'logits', dynamic batch).")
    add_checkpoint(p, help="best.pt from `vit train`")
    p.add_argument("--format", choices=FORMATS,
                   help="file format (default: from the extension of --output)")
    p.add_argument("--output", required=True, metavar="FILE",
                   help="FILE.safetensors or FILE.onnx; the JSON sidecar goes beside it")
    p.add_argument("--opset", type=int, default=ONNX_OPSET, metavar="N",
                   help=f"ONNX opset version (default and minimum {ONNX_OPSET})")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the onnxruntime-vs-PyTorch check of the ONNX file")
    add_common_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vit.inference.export import export_checkpoint

    written = export_checkpoint(args.checkpoint, args.output, fmt=args.format, opset=args.opset,
                                verify=not args.no_verify)
    for path in written:
        print(path)
    return 0
