"""The ``vit`` command: ``vit train|evaluate|predict|explain|explain-bench|export|
attention-stats|check|shard|models|push|demo``.

Only this layer prints and exits. A mistake of the user's (a ``VitError``) becomes one line on
stderr and exit code 2; an unexpected failure one line and exit code 1; ``--debug`` shows the
traceback instead.

Building the parser imports no torch: each command module imports its heavy parts inside
``run``, so ``vit --help`` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Sequence
from importlib import import_module

from vit.errors import VitError

COMMANDS = ("train", "evaluate", "predict", "explain", "explain-bench", "export",
            "attention-stats", "check", "shard", "models", "push", "demo")


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vit", formatter_class=HelpFormatter,
        description="Train Vision Transformers on image folders, classify and explain.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        import_module(f"vit.cli.{name.replace('-', '_')}").register(sub)
    return parser


def add_parser(sub: argparse._SubParsersAction, name: str, **kwargs) -> argparse.ArgumentParser:
    """A command's parser, with the shared help formatter."""
    return sub.add_parser(name, formatter_class=HelpFormatter, **kwargs)


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    """``--device auto|cpu|cuda|cuda:N`` (default auto) for the commands that run a model."""
    parser.add_argument("--device", default="auto", metavar="auto|cpu|cuda",
                        help="where to run; auto picks the GPU when there is one")


TTA_MODES = ("flip", "crops")  # vit.inference.tta.TTA_MODES, repeated so the parser needs no torch


def add_tta_flag(parser: argparse.ArgumentParser) -> None:
    """``--tta flip|crops`` (default none) for the commands that classify images."""
    parser.add_argument("--tta", choices=TTA_MODES,
                        help="test-time augmentation: average the probabilities of the image and "
                        "its mirror (flip, 2x the time) or of 5 crops and their mirrors (crops, "
                        "10x) (default: none)")


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors")


def setup_logging(*, debug: bool = False, quiet: bool = False) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: only rank 0 talks
        level = max(level, logging.WARNING)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", force=True)
    for noisy in ("PIL", "matplotlib", "timm", "urllib3", "httpx", "httpx2", "huggingface_hub",
                  "gradio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


_OVERRIDE = re.compile(r"^[A-Za-z_]+\.[A-Za-z_]+=")


def overrides_last(argv: Sequence[str]) -> list[str]:
    """Move ``section.key=value`` tokens after the flags, so they may appear anywhere."""
    flags = [a for a in argv if not _OVERRIDE.match(a)]
    return flags + [a for a in argv if _OVERRIDE.match(a)]


def parse_args(argv: Sequence[str], prog: str = "vit") -> argparse.Namespace:
    """``python train.py ARGS`` arrives as ``train ARGS`` with ``prog="python train.py"``: its
    usage line then names the script, not ``vit train``."""
    parser = build_parser()
    if prog != "vit" and argv and argv[0] in COMMANDS:
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        commands.choices[argv[0]].prog = prog
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, prog: str = "vit") -> int:
    argv = overrides_last(sys.argv[1:] if argv is None else argv)
    if not argv and prog == "vit":  # plain `vit`: the commands, not "COMMAND is required"
        build_parser().print_help()
        return 0
    args = parse_args(argv, prog)
    debug = getattr(args, "debug", False)
    setup_logging(debug=debug, quiet=getattr(args, "quiet", False))
    try:
        return int(args.func(args) or 0)
    except VitError as e:
        if debug:
            raise
        error(str(e))
        return 2
    except KeyboardInterrupt:
        error("interrupted")
        return 130
    except BrokenPipeError:  # `vit models | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # the one place that turns surprises into one line
        if debug:
            raise
        error(f"{type(e).__name__}: {e} (run again with --debug for the traceback)")
        return 1
    finally:
        if "torch.distributed" in sys.modules:  # only a run that used torch can have a group
            from vit.training.distributed import shutdown

            shutdown()


def run() -> None:  # console-script entry point
    sys.exit(main())


if __name__ == "__main__":
    run()
