"""The ``vit`` command line in this process: the tiny ``vit train`` arguments, the exit code and
output of a command, its one ``error:`` line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vit.cli import main

# Flags first, key=value overrides last: argparse takes the overrides as one positional group.
# No key is set twice, so a flag added after these wins.
TRAIN_FLAGS = ("--model", "vit_nano_patch4_32", "--img-size", "16", "--device", "cpu",
               "--workers", "0", "--epochs", "1", "--batch-size", "4", "--val-fraction", "0.25")
TRAIN_OVERRIDES = ("model.embed_dim=32", "model.depth=2", "model.num_heads=2",
                   "model.drop_path_rate=0.0", "train.explain_samples=0")


def train_argv(data: object, output: object, *flags: object,
               overrides: tuple[str, ...] = ()) -> list:
    """`vit train` on ``data`` with the tiny model; later flags and overrides win. With
    ``--pretrained`` the weights choose the architecture, so ``--model`` is left out."""
    fixed = TRAIN_FLAGS[2:] if "--pretrained" in flags else TRAIN_FLAGS
    return ["train", "--data", data, "--output", output, *fixed, *flags,
            *TRAIN_OVERRIDES, *overrides]


def run_cli(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    """``vit.cli.main`` in this process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str, *, tolerate: str | None = None) -> str:
    """The single line on stderr, which must start with ``error: ``.

    Lines matching the regex ``tolerate`` (e.g. one warning per unreadable file) may come first.
    """
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    others = [line for line in lines[:-1] if not (tolerate and re.search(tolerate, line))]
    assert not others, f"more than the error line on stderr:\n{err}"
    assert lines[-1].startswith("error: "), err
    return lines[-1]


class WritesAFile:
    """Unpickling this calls open(marker, "w"): code execution that leaves a trace."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))
