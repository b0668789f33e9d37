"""Hostile input: a training folder full of odd and broken files, and checkpoints that run code.

`vit train`, `vit predict` and `vit explain` on the same tree: every file is either decoded to
the right pixels or skipped with its reason (data_report.json, one warning per file, one summary
line), and every command still succeeds. Every way of loading a checkpoint refuses a pickle that
would run code, before the code runs.
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import WritesAFile, error_line, run_cli, train_argv
from helpers.images import make_folder, write_huge_png
from PIL import Image

from vit.cli import main
from vit.data.images import load_image

RED = (255, 0, 0)

# ---------------------------------------------------------------------------------------------
# the files
# ---------------------------------------------------------------------------------------------


def _animated_gif(path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in (RED, (0, 255, 0), (0, 0, 255))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)


def _transparent_palette_png(path: Path) -> None:
    img = Image.new("P", (8, 8), 0)  # every pixel has index 0, which is transparent black
    img.putpalette([0, 0, 0, *RED] + [0] * 762)
    img.save(path, transparency=0)


def _exif_rotated_jpeg(path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise: 16x8 stored, 8x16 shown
    Image.new("RGB", (16, 8), RED).save(path, exif=exif, quality=95)


def _truncated_jpeg(path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=90)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@dataclass(frozen=True)
class Readable:
    write: Callable[[Path], None]
    rgb: tuple[int, int, int]  # every pixel after decoding
    size: tuple[int, int] = (8, 8)  # (width, height) after decoding
    tolerance: int = 1  # JPEG is lossy


READABLE = {
    "animated.gif": Readable(_animated_gif, RED),  # the first frame
    "still.gif": Readable(lambda p: Image.new("RGB", (8, 8), RED).save(p), RED),
    "cmyk.jpg": Readable(lambda p: Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(p, quality=95),
                         RED, tolerance=12),
    "sixteen_bit.png": Readable(  # 128 * 257: the 16-bit value that means 128
        lambda p: Image.fromarray(np.full((8, 8), 128 * 257, np.uint16)).save(p), (128, 128, 128)),
    "palette_transparent.png": Readable(_transparent_palette_png, (255, 255, 255)),  # on white
    "grayscale.png": Readable(lambda p: Image.new("L", (8, 8), 200).save(p), (200, 200, 200)),
    "rgba.png": Readable(lambda p: Image.new("RGBA", (8, 8), (*RED, 128)).save(p), (255, 127, 127)),
    "exif_rotated.jpg": Readable(_exif_rotated_jpeg, RED, size=(8, 16), tolerance=12),
    "one_pixel.png": Readable(lambda p: Image.new("RGB", (1, 1), RED).save(p), RED, size=(1, 1)),
}
UNREADABLE = {  # name -> (writer, what the reason must say)
    "truncated.jpg": (_truncated_jpeg, "truncated"),
    "empty.jpg": (lambda p: p.write_bytes(b""), "zero bytes"),
    "text.jpg": (lambda p: p.write_text("I am text, not a JPEG"), "not an image"),
    "bomb.png": (lambda p: write_huge_png(p, 30_000), "too large"),  # 900 Mpx in ~1 MB
}
NOT_AN_IMAGE_NAME = "notes.txt"  # training ignores it; named explicitly, predict reports it
GOOD_PER_CLASS = 4


def make_hostile_folder(root: Path) -> Path:
    """Three colour classes of good images; the odd and broken files sit in red/."""
    make_folder(root, per_class=GOOD_PER_CLASS)
    for name, readable in READABLE.items():
        readable.write(root / "red" / name)
    for name, (write, _) in UNREADABLE.items():
        write(root / "red" / name)
    (root / "red" / NOT_AN_IMAGE_NAME).write_text("shopping list")
    return root


@dataclass(frozen=True)
class HostileRun:
    data: Path
    run: Path
    code: int
    stdout: str
    stderr: str

    def path(self, name: str) -> str:
        return str(self.data / "red" / name)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> HostileRun:
    """`vit train` on the hostile folder, in this process, its output captured."""
    root = tmp_path_factory.mktemp("hostile")
    data = make_hostile_folder(root / "data")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in train_argv(data, root / "run")])
    return HostileRun(data, root / "run", code, out.getvalue(), err.getvalue())


def lines_naming(text: str, path: str) -> list[str]:
    return [line for line in text.splitlines() if path in line]


# ---------------------------------------------------------------------------------------------
# vit train
# ---------------------------------------------------------------------------------------------


def test_training_completes_and_lists_every_skipped_file_with_its_reason(hostile):
    assert hostile.code == 0, hostile.stderr
    report = json.loads((hostile.run / "data_report.json").read_text())
    reasons = {s["path"]: s["reason"] for s in report["skipped"]}
    assert sorted(reasons) == sorted(hostile.path(name) for name in UNREADABLE)
    for name, (_, says) in UNREADABLE.items():
        assert says in reasons[hostile.path(name)], name
    assert report["num_skipped"] == len(UNREADABLE)
    # everything readable was used: the plain images and every odd format
    counts = {c: report["train"]["per_class"][c] + report["val"]["per_class"][c]
              for c in report["classes"]}
    assert counts == {"blue": GOOD_PER_CLASS, "green": GOOD_PER_CLASS,
                      "red": GOOD_PER_CLASS + len(READABLE)}


def test_a_file_that_is_not_an_image_is_listed_as_ignored(hostile):
    report = json.loads((hostile.run / "data_report.json").read_text())
    assert hostile.path(NOT_AN_IMAGE_NAME) in report["ignored_files_examples"]
    assert report["num_ignored_files"] == 1


@pytest.mark.parametrize("name", READABLE)
def test_odd_formats_decode_to_the_right_pixels(hostile, name):
    """What training (and predict, explain) sees of each odd file, against hand-made pixels."""
    expected = READABLE[name]
    pixels = np.asarray(load_image(hostile.path(name))).astype(int)
    assert pixels.shape == (expected.size[1], expected.size[0], 3)
    assert np.abs(pixels - expected.rgb).max() <= expected.tolerance


def test_each_bad_file_is_warned_about_once_and_counted_in_one_line(hostile):
    for name in UNREADABLE:
        assert len(lines_naming(hostile.stderr, hostile.path(name))) == 1, name
    for name in READABLE:
        assert lines_naming(hostile.stderr, hostile.path(name)) == [], name
    summaries = [line for line in hostile.stderr.splitlines() if re.search(r"(?i)skipped", line)
                 and not any(hostile.path(name) in line for name in UNREADABLE)]
    assert len(summaries) == 1, "\n".join(summaries)
    assert re.search(rf"\b{len(UNREADABLE)}\b", summaries[0])


# ---------------------------------------------------------------------------------------------
# vit predict, vit explain on the same files
# ---------------------------------------------------------------------------------------------

BAD_NAMES = (*UNREADABLE, NOT_AN_IMAGE_NAME)


def hostile_files(hostile: HostileRun) -> list[str]:
    return [hostile.path(name) for name in sorted((*READABLE, *BAD_NAMES))]


def assert_one_warning_per_bad_file(hostile: HostileRun, err: str) -> None:
    for name in BAD_NAMES:
        assert len(lines_naming(err, hostile.path(name))) == 1, (name, err)
    assert len([line for line in err.splitlines() if line.strip()]) == len(BAD_NAMES), err


def test_predict_answers_the_good_files_and_warns_once_per_bad_one(hostile, capsys):
    code, out, err = run_cli(capsys, "predict", "--checkpoint", hostile.run / "best.pt",
                             *hostile_files(hostile), "--format", "json", "--device", "cpu")
    assert code == 0, err
    records = {r["path"]: r for r in json.loads(out)}
    assert sorted(records) == sorted(hostile_files(hostile))
    for name in READABLE:
        record = records[hostile.path(name)]
        assert "error" not in record and len(record["predictions"]) == 3, record
    for name in BAD_NAMES:
        record = records[hostile.path(name)]
        assert record["error"] and record["predictions"] == [], record
    assert_one_warning_per_bad_file(hostile, err)


@pytest.mark.slow
def test_explain_draws_the_good_files_and_warns_once_per_bad_one(hostile, capsys, tmp_path):
    code, out, err = run_cli(capsys, "explain", "--checkpoint", hostile.run / "best.pt",
                             *hostile_files(hostile), "--output", tmp_path, "--device", "cpu")
    assert code == 0, err
    drawn = sorted(p.name for p in tmp_path.glob("*_attnlrp.png"))
    assert drawn == sorted(f"{Path(name).stem}_attnlrp.png" for name in READABLE)
    assert (tmp_path / "grid.png").is_file()
    lines = out.splitlines()  # one line per drawn overlay, then the summary and the colour key
    assert [line.split()[0] for line in lines[:len(READABLE)]] == [
        line.split()[0] for line in lines if line.startswith(str(tmp_path))]
    assert len(lines) == len(READABLE) + 2 and lines[-2].startswith(f"{len(READABLE)} images")
    assert_one_warning_per_bad_file(hostile, err)


# ---------------------------------------------------------------------------------------------
# untrusted checkpoints
# ---------------------------------------------------------------------------------------------


def _torch_save(obj: object, path: Path) -> None:
    torch.save(obj, path)  # the zip container torch.save writes


def _plain_pickle(obj: object, path: Path) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))  # what older tools wrote as .pth


def _unpickle(path: Path) -> None:
    pickle.loads(path.read_bytes())


FORMATS = {  # name -> (write, load without any safety)
    "torch.save": (_torch_save, lambda path: torch.load(path, weights_only=False)),
    "pickle": (_plain_pickle, _unpickle),
}


@pytest.fixture(params=FORMATS)
def evil_checkpoint(request, tmp_path) -> tuple[Path, Path]:
    """(checkpoint, marker): unpickling the checkpoint creates the marker file."""
    write, unsafe_load = FORMATS[request.param]
    marker, path = tmp_path / "pwned.txt", tmp_path / "evil.pt"
    write({"format": "vit-checkpoint", "model": WritesAFile(marker)}, path)
    unsafe_load(path)  # proves the file really runs code when unpickled
    assert marker.exists()
    marker.unlink()
    return path, marker


LOADERS = {  # (checkpoint, clean data folder, output folder) -> command line
    "predict": lambda c, d, o: ["predict", "--checkpoint", c, d],
    "evaluate": lambda c, d, o: ["evaluate", "--checkpoint", c, "--data", d, "--output", o],
    "explain": lambda c, d, o: ["explain", "--checkpoint", c, d, "--output", o],
    "export": lambda c, d, o: ["export", "--checkpoint", c, "--output", o / "m.safetensors"],
    "train --resume": lambda c, d, o: ["train", "--resume", c],
    "train --pretrained": lambda c, d, o: train_argv(d, o, "--pretrained", c),
}


@pytest.mark.parametrize("command", LOADERS)
def test_a_pickle_that_runs_code_is_refused_by_every_loader(
        command, evil_checkpoint, tmp_path, capsys):
    path, marker = evil_checkpoint
    data = make_folder(tmp_path / "data", per_class=2)
    code, out, err = run_cli(capsys, *LOADERS[command](path, data, tmp_path / "out"))
    assert not marker.exists(), "the pickle ran code"
    assert code == 2 and out == "", err
    line = error_line(err)
    assert str(path) in line and "refus" in line and "io.open" in line, line
