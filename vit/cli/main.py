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
from types import ModuleType

from vit.cli import (
    attention_stats,
    check,
    demo,
    evaluate,
    explain,
    explain_bench,
    export,
    models,
    predict,
    push,
    shard,
    train,
)
from vit.cli.options import HelpFormatter
from vit.errors import VitError

# Every command and its module, in the order `vit --help` lists them: a new command is its module
# and one line here. A command module imports only vit.cli.options of this package.
COMMANDS: dict[str, ModuleType] = {
    "train": train, "evaluate": evaluate, "predict": predict, "explain": explain,
    "explain-bench": explain_bench, "export": export, "attention-stats": attention_stats,
    "check": check, "shard": shard, "models": models, "push": push, "demo": demo,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vit", formatter_class=HelpFormatter,
        description="Train Vision Transformers on image folders, classify and explain.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS.values():
        command.register(sub)
    return parser


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
