"""The options several commands share, each declared once, and the parser pieces every command
uses (the help formatter, ``--debug``/``--quiet``). Imports no torch.

    p = add_parser(sub, "predict", help=...)
    add_checkpoint(p)                      # --checkpoint CKPT (required)
    add_batch_size(p, default=64)          # --batch-size N
    add_device_flag(p); add_tta_flag(p); add_common_flags(p)
"""

from __future__ import annotations

import argparse

__all__ = ["HelpFormatter", "TTA_MODES", "add_parser", "add_checkpoint", "add_batch_size",
           "add_device_flag", "add_tta_flag", "add_common_flags"]

TTA_MODES = ("flip", "crops")  # vit.inference.tta.TTA_MODES, repeated so the parser needs no torch
CHECKPOINT_HELP = "best.pt from `vit train`, or an exported .safetensors"
BATCH_HELP = "images per forward pass"


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already states one or there
    is none to state (a flag that is off, an option without a value)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text.lower() or not action.option_strings or default is None
                or default is False or default is argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def add_parser(sub: argparse._SubParsersAction, name: str, **kwargs) -> argparse.ArgumentParser:
    """A command's parser, with the shared help formatter."""
    return sub.add_parser(name, formatter_class=HelpFormatter, **kwargs)


def add_checkpoint(parser: argparse.ArgumentParser, *, help: str = CHECKPOINT_HELP) -> None:
    """``--checkpoint CKPT`` (required) for the commands that load a trained model."""
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help=help)


def add_batch_size(parser: argparse.ArgumentParser, *, default: int | None,
                   help: str = BATCH_HELP) -> None:
    """``--batch-size N``: images per forward pass (``vit train``: the global batch per step)."""
    parser.add_argument("--batch-size", type=int, default=default, metavar="N", help=help)


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    """``--device auto|cpu|cuda|cuda:N`` (default auto) for the commands that run a model."""
    parser.add_argument("--device", default="auto", metavar="auto|cpu|cuda",
                        help="where to run; auto picks the GPU when there is one")


def add_tta_flag(parser: argparse.ArgumentParser) -> None:
    """``--tta flip|crops`` (default none) for the commands that classify images."""
    parser.add_argument("--tta", choices=TTA_MODES,
                        help="test-time augmentation: average the probabilities of the image and "
                        "its mirror (flip, 2x the time) or of 5 crops and their mirrors (crops, "
                        "10x) (default: none)")


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors")
