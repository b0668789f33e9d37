"""vit.data.synthetic: the built-in shapes dataset (determinism, boxes, layout, idempotence)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vit.data.folders import resolve_data_dirs, scan_folder
from vit.data.synthetic import (
    BOXES_FILE,
    MANIFEST_FILE,
    SHAPES,
    load_boxes,
    make_shapes_dataset,
    render_shape_image,
)
from vit.errors import ConfigError, DataError

CLASSES = ("circle", "square", "triangle")


def digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root``."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def mtimes(root: Path) -> dict[str, int]:
    return {p.as_posix(): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = make_shapes_dataset(tmp_path / "a", num_per_class=4, classes=CLASSES, seed=7)
    b = make_shapes_dataset(tmp_path / "b", num_per_class=4, classes=CLASSES, seed=7)
    c = make_shapes_dataset(tmp_path / "c", num_per_class=4, classes=CLASSES, seed=8)
    assert digest(a) == digest(b)
    images = {k: v for k, v in digest(a).items() if k.endswith(".png")}
    assert len(images) == 12
    other = digest(c)
    assert all(other[k] != v for k, v in images.items())


def test_layout_is_an_image_folder_with_a_box_per_image(tmp_path):
    root = make_shapes_dataset(tmp_path, num_per_class=5, classes=CLASSES, img_size=40)
    scan = scan_folder(root)
    assert scan.classes == sorted(CLASSES) and len(scan.samples) == 15
    assert scan.ignored == []  # boxes.json and dataset.json sit beside the class folders
    boxes = load_boxes(root)
    assert sorted(boxes) == sorted(Path(p).relative_to(root).as_posix() for p, _ in scan.samples)
    for key, (x0, y0, x1, y1) in boxes.items():
        assert Image.open(root / key).size == (40, 40)
        assert 0 <= x0 < x1 <= 40 and 0 <= y0 < y1 <= 40
        side = max(x1 - x0, y1 - y0) / 40
        assert 0.2 <= side <= 0.55, key


def test_boxes_enclose_the_object_pixels(tmp_path):
    """Pixels far from the background colour fill the box, and reach (nearly) all its sides."""
    root = make_shapes_dataset(tmp_path, num_per_class=6, classes=SHAPES)
    for key, (x0, y0, x1, y1) in load_boxes(root).items():
        img = np.asarray(Image.open(root / key)).astype(float)
        inside = np.zeros(img.shape[:2], bool)
        inside[y0:y1, x0:x1] = True
        background = np.median(img[~inside], axis=0)
        distinct = np.linalg.norm(img - background, axis=-1) > 80
        assert distinct[inside].mean() > 0.2, key
        ys, xs = np.nonzero(distinct & inside)
        found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        assert np.abs(found - [x0, y0, x1, y1]).max() <= 2, (key, found)


@pytest.mark.parametrize("shape", SHAPES)
def test_render_box_is_the_bounding_box_of_the_coverage(shape):
    image, coverage, box = render_shape_image(shape, np.random.default_rng(3), 48)
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8
    ys, xs = np.nonzero(coverage)
    assert box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert coverage.max() == pytest.approx(1.0)


def test_shapes_differ_between_classes():
    """Same position, size and angle, different shape: the masks must overlap clearly less."""
    masks = [render_shape_image(s, np.random.default_rng(0), 48)[1] for s in SHAPES]
    for i in range(len(SHAPES)):
        for j in range(i + 1, len(SHAPES)):
            a, b = masks[i], masks[j]
            iou = np.minimum(a, b).sum() / np.maximum(a, b).sum()
            assert iou < 0.8, (SHAPES[i], SHAPES[j], iou)


def test_val_fraction_writes_train_and_val_folders(tmp_path):
    root = make_shapes_dataset(tmp_path, num_per_class=10, classes=CLASSES, val_fraction=0.2)
    train_dir, val_dir = resolve_data_dirs(root)
    assert (train_dir, val_dir) == (root / "train", root / "val")
    assert len(scan_folder(train_dir).samples) == 24
    assert len(scan_folder(val_dir).samples) == 6
    assert "val/circle/00009.png" in load_boxes(root)


def test_second_call_reuses_and_changed_params_regenerate(tmp_path):
    root = make_shapes_dataset(tmp_path, num_per_class=3, classes=CLASSES)
    before = mtimes(root)
    make_shapes_dataset(tmp_path, num_per_class=3, classes=CLASSES)
    assert mtimes(root) == before

    make_shapes_dataset(tmp_path, num_per_class=2, classes=("ring", "cross"))
    assert sorted(p.name for p in root.iterdir()) == sorted(
        ["cross", "ring", BOXES_FILE, MANIFEST_FILE])
    assert len(load_boxes(root)) == 4
    assert json.loads((root / MANIFEST_FILE).read_text())["params"]["num_per_class"] == 2


def test_incomplete_dataset_is_regenerated(tmp_path):
    root = make_shapes_dataset(tmp_path, num_per_class=2, classes=CLASSES)
    reference = digest(root)
    (root / "square" / "00001.png").unlink()  # e.g. an interrupted or damaged run
    make_shapes_dataset(tmp_path, num_per_class=2, classes=CLASSES)
    assert digest(root) == reference


def test_refuses_to_write_into_a_foreign_folder(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "photo.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="not empty"):
        make_shapes_dataset(tmp_path, num_per_class=2)
    assert (tmp_path / "cat" / "photo.jpg").exists()


def test_a_tampered_manifest_cannot_delete_outside_the_folder(tmp_path):
    outside = tmp_path / "keep"
    outside.mkdir()
    (outside / "important.txt").write_text("x")
    root = tmp_path / "shapes"
    root.mkdir()
    # Only targets inside tmp_path: if this protection ever breaks, the test must not be able
    # to delete anything outside its own temporary folder.
    (root / MANIFEST_FILE).write_text(json.dumps({"dirs": ["../keep", "keep", "."]}))
    (root / "circle").mkdir()
    (root / "circle" / "notes.txt").write_text("foreign file inside a class folder")
    make_shapes_dataset(root, num_per_class=1, classes=CLASSES)
    assert (outside / "important.txt").exists()
    assert (root / "circle" / "notes.txt").exists()  # only the generator's own files are removed
    assert len(load_boxes(root)) == 3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(classes=("circle", "hexagon")), "unknown shapes"),
        (dict(classes=("circle",)), "at least 2"),
        (dict(val_fraction=1.0), "val_fraction"),
        (dict(num_per_class=0), "num_per_class"),
        (dict(img_size=8), "img_size"),
    ],
)
def test_bad_parameters(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        make_shapes_dataset(tmp_path, **kwargs)


def test_load_boxes_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_boxes(tmp_path)
    (tmp_path / BOXES_FILE).write_text("{not json")
    with pytest.raises(DataError, match="not a valid boxes file"):
        load_boxes(tmp_path)
