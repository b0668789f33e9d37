"""User mistakes: every command answers with one ``error:`` line that names the culprit, exit
code 2 and no traceback; ``--debug`` brings the traceback back.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers.cli import error_line, run_cli, train_argv
from helpers.images import make_folder
from helpers.models import save_checkpoint, tiny_vit

from vit.cli import main
from vit.errors import DataError

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------------
# the mistakes
# ---------------------------------------------------------------------------------------------

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
NOT_A_FOLDER = re.compile(r"(?i)not a (directory|folder)|is a file")
SKIP_WARNING = r"WARNING Skipp"  # the per-file warnings of the pre-flight check


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, Path]:
    """What users point commands at: good and broken folders, files, a checkpoint."""
    root = tmp_path_factory.mktemp("mistakes")
    data = make_folder(root / "data", per_class=4)
    one_class = make_folder(root / "one_class", classes=("ants",), per_class=6)
    broken = make_folder(root / "broken", classes=("red", "green"), per_class=4)
    (broken / "broken_class").mkdir()
    for i in range(2):  # image names, text inside: nothing in this class can be decoded
        (broken / "broken_class" / f"{i}.jpg").write_text("not an image")
    for name in ("empty", "run_folder"):
        (root / name).mkdir()
    (root / "a_file").write_text("a file, where a folder is expected")
    (root / "notes.pt").write_text("my notes, not a checkpoint\n")
    ckpt = save_checkpoint(root / "best.pt", tiny_vit(head_std=2.0), ["blue", "green", "red"])
    return {"data": data, "broken": broken, "one_class": one_class, "empty": root / "empty",
            "missing": root / "no_such_folder", "folder": root / "run_folder",
            "file": root / "a_file", "text": root / "notes.pt", "ckpt": ckpt,
            "image": data / "red" / "000.png"}


@dataclass(frozen=True)
class Mistake:
    """A command line and what its error line must contain; ``{name}`` is a path of
    ``places`` (``{out}``: the test's tmp_path). Fragments are substrings or regexes."""

    argv: tuple[str, ...]
    says: tuple[str | re.Pattern, ...]
    tolerate: str | None = None  # regex of lines allowed before the error line
    marks: tuple = ()


def train(data: str, *flags: str, overrides: tuple[str, ...] = ()) -> tuple[str, ...]:
    return tuple(train_argv(data, "{out}/run", *flags, overrides=overrides))


MISTAKES = {
    # vit train
    "train: missing data folder": Mistake(train("{missing}"), ("{missing}", "does not exist")),
    "train: empty data folder": Mistake(train("{empty}"), ("{empty}", "no class sub-folders")),
    "train: class folder without readable images": Mistake(
        train("{broken}"), ("broken_class", "readable"), tolerate=SKIP_WARNING),
    # issue 25: one class trained 30 epochs to "best val top-1 100.00%", exit 0
    "train: a single class": Mistake(
        train("{one_class}"), ("{one_class}", "only one class, 'ants'", "at least two")),
    "train: unknown model": Mistake(train("{data}", "--model", "vit_hugee"), ("'vit_hugee'",)),
    "train: unknown config key": Mistake(
        train("{data}", overrides=("train.epochz=3",)), ("'train.epochz'",)),
    "train: a key in the wrong section": Mistake(
        train("{data}", overrides=("train.label_smoothing=0.2",)),
        ("'train.label_smoothing'", "use loss.label_smoothing")),
    "train: a folder without --data": Mistake(("train", "{data}"), ("did you mean --data {data}",)),
    "train: --model with --pretrained": Mistake(
        (*train("{data}"), "--pretrained", "{ckpt}"), ("--model vit_nano_patch4_32",
                                                       "--pretrained {ckpt}", "drop --model")),
    "train: --device cuda without a GPU": Mistake(
        train("{data}", "--device", "cuda"), ("--device cuda",), marks=(NO_GPU,)),
    "train: --precision fp16 on the CPU": Mistake(
        train("{data}", "--precision", "fp16"), ("--precision fp16", "CUDA")),
    "train: --batch-size 0": Mistake(train("{data}", "--batch-size", "0"), ("--batch-size",)),
    "train: output folder under a file": Mistake(
        train("{data}", "--output", "{file}/run"), ("{file}", NOT_A_FOLDER)),
    "train: --val-fraction 1.5": Mistake(
        train("{data}", "--val-fraction", "1.5"), ("--val-fraction", "1.5")),
    "train: unknown --freeze": Mistake(
        train("{data}", "--freeze", "backbon"), ("--freeze", "'backbon'")),
    "train --resume: a folder without last.pt": Mistake(
        ("train", "--resume", "{folder}"), ("{folder}", "last.pt")),
    "train --resume: a text file": Mistake(
        ("train", "--resume", "{text}"), ("{text}", "text file")),
    "train --pretrained: a folder": Mistake(
        train("{data}", "--pretrained", "{folder}"), ("{folder}", "is a folder")),
    "train --pretrained: a text file": Mistake(
        train("{data}", "--pretrained", "{text}"), ("{text}", "text file")),
    # vit predict (a missing path and --batch-size 0: test_cli_predict.py)
    "predict: empty folder": Mistake(
        ("predict", "--checkpoint", "{ckpt}", "{empty}"), ("{empty}", "no images")),
    "predict: --device cuda without a GPU": Mistake(
        ("predict", "--checkpoint", "{ckpt}", "{image}", "--device", "cuda"), ("--device cuda",),
        marks=(NO_GPU,)),
    "predict: output file under a file": Mistake(
        ("predict", "--checkpoint", "{ckpt}", "{image}", "--output", "{file}/p.csv"),
        ("{file}", NOT_A_FOLDER)),
    # vit evaluate
    "evaluate: missing data folder": Mistake(
        ("evaluate", "--checkpoint", "{ckpt}", "--data", "{missing}", "--output", "{out}"),
        ("{missing}", "does not exist")),
    "evaluate: empty data folder": Mistake(
        ("evaluate", "--checkpoint", "{ckpt}", "--data", "{empty}", "--output", "{out}"),
        ("{empty}", "no class sub-folders")),
    "evaluate: --device cuda without a GPU": Mistake(
        ("evaluate", "--checkpoint", "{ckpt}", "--data", "{data}", "--output", "{out}",
         "--device", "cuda"), ("--device cuda",), marks=(NO_GPU,)),
    "evaluate: --batch-size 0": Mistake(
        ("evaluate", "--checkpoint", "{ckpt}", "--data", "{data}", "--output", "{out}",
         "--batch-size", "0"), ("--batch-size",)),
    "evaluate: output folder under a file": Mistake(
        ("evaluate", "--checkpoint", "{ckpt}", "--data", "{data}", "--output", "{file}/eval"),
        ("{file}", NOT_A_FOLDER)),
    # vit explain
    "explain: checkpoint is a folder": Mistake(
        ("explain", "--checkpoint", "{folder}", "{image}", "--output", "{out}"),
        ("{folder}", "is a folder")),
    "explain: checkpoint is a text file": Mistake(
        ("explain", "--checkpoint", "{text}", "{image}", "--output", "{out}"),
        ("{text}", "text file")),
    "explain: --device cuda without a GPU": Mistake(
        ("explain", "--checkpoint", "{ckpt}", "{image}", "--output", "{out}", "--device", "cuda"),
        ("--device cuda",), marks=(NO_GPU,)),
    "explain: --batch-size 0": Mistake(
        ("explain", "--checkpoint", "{ckpt}", "{image}", "--output", "{out}", "--batch-size", "0"),
        ("--batch-size",)),
    "explain: output folder under a file": Mistake(
        ("explain", "--checkpoint", "{ckpt}", "{image}", "--output", "{file}/x"),
        ("{file}", NOT_A_FOLDER)),
    # vit export (bad checkpoints: test_cli_predict.py)
    "export: output file under a file": Mistake(
        ("export", "--checkpoint", "{ckpt}", "--output", "{file}/m.safetensors"),
        ("{file}", NOT_A_FOLDER)),
}


def fill(template: str, places: dict[str, Path], out: Path) -> str:
    return template.format(**places, out=out)


def command_line(name: str, places: dict[str, Path], out: Path) -> list[str]:
    return [fill(a, places, out) for a in MISTAKES[name].argv]


def assert_says(line: str, fragments: tuple[str | re.Pattern, ...]) -> None:
    for fragment in fragments:
        if isinstance(fragment, re.Pattern):
            assert fragment.search(line), f"{fragment.pattern!r} not in {line!r}"
        else:
            assert fragment in line, f"{fragment!r} not in {line!r}"


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=m.marks) for name, m in MISTAKES.items()])
def test_a_mistake_is_one_line_naming_the_culprit(name, places, tmp_path, capsys):
    mistake = MISTAKES[name]
    code, _, err = run_cli(capsys, *command_line(name, places, tmp_path))
    assert code == 2, err
    line = error_line(err, tolerate=mistake.tolerate)
    assert_says(line, tuple(f if isinstance(f, re.Pattern) else fill(f, places, tmp_path)
                            for f in mistake.says))


