"""`vit predict` end to end: a model trained here answers the same through the API, the
in-process CLI and the installed `vit` script; bad input gives one line and exit code 2."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.cli import WritesAFile, run_cli
from helpers.images import COLOURS, colour_image, make_colour_folder, write_image
from helpers.models import save_checkpoint, tiny_vit, train_colour_checkpoint

from vit.inference.classifier import Classifier
from vit.models.checkpoint import FORMAT_VERSION, load_checkpoint

VIT_SCRIPT = Path(sys.executable).with_name("vit")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, data folder): a tiny ViT trained to tell red, green and blue apart."""
    root = tmp_path_factory.mktemp("colours")
    data = make_colour_folder(root / "data", per_class=6)
    return train_colour_checkpoint(data, root / "best.pt"), data


def run_script(*argv: str) -> subprocess.CompletedProcess:
    if not VIT_SCRIPT.exists():
        pytest.skip("the vit console script is not installed (pip install -e .)")
    return subprocess.run([str(VIT_SCRIPT), *map(str, argv)], capture_output=True, text=True,
                          timeout=120)


def assert_same_predictions(got: list, expected: list) -> None:
    """Same labels in the same order; probabilities equal up to float rounding (batching)."""
    assert [[label for label, _ in top] for top in got] == \
        [[label for label, _ in top] for top in expected]
    assert [p for top in got for _, p in top] == \
        pytest.approx([p for top in expected for _, p in top], abs=1e-6)


