"""`vit demo`: a local Gradio app on a model: drop an image, see the top classes and where the
model looks."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from vit.cli.options import add_common_flags, add_device_flag, add_parser

    p = add_parser(
        sub, "demo", help="start a local Gradio app on a model",
        description="Start a web app on this machine: drop an image, get the top classes and "
        "an overlay of where the model looks, by the saliency method you pick. Needs "
        "pip install 'vit[demo]'. Stop it with Ctrl-C.")
    p.add_argument("model", metavar="CHECKPOINT",
                   help="best.pt from `vit train`, an exported .safetensors, a folder from "
                   "`vit push --to-folder`, or a Hub repository USER/NAME")
    p.add_argument("--port", type=int, default=7860, help="port to listen on")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (0.0.0.0 lets other machines in)")
    p.add_argument("--topk", type=int, default=5, metavar="K", help="classes shown per image")
    p.add_argument("--method", metavar="NAME",
                   help="the saliency method selected when the page opens (default: the one "
                   "`vit explain-bench` recommended for this model, recorded beside it; "
                   "without one, attnlrp)")
    add_device_flag(p)
    add_common_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from vit.errors import ConfigError
    from vit.explain.recommend import choose_method
    from vit.explain.saliency import METHODS
    from vit.inference.classifier import Classifier
    from vit.publish.demo import build_demo, import_gradio

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be between 1 and 65535, got {args.port}")
    if args.topk < 1:
        raise ConfigError(f"--topk must be at least 1, got {args.topk}")
    if args.method is not None and args.method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {args.method!r}")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from the CLI
    import_gradio()  # the missing extra is named before the model is loaded
    path = Path(args.model)
    clf = (Classifier.from_checkpoint(path, device=args.device) if path.is_file()
           else Classifier.from_pretrained(args.model, device=args.device))
    choice = choose_method(args.model, args.method)
    if choice.why:
        print(choice.why)
    print(f"vit demo: {clf}; open http://{args.host}:{args.port} (Ctrl-C stops it)")
    build_demo(clf, topk=args.topk, method=choice.method).launch(
        server_name=args.host, server_port=args.port, quiet=True)
    return 0
