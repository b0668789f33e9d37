"""Overlay pictures that tell the truth: the true label (from the folder), the prediction and
its probability, mistakes in red; the plain image beside the overlay at a recognisable size;
one renderer for `vit explain` and the end of a run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from helpers.images import make_folder
from helpers.models import save_checkpoint, tiny_vit
from PIL import Image

import vit.figures.overlay_files as overlays
from vit.explain.overlay import DEFAULT_COLORMAP
from vit.figures.overlay_files import (
    DISPLAY_PX,
    ExplainedImage,
    _framed_pair,
    explain_files,
    tile_title,
    true_label,
)

CLASSES = ["blue", "green", "red"]


def test_the_true_label_comes_from_a_folder_named_after_a_class():
    assert true_label("data/val/red/001.png", CLASSES) == "red"
    assert true_label("photos/holiday/001.png", CLASSES) is None


def test_titles_name_truth_prediction_probability_and_mistakes():
    right = ExplainedImage(Path("v/red/1.png"), None, [("red", 0.9), ("blue", 0.1)],
                           true_label="red")
    wrong = ExplainedImage(Path("v/red/2.png"), None, [("blue", 0.59), ("red", 0.4)],
                           true_label="red")
    unknown = ExplainedImage(Path("x/3.png"), None, [("green", 0.7)])
    assert tile_title(right) == "true red | predicted red 90%"
    assert tile_title(wrong) == "true red | predicted blue 59%  WRONG"
    assert tile_title(wrong, topk=2) == "true red | predicted blue 59%, red 40%  WRONG"
    assert tile_title(unknown) == "3: predicted green 70%"
    assert (right.wrong, wrong.wrong, unknown.wrong) == (False, True, None)


def test_a_mistake_gets_a_red_frame_and_the_image_stays_beside_its_overlay():
    image = np.full((10, 12, 3), 7, np.uint8)
    heat = np.full((10, 12, 3), 200, np.uint8)
    tile = _framed_pair(image, heat, overlays.WRONG)
    assert tile.shape == (10 + 2 * overlays.FRAME_PX, 2 * 12 + 3 * overlays.FRAME_PX, 3)
    assert tuple(tile[0, 0]) == (220, 20, 60)  # crimson
    inner = tile[overlays.FRAME_PX:-overlays.FRAME_PX, overlays.FRAME_PX:-overlays.FRAME_PX]
    assert np.array_equal(inner[:, :12], image) and np.array_equal(inner[:, -12:], heat)


def test_explain_files_marks_mistakes_and_draws_at_a_recognisable_size(tmp_path, monkeypatch):
    data = make_folder(tmp_path / "val", classes=("red", "green"), per_class=3, size=16)
    ckpt = save_checkpoint(tmp_path / "best.pt", tiny_vit(head_std=2.0), CLASSES)
    drawn = []
    real_overlay = overlays.overlay
    monkeypatch.setattr(overlays, "overlay",
                        lambda image, sal, **kw: drawn.append((image.shape, kw)) or
                        real_overlay(image, sal, **kw))
    paths = sorted(data.rglob("*.png"))
    results = explain_files(checkpoint=ckpt, paths=paths, output=tmp_path / "out", device="cpu")
    assert [r.true_label for r in results] == [p.parent.name for p in paths]
    assert [r.wrong for r in results] == [r.predictions[0][0] != r.true_label for r in results]
    # 16 px inputs are drawn at DISPLAY_PX, with the perceptually uniform map at alpha 0.5
    assert {shape for shape, _ in drawn} == {(DISPLAY_PX, DISPLAY_PX, 3)}
    assert {kw["colormap"] for _, kw in drawn} == {DEFAULT_COLORMAP} == {"inferno"}
    assert {kw["alpha"] for _, kw in drawn} == {0.5}
    grid = Image.open(tmp_path / "out" / "grid.png")
    assert grid.width >= 2 * DISPLAY_PX


def test_the_end_of_a_run_uses_the_same_renderer(tmp_path, monkeypatch):
    from vit.training import run_files

    calls = []
    monkeypatch.setattr(overlays, "explain_files", lambda **kw: calls.append(kw))
    run_files.write_overlays(tmp_path, ["v/red/1.png", "v/blue/2.png"], device="cpu")
    assert len(calls) == 1 and calls[0]["paths"] == ["v/red/1.png", "v/blue/2.png"]