def test_debug_raises_the_same_error_instead(places, tmp_path, capsys):
    """--debug: the exception escapes main (Python prints its traceback), same message."""
    argv = command_line("train: missing data folder", places, tmp_path)
    _, _, err = run_cli(capsys, *argv)
    line = error_line(err)
    with pytest.raises(DataError) as info:
        main([*argv[:1], "--debug", *argv[1:]])
    assert f"error: {info.value}" == line


@pytest.mark.slow
def test_no_traceback_reaches_the_terminal(places, tmp_path):
    """A real `python train.py` process: one line on stderr, nothing on stdout, exit 2."""
    argv = command_line("train: unknown config key", places, tmp_path)
    proc = subprocess.run([sys.executable, "train.py", *argv[1:]], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert_says(error_line(proc.stderr), ("'train.epochz'",))


def test_a_class_without_training_images_stops_the_run():
    """Issue 25: a class left with no training image (all held out or unreadable) is named
    before any work; so is a data set of one class, from any source (shards too)."""
    from vit.data.sources.base import check_classes

    check_classes(["ants", "bees"], [3, 1], source="DIR")
    check_classes(["ants", "bees"], None, source="shards/train-*.tar")  # counts unknown
    with pytest.raises(DataError, match=r"no training image left for 1 class of DIR: \['bees'\]"):
        check_classes(["ants", "bees"], [3, 0], source="DIR")
    with pytest.raises(DataError, match="only one class, 'ants'"):
        check_classes(["ants"], None, source="shards/train-*.tar")
