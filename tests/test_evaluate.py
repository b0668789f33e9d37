"""vit.inference.evaluate and `vit evaluate`: the report equals numbers computed by hand, folders are
matched to the checkpoint's classes by name, and evaluate.py agrees with predict_proba."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.images import make_colour_folder, write_image
from helpers.models import save_checkpoint, tiny_vit
from torch import nn

from vit.cli import main
from vit.errors import DataError
from vit.inference.classifier import Classifier
from vit.inference.evaluate import evaluate_folder, format_summary, match_classes, resolve_eval_dir

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ChannelShare(nn.Module):
    """logits = log(mean of each channel): the probabilities are the channels' shares of the
    colour, so for a solid (r, g, b) image p = (r, g, b) / (r + g + b), known by hand."""

    num_classes = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)).log()


MODEL_CLASSES = ["red", "green", "blue"]  # channel order; folders sort as blue, green, red
# folder -> solid colours, each summing to 250 so the shares are easy: (205, 35, 10) -> .82 ...
IMAGES = {
    "red": [(205, 35, 10), (100, 120, 30)],  # .82 red (right); .48 green (wrong)
    "green": [(20, 210, 20), (50, 155, 45)],  # .84 green, .62 green (both right)
    "blue": [(50, 45, 155), (130, 20, 100)],  # .62 blue (right); .52 red (wrong)
    "zebra": [(100, 100, 100)],  # a class the model does not know
}


@pytest.fixture
def hand_made(tmp_path) -> tuple[Classifier, Path]:
    for name, colours in IMAGES.items():
        for i, rgb in enumerate(colours):
            write_image(tmp_path / "data" / name / f"{i}.png",
                        np.full((32, 32, 3), rgb, dtype=np.uint8))
    (tmp_path / "data" / "red" / "broken.png").write_bytes(b"not a png")
    preprocess = {"img_size": 32, "mean": [0, 0, 0], "std": [1, 1, 1], "crop_pct": 1.0}
    clf = Classifier(ChannelShare(), classes=MODEL_CLASSES, preprocess=preprocess, device="cpu")
    return clf, tmp_path / "data"


def test_report_equals_the_numbers_computed_by_hand(hand_made, tmp_path):
    clf, data = hand_made
    report = evaluate_folder(clf, data, output_dir=tmp_path / "out", num_mistakes=8)

    p_true = [0.82, 0.40, 0.84, 0.62, 0.62, 0.40]  # probability of the true class, per image
    assert report["num_images"] == 6
    assert report["top1"] == pytest.approx(100 * 4 / 6)  # percent, as everywhere
    assert report["top5"] is None  # 3 classes: top-5 would be 100% whatever the model
    assert report["loss"] == pytest.approx(-sum(map(math.log, p_true)) / 6, abs=1e-5)
    # 15 bins: {.48, .52} both wrong, {.62, .62} both right, {.82, .84} both right
    ece = (abs(0 - (0.48 + 0.52)) + abs(2 - 1.24) + abs(2 - (0.82 + 0.84))) / 6
    assert report["ece"] == pytest.approx(ece, abs=1e-5)
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]  # rows = true
    expected = {  # precision, recall, f1 in percent
        "red": (50.0, 50.0, 50.0),
        "green": (100 * 2 / 3, 100.0, 80.0),
        "blue": (100.0, 50.0, 100 * 2 / 3),
    }
    for name, (precision, recall, f1) in expected.items():
        row = report["per_class"][name]
        assert (row["precision"], row["recall"], row["f1"]) == \
            pytest.approx((precision, recall, f1), abs=1e-4)
        assert row["support"] == 2
    assert report["unknown_classes"] == ["zebra"] and report["num_unknown_class_images"] == 1
    assert report["missing_classes"] == []
    assert [s["path"] for s in report["skipped"]] == [str(data / "red" / "broken.png")]

    out = tmp_path / "out"
    assert json.loads((out / "report.json").read_text()) == report
    for name in ("confusion_matrix.png", "reliability.png", "mistakes.png"):
        assert (out / name).read_bytes().startswith(PNG_SIGNATURE)
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    wrong = sorted((r for r in rows if r["correct"] == "0"), key=lambda r: -float(r["confidence"]))
    assert [(r["true"], r["predicted"], float(r["confidence"])) for r in wrong] == \
        [("blue", "red", pytest.approx(0.52)), ("red", "green", pytest.approx(0.48))]


def test_summary_table_shows_the_headline_numbers(hand_made):
    clf, data = hand_made
    text = format_summary(evaluate_folder(clf, data))
    assert "top-1 66.67%" in text and "top-5" not in text  # 3 classes: top-5 is always 100%
    assert "green     66.67%  100.00%   80.00%        2" in text
    assert "folders the model does not know (left out): 1" in text
    assert "unreadable files skipped: 1" in text


def test_classes_are_matched_by_name_and_missing_ones_reported():
    match = match_classes(["blue", "cat", "red"], ["red", "green", "blue"])
    assert match.targets == {"blue": 2, "red": 0}
    assert match.unknown == ["cat"] and match.missing == ["green"]


def test_no_matching_class_is_a_clear_error(tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "m.pt", tiny_vit(head_std=2.0), ["cat", "dog", "fox"])
    data = make_colour_folder(tmp_path / "data", per_class=1)
    code = main(["evaluate", "--checkpoint", str(ckpt), "--data", str(data),
                 "--output", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.splitlines()[-1].startswith("error: none of the class folders ['blue', 'green', "
                                           "'red'] is a class of this checkpoint")


@pytest.mark.parametrize(("subdirs", "chosen"), [
    (["train", "val", "test"], "test"),
    (["train", "val"], "val"),
    (["validation"], "validation"),
])
def test_test_split_is_preferred_then_val(tmp_path, subdirs, chosen):
    for name in subdirs:
        (tmp_path / name).mkdir()
    assert resolve_eval_dir(tmp_path) == tmp_path / chosen


def test_a_plain_class_folder_is_evaluated_as_it_is(tmp_path):
    (tmp_path / "cat").mkdir()
    assert resolve_eval_dir(tmp_path) == tmp_path


def test_training_split_alone_is_refused(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="no test/ or val/ folder"):
        resolve_eval_dir(tmp_path)


def _run_in_process(argv: list[str]) -> str:
    assert main(["evaluate", *argv]) == 0
    return ""


def _run_script(argv: list[str]) -> str:
    done = subprocess.run([sys.executable, str(REPO / "evaluate.py"), *argv],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("runner", [
    pytest.param(_run_in_process, id="in-process"),
    pytest.param(_run_script, marks=pytest.mark.slow, id="evaluate.py"),
])
def test_evaluate_accuracy_equals_predict_proba(tmp_path, capsys, runner):
    """`vit evaluate` (in process, and `python evaluate.py` in a subprocess) and
    predict_proba agree on the same folder."""
    data = make_colour_folder(tmp_path / "data", per_class=4)
    ckpt = save_checkpoint(tmp_path / "m.pt", tiny_vit(3, head_std=2.0), ["blue", "green", "red"])
    stdout = runner(["--checkpoint", str(ckpt), "--data", str(data), "--output",
                     str(tmp_path / "eval"), "--batch-size", "5"]) or capsys.readouterr().out
    report = json.loads((tmp_path / "eval" / "report.json").read_text())

    clf = Classifier.from_checkpoint(ckpt, device="cpu")
    files = sorted(data.glob("*/*.png"))
    targets = torch.tensor([clf.classes.index(f.parent.name) for f in files])
    accuracy = 100 * float((clf.predict_proba(files).argmax(dim=1) == targets).float().mean())
    assert 0 < accuracy < 100  # a model that is neither always right nor always wrong
    assert report["top1"] == pytest.approx(accuracy, abs=1e-4)
    assert f"top-1 {accuracy:.2f}%" in stdout


def test_evaluate_says_when_the_images_are_the_runs_own(tmp_path, capsys):
    """Evaluating on the folder a run trained and selected on repeats its scores: say so."""
    from helpers.images import make_folder
    from helpers.training import tiny_config

    from vit.cli import main
    from vit.training.trainer import train

    data = make_folder(tmp_path / "data", per_class=4)
    train(tiny_config(data, tmp_path / "run", "train.epochs=1"), show_progress=False)
    held_out = make_folder(tmp_path / "new", per_class=2)
    ckpt = str(tmp_path / "run" / "best.pt")

    assert main(["evaluate", "--checkpoint", ckpt, "--data", str(data),
                 "--output", str(tmp_path / "e1")]) == 0
    out = capsys.readouterr().out
    assert "3 of these 12 images are the run's own validation images" in out
    assert "9 of these 12 images are the run's training images" in out
    report = json.loads((tmp_path / "e1" / "report.json").read_text())
    assert report["seen_by_run"] == {"training": 9, "validation": 3}

    assert main(["evaluate", "--checkpoint", ckpt, "--data", str(held_out),
                 "--output", str(tmp_path / "e2")]) == 0
    assert "note:" not in capsys.readouterr().out
