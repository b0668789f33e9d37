"""Label files (--data labels.csv: path,label[,split]) for vit train, evaluate and explain."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.training import tiny_config
from PIL import Image

from vit.cli import main
from vit.data.labels import expand_with_labels, read_label_file
from vit.errors import DataError
from vit.training.trainer import train

COLOURS = {"red": 0, "green": 1, "blue": 2}


def make_flat_images(root: Path, per_class: int = 8) -> list[tuple[str, str]]:
    """Images of every class side by side in one folder (no class folders): (name, label)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, channel in COLOURS.items():
        for i in range(per_class):
            img = rng.integers(0, 80, size=(16, 16, 3), dtype=np.uint8)
            img[..., channel] += 150
            name = f"img_{label[0]}{i:02d}.png"
            Image.fromarray(img).save(root / name)
            rows.append((name, label))
    return rows


def write_csv(path: Path, header: str, lines: list[str]) -> Path:
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


@pytest.fixture
def labelled(tmp_path) -> Path:
    """data/labels.csv with paths relative to data/, plus a missing file and an empty label."""
    rows = make_flat_images(tmp_path / "data" / "imgs")
    lines = [f"imgs/{name},{label}" for name, label in rows]
    Image.new("RGB", (16, 16)).save(tmp_path / "data" / "imgs" / "unlabelled.png")
    lines += ["imgs/gone.png,red", "imgs/unlabelled.png,", ""]
    return write_csv(tmp_path / "data" / "labels.csv", "path,label", lines)


def test_reading_a_label_file(tmp_path, labelled):
    labels = read_label_file(labelled)
    assert len(labels.rows) == 24 and labels.classes == ["blue", "green", "red"]
    assert labels.rows[0].path == str(tmp_path / "data" / "imgs" / "img_r00.png")
    assert [s["reason"] for s in labels.skipped] == [
        "listed in labels.csv line 26 but no such file", "empty label in labels.csv line 27"]
    # columns in any order, other columns ignored, a split column read case-insensitively
    other = write_csv(tmp_path / "data" / "other.csv", "Label,id,Path,SPLIT",
                      ["red,1,imgs/img_r00.png,Train", "red,2,imgs/img_r01.png,valid",
                       "blue,3,imgs/img_b00.png,test"])
    assert [(r.label, r.split) for r in read_label_file(other).rows] == [
        ("red", "train"), ("red", "val"), ("blue", "test")]


@pytest.mark.parametrize("header, lines, message", [
    ("file,class", ["imgs/img_r00.png,red"], r"lacks \['path', 'label'\].*path,label"),
    ("path,label,split", ["imgs/img_r00.png,red,holdout"],
     "line 2: split 'holdout' is none of train, val"),
    ("path,label", ["imgs/gone.png,red"], "no usable image"),
])
def test_unusable_label_files_are_one_clear_error(tmp_path, labelled, header, lines, message):
    bad = write_csv(tmp_path / "data" / "bad.csv", header, lines)
    with pytest.raises(DataError, match=message):
        read_label_file(bad)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        read_label_file(tmp_path / "empty.csv")


def test_train_on_a_label_file_reports_skipped_rows(tmp_path, labelled):
    (labelled.parent / "imgs" / "img_g03.png").write_bytes(b"not a png")  # fails the check
    summary = train(tiny_config(labelled, tmp_path / "run", "train.epochs=1"),
                    show_progress=False)
    report = json.loads((summary.run_dir / "data_report.json").read_text())
    assert report["classes"] == ["blue", "green", "red"]
    assert sorted(Path(s["path"]).name for s in report["skipped"]) == [
        "gone.png", "img_g03.png", "unlabelled.png"]
    assert report["num_skipped"] == 3
    assert report["train"]["images"] + report["val"]["images"] == 23
    split = json.loads((summary.run_dir / "split.json").read_text())
    assert split["kind"] == "label_file" and len(split["val_files"]) == report["val"]["images"]
    assert report["val"]["per_class"] == {"blue": 2, "green": 2, "red": 2}  # stratified


def test_a_split_column_chooses_validation_and_evaluate_takes_the_test_rows(tmp_path, capsys):
    rows = make_flat_images(tmp_path / "data" / "imgs")
    split = {0: "val", 1: "test", 2: "test"}
    lines = [f"imgs/{n},{lab},{split.get(i % 8, 'train')}" for i, (n, lab) in enumerate(rows)]
    labels = write_csv(tmp_path / "data" / "labels.csv", "path,label,split",
                       [*lines, "imgs/missing.png,blue,test"])
    summary = train(tiny_config(labels, tmp_path / "run", "train.epochs=1"), show_progress=False)
    val_files = json.loads((summary.run_dir / "split.json").read_text())["val_files"]
    assert sorted(Path(p).name for p in val_files) == sorted(
        n for i, (n, _) in enumerate(rows) if i % 8 == 0)
    report = json.loads((summary.run_dir / "data_report.json").read_text())
    assert report["train"]["images"] == 15 and report["val"]["images"] == 3

    assert main(["evaluate", "--checkpoint", str(summary.run_dir / "best.pt"), "--data",
                 str(labels), "--output", str(tmp_path / "eval"), "--device", "cpu"]) == 0
    evaluation = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert evaluation["num_images"] == 6  # the test rows, not the training ones
    assert [Path(s["path"]).name for s in evaluation["skipped"]] == ["missing.png"]
    assert evaluation["seen_by_run"] == {"training": 0, "validation": 0}
    # the training rows, named by a CSV without a split column: counted as seen in training
    seen = write_csv(tmp_path / "data" / "seen.csv", "path,label",
                     [f"imgs/{n},{lab}" for i, (n, lab) in enumerate(rows) if i % 8 == 3])
    assert main(["evaluate", "--checkpoint", str(summary.run_dir / "best.pt"), "--data",
                 str(seen), "--output", str(tmp_path / "eval2"), "--device", "cpu"]) == 0
    evaluation = json.loads((tmp_path / "eval2" / "report.json").read_text())
    assert evaluation["seen_by_run"] == {"training": 3, "validation": 0}


def test_explain_titles_use_the_label_file(tmp_path, labelled):
    from vit.figures.overlay_files import explain_files

    summary = train(tiny_config(labelled, tmp_path / "run", "train.epochs=1"),
                    show_progress=False)
    paths, labels = expand_with_labels([str(labelled)])
    assert len(paths) == 24
    results = explain_files(checkpoint=summary.run_dir / "best.pt", paths=paths[:4],
                            output=tmp_path / "explain", labels=labels, device="cpu")
    assert [r.true_label for r in results] == ["red"] * 4  # the folder "imgs" names no class
    few = write_csv(labelled.parent / "few.csv", "path,label",
                    ["imgs/img_b01.png,blue", "imgs/img_g01.png,green", "imgs/gone.png,red"])
    assert main(["explain", "--checkpoint", str(summary.run_dir / "best.pt"), str(few),
                 "--output", str(tmp_path / "explain2"), "--device", "cpu"]) == 0
    assert sorted(p.name for p in (tmp_path / "explain2").glob("*_attnlrp.png")) == [
        "img_b01_attnlrp.png", "img_g01_attnlrp.png"]
