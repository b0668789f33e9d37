"""`vit push`: a training run to the Hugging Face Hub (or into a folder laid out the same way)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from vit.cli.options import add_common_flags, add_parser

    p = add_parser(
        sub, "push", help="upload a run to the Hugging Face Hub, with a model card",
        description="Upload a run's best.pt as a Hugging Face Hub model: model.safetensors, a "
        "timm config.json (timm.create_model('hf_hub:USER/NAME', pretrained=True) loads it), "
        "and a model card README.md with the classes, metrics, training config, curves and "
        "overlays. Log in first (hf auth login, or HF_TOKEN). Needs pip install 'vit[hub]'.",
        epilog="Pull it back with `vit train --pretrained hf:USER/NAME` or "
        "Classifier.from_pretrained('USER/NAME').")
    p.add_argument("run", metavar="RUN", help="a run folder from `vit train` (its best.pt is "
                   "pushed), or a checkpoint file")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--repo", metavar="USER/NAME",
                        help="the Hub repository, created when missing (default: none; give "
                        "this or --to-folder)")
    target.add_argument("--to-folder", metavar="DIR",
                        help="write the repository's files into DIR and upload nothing "
                        "(default: none; give this or --repo)")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--demo", action="store_true", help="add app.py and requirements.txt: the "
                   "`vit demo` app, runnable as a Hugging Face Space (needs gradio there)")
    add_common_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vit.errors import ConfigError

    if args.to_folder is not None:
        if args.private:
            raise ConfigError("--private applies to --repo; a folder is not uploaded")
        from vit.publish.hub import write_hub_folder

        folder = write_hub_folder(args.run, args.to_folder, demo=args.demo)
        print(f"wrote {folder} (upload it with `vit push {args.run} --repo USER/NAME`)")
        return 0
    from vit.publish.hub import push_to_hub

    url = push_to_hub(args.run, args.repo, private=args.private, demo=args.demo)
    print(f"pushed {args.run} to {args.repo}: {url}")
    print(f'load it with timm.create_model("hf_hub:{args.repo}", pretrained=True) or '
          f'Classifier.from_pretrained("{args.repo}")')
    return 0