def assert_one_error_line(err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert lines[-1].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[-1], err


# ---------------------------------------------------------------------------------------------
# the same answers three ways
# ---------------------------------------------------------------------------------------------


def test_trained_model_tells_the_colours_apart(trained):
    """Guards the agreement tests below against a model that predicts the same for everything."""
    ckpt, data = trained
    clf = Classifier.from_checkpoint(ckpt, device="cpu")
    files = sorted(data.glob("*/*.png"))
    predicted = [top[0][0] for top in clf.predict(files, topk=1)]
    assert predicted == [f.parent.name for f in files]


def _cli_json(capsys, ckpt: Path, data: Path) -> tuple[list[str], list]:
    """`vit predict` in process, JSON output, a folder argument, small batches."""
    code, out, err = run_cli(capsys, "predict", "--checkpoint", ckpt, data, "--topk", "2",
                             "--format", "json", "--batch-size", "4")
    assert code == 0, err
    records = json.loads(out)
    return ([r["path"] for r in records],
            [[(p["label"], p["probability"]) for p in r["predictions"]] for r in records])


def _script_csv(capsys, ckpt: Path, data: Path) -> tuple[list[str], list]:
    """The installed `vit` script in a subprocess, CSV output, a quoted glob argument."""
    done = run_script("predict", "--checkpoint", ckpt, str(data / "*" / "*.png"), "--topk", "2",
                      "--format", "csv")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    return ([r["path"] for r in rows[::2]],
            [[(r["label"], float(r["probability"])) for r in rows[i:i + 2]]
             for i in range(0, len(rows), 2)])


@pytest.mark.parametrize("runner", [
    pytest.param(_cli_json, id="in-process"),
    pytest.param(_script_csv, marks=pytest.mark.slow, id="vit-script"),
])
def test_cli_gives_the_same_predictions_as_the_api(trained, capsys, runner):
    ckpt, data = trained
    files = sorted(data.glob("*/*.png"))
    api = Classifier.from_checkpoint(ckpt, device="cpu").predict(files, topk=2)
    paths, predictions = runner(capsys, ckpt, data)
    assert paths == [str(f) for f in files]
    assert_same_predictions(predictions, api)


def test_table_format_is_aligned_and_output_goes_to_a_file(trained, capsys, tmp_path):
    ckpt, data = trained
    files = [data / "red" / "00.png", data / "blue" / "01.png"]
    out_file = tmp_path / "predictions.txt"
    code, out, _ = run_cli(capsys, "predict", "--checkpoint", ckpt, *files, "--topk", "3",
                           "--output", out_file)
    assert code == 0 and out == ""
    header, *lines = out_file.read_text().splitlines()
    assert header.split() == ["PATH", "PREDICTIONS"] and len(lines) == 2
    assert lines[0].split()[:2] == [str(files[0]), "red"]
    assert lines[1].split()[:2] == [str(files[1]), "blue"]
    assert lines[0].index("%") == lines[1].index("%")  # columns line up
    assert len(lines[0].split()) == 1 + 2 * 3


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------


def test_unreadable_file_among_good_ones_is_skipped_and_listed(trained, capsys, tmp_path):
    ckpt, data = trained
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    code, out, err = run_cli(capsys, "predict", "--checkpoint", ckpt, data / "red" / "00.png",
                             broken, notes, "--format", "json")
    assert code == 0
    records = json.loads(out)
    assert [r.get("error") is None for r in records] == [True, False, False]
    assert records[1]["predictions"] == [] and "broken.png" not in records[1]["error"]
    assert "WARNING" in err and str(broken) in err and str(notes) in err
    assert "Traceback" not in err


def test_csv_lists_the_error_of_a_skipped_file(trained, capsys, tmp_path):
    ckpt, data = trained
    broken = write_image(tmp_path / "ok.png", colour_image((0, 0, 0)))
    broken.write_bytes(broken.read_bytes()[:40])
    code, out, _ = run_cli(capsys, "predict", "--checkpoint", ckpt, data / "red" / "00.png",
                           broken, "--format", "csv", "--topk", "1")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and list(rows[0]) == ["path", "rank", "label", "probability", "error"]
    assert rows[0]["label"] == "red" and rows[0]["error"] == ""
    assert rows[1]["path"] == str(broken) and rows[1]["rank"] == "" and rows[1]["error"]


def test_all_inputs_unreadable_is_an_error(trained, capsys, tmp_path):
    ckpt, _ = trained
    bad = [tmp_path / "a.jpg", tmp_path / "b.png"]
    for path in bad:
        path.write_text("text")
    code, out, err = run_cli(capsys, "predict", "--checkpoint", ckpt, *bad)
    assert code == 2 and out == ""
    assert_one_error_line(err, "none of the 2 images could be read")


def test_missing_path_stops_before_any_work(capsys, tmp_path):
    """The checkpoint does not exist either: the path is checked first, before loading it."""
    code, out, err = run_cli(capsys, "predict", "--checkpoint", tmp_path / "nope.pt",
                             tmp_path / "missing.jpg")
    assert code == 2 and out == ""
    assert_one_error_line(err, "missing.jpg: no such file or folder")


@pytest.mark.parametrize("argv", [["--topk", "0"], ["--batch-size", "0"]])
def test_bad_numbers_are_refused(trained, capsys, argv):
    ckpt, data = trained
    code, _, err = run_cli(capsys, "predict", "--checkpoint", ckpt, data, *argv)
    assert code == 2
    assert_one_error_line(err, argv[0])


def _text_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.pt"
    path.write_text("these are my notes, not a checkpoint\n")
    return path


def _folder(tmp_path: Path) -> Path:
    (tmp_path / "run").mkdir()
    return tmp_path / "run"


def _newer_version(tmp_path: Path) -> Path:
    path = save_checkpoint(tmp_path / "new.pt", tiny_vit(head_std=2.0), ["red", "green", "blue"])
    ckpt = load_checkpoint(path)
    ckpt["format_version"] = FORMAT_VERSION + 1
    torch.save(ckpt, path)
    return path


def _state_dict(tmp_path: Path) -> Path:
    path = tmp_path / "weights.pt"
    torch.save(tiny_vit(head_std=2.0).state_dict(), path)
    return path


BAD_CHECKPOINTS = {
    "text file": (_text_file, "it is a text file"),
    "folder": (_folder, "is a folder"),
    "newer format": (_newer_version, "incompatible version"),
    "plain state_dict": (_state_dict, "plain state_dict"),
}
COMMANDS = {
    "predict": lambda ckpt, data, out: ["predict", "--checkpoint", ckpt, data],
    "evaluate": lambda ckpt, data, out: ["evaluate", "--checkpoint", ckpt, "--data", data,
                                         "--output", out],
    "export": lambda ckpt, data, out: ["export", "--checkpoint", ckpt, "--output",
                                       out / "m.safetensors"],
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", BAD_CHECKPOINTS)
def test_bad_checkpoint_is_one_clear_line(trained, capsys, tmp_path, command, case):
    _, data = trained
    make, message = BAD_CHECKPOINTS[case]
    code, out, err = run_cli(capsys, *COMMANDS[command](make(tmp_path), data, tmp_path / "out"))
    assert code == 2 and out == ""
    assert_one_error_line(err, message)


@pytest.fixture
def malicious_checkpoint(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pt"
    torch.save({"format": "vit-checkpoint", "payload": WritesAFile(marker)}, path)
    torch.load(path, weights_only=False)  # proves the file really runs code when unpickled
    assert marker.exists()
    marker.unlink()
    return path, marker


@pytest.mark.parametrize("command", COMMANDS)
def test_code_in_a_pickle_never_runs(trained, capsys, tmp_path, malicious_checkpoint, command):
    _, data = trained
    path, marker = malicious_checkpoint
    code, out, err = run_cli(capsys, *COMMANDS[command](path, data, tmp_path / "out"))
    assert not marker.exists()
    assert code == 2 and out == ""
    assert_one_error_line(err, "refused for safety")


@pytest.mark.slow
def test_end_to_end_from_vit_trainer(tmp_path, capsys):
    """vit.training.trainer.train writes best.pt; predict and evaluate read it and agree."""
    from vit.config import load_config
    from vit.training.trainer import train

    data = make_colour_folder(tmp_path / "data", per_class=8)
    cfg = load_config(None, [f"data.root={data}", "model.name=vit_nano_patch4_32",
                             "train.epochs=1", "train.batch_size=8", "data.workers=0",
                             f"train.output={tmp_path / 'run'}", "train.device=cpu",
                             "data.val_fraction=0.25"])
    summary = train(cfg, show_progress=False)
    ckpt = summary.run_dir / "best.pt"
    clf = Classifier.from_checkpoint(ckpt, device="cpu")
    assert clf.classes == sorted(COLOURS) and clf.img_size == 32

    code, out, err = run_cli(capsys, "predict", "--checkpoint", ckpt, data, "--format", "json",
                             "--topk", "1")
    assert code == 0, err
    files = sorted(data.glob("*/*.png"))
    assert [r["predictions"][0]["label"] for r in json.loads(out)] == \
        [top[0][0] for top in clf.predict(files, topk=1)]

    code, out, err = run_cli(capsys, "evaluate", "--checkpoint", ckpt, "--data", data,
                             "--output", tmp_path / "eval")
    assert code == 0, err
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    targets = torch.tensor([clf.classes.index(f.parent.name) for f in files])
    accuracy = (clf.predict_proba(files).argmax(dim=1) == targets).float().mean()
    assert report["top1"] == pytest.approx(100 * float(accuracy), abs=1e-4)  # percent
